from __future__ import annotations

import errno
from collections.abc import Mapping
from pathlib import Path

import pytest

from overcommit.host.base import ApplyResult, Change, SourceReading
from overcommit.host.ksm import KsmSource
from overcommit.host.sources import HostAdapter, default_sources
from testkit.fakes.kernel import FakeKernel

KSM_RUN = "sys/kernel/mm/ksm/run"
COMPRESSOR = "sys/module/zswap/parameters/compressor"
SWAPPINESS = "proc/sys/vm/swappiness"


class ExplodingSource:
    """A source with a bug: owns one path and raises on everything."""

    name = "broken"

    def read(self) -> SourceReading:
        raise RuntimeError("boom")

    def owns(self, path: str) -> bool:
        return path == "sys/broken/knob"

    def apply(self, desired: Mapping[str, str], *, allow_unmerge: bool = False) -> ApplyResult:
        raise RuntimeError("boom")


def test_default_sources(kernel: FakeKernel) -> None:
    assert [s.name for s in default_sources(kernel)] == ["ksm", "uksm", "zswap", "swap",
                                                         "meminfo", "psi"]


def test_read_all_by_name(kernel: FakeKernel) -> None:
    readings = HostAdapter(kernel).read_all()
    assert readings["ksm"].present and not readings["uksm"].present
    assert readings["psi"].counters["some_total"] == 123456


def test_current_settings_merges_every_source(kernel: FakeKernel) -> None:
    settings = HostAdapter(kernel).current_settings()
    assert settings[KSM_RUN] == "0"
    assert settings[SWAPPINESS] == "60"
    assert settings[COMPRESSOR] == "lzo"


def test_apply_routes_to_the_owners(kernel: FakeKernel) -> None:
    result = HostAdapter(kernel).apply({KSM_RUN: "1", COMPRESSOR: "zstd", SWAPPINESS: "5"})
    assert result.ok
    assert set(result.changes) == {Change(KSM_RUN, "0", "1"), Change(COMPRESSOR, "lzo", "zstd"),
                                   Change(SWAPPINESS, "60", "5")}


def test_unowned_path_is_an_error(kernel: FakeKernel) -> None:
    result = HostAdapter(kernel).apply({"sys/kernel/mm/transparent_hugepage/enabled": "never"})
    assert [e.errno for e in result.errors] == [errno.EINVAL]


def test_one_engine_failing_does_not_stop_the_others(kernel: FakeKernel) -> None:
    result = HostAdapter(kernel).apply({COMPRESSOR: "brotli", KSM_RUN: "1", SWAPPINESS: "5"})
    assert [e.path for e in result.errors] == [COMPRESSOR]
    assert kernel.get(KSM_RUN) == "1" and kernel.get(SWAPPINESS) == "5"


def test_a_source_raising_becomes_an_error(kernel: FakeKernel) -> None:
    adapter = HostAdapter(kernel, [ExplodingSource(), KsmSource(kernel)])
    result = adapter.apply({"sys/broken/knob": "1", KSM_RUN: "1"})
    assert [(e.path, e.errno) for e in result.errors] == [("sys/broken/knob", errno.EIO)]
    assert "boom" in result.errors[0].reason
    assert result.changes == [Change(KSM_RUN, "0", "1")]
    assert adapter.read_all()["broken"] == SourceReading(name="broken", present=False)


def test_uksm_node_reports_ksm_settings_as_absent(uksm_kernel: FakeKernel) -> None:
    result = HostAdapter(uksm_kernel).apply({KSM_RUN: "1", "sys/kernel/mm/uksm/run": "0"})
    assert [(e.path, e.errno) for e in result.errors] == [(KSM_RUN, errno.ENOENT)]
    assert uksm_kernel.get("sys/kernel/mm/uksm/run") == "0"


def test_allow_unmerge_is_passed_through(kernel: FakeKernel) -> None:
    kernel.merge(shared=3, sharing=3)
    path = "sys/kernel/mm/ksm/merge_across_nodes"
    assert not HostAdapter(kernel).apply({path: "0"}).ok
    assert HostAdapter(kernel).apply({path: "0"}, allow_unmerge=True).ok


def test_plain_file_writes_replace_the_whole_value(tmp_path: Path) -> None:
    # A host root made of plain files (tests, simulated hosts) must behave like sysfs:
    # writing "100" over "2000" reads back "100", not "1000".
    from overcommit.host.base import HostFS

    (tmp_path / "value").write_text("2000\n")
    fs = HostFS(tmp_path)
    fs.write("value", "100")
    assert fs.read("value") == "100"
    with pytest.raises(FileNotFoundError):
        fs.write("missing", "1")
