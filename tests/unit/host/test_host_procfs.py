from __future__ import annotations

from pathlib import Path

from overcommit.host.meminfo import MeminfoSource, parse_meminfo, parse_vmstat
from overcommit.host.pressure import PSI_MEMORY, PressureSource, parse_psi
from testkit.fakes.kernel import FakeKernel


def test_parse_meminfo_scales_kb_and_keeps_counts() -> None:
    text = ("MemTotal:       16314788 kB\n"
            "Active(anon):    1234567 kB\n"
            "HugePages_Total:       4\n"
            "garbage line\n")
    assert parse_meminfo(text) == {"MemTotal": 16314788 * 1024,
                                   "Active(anon)": 1234567 * 1024,
                                   "HugePages_Total": 4}


def test_parse_vmstat() -> None:
    assert parse_vmstat("pswpin 12\nnr_free_pages 3\nbroken\n") == {"pswpin": 12,
                                                                    "nr_free_pages": 3}


def test_meminfo_source(kernel: FakeKernel) -> None:
    source = MeminfoSource(kernel)
    reading = source.read()
    assert reading.present and reading.name == "meminfo"
    assert reading.counters["MemTotal"] == 16314788 * 1024
    assert not source.owns("proc/meminfo")
    assert source.apply({"proc/meminfo": "1"}).changes == []


def test_meminfo_absent(host_root: Path) -> None:
    assert MeminfoSource(FakeKernel(host_root, missing=["proc/meminfo"])).read().present is False


def test_parse_psi_in_hundredths_of_a_percent() -> None:
    text = ("some avg10=1.25 avg60=0.50 avg300=0.00 total=123456\n"
            "full avg10=0.04 avg60=0.00 avg300=0.00 total=789\n")
    assert parse_psi(text) == {
        "some_avg10": 125, "some_avg60": 50, "some_avg300": 0, "some_total": 123456,
        "full_avg10": 4, "full_avg60": 0, "full_avg300": 0, "full_total": 789,
    }


def test_psi_source(kernel: FakeKernel) -> None:
    reading = PressureSource(kernel).read()
    assert reading.present and reading.name == "psi"
    assert reading.counters["some_avg10"] == 125


def test_psi_disabled(host_root: Path) -> None:
    assert PressureSource(FakeKernel(host_root, missing=["proc/pressure"])).read().present is False


def test_psi_unreadable_counts_as_disabled(kernel: FakeKernel) -> None:
    # Booted with psi=0 the file exists but reading fails (EOPNOTSUPP); any OSError will do.
    kernel.remove(PSI_MEMORY)
    kernel.path(PSI_MEMORY).mkdir()
    assert PressureSource(kernel).read().present is False
