"""bench.common.host_facts: what ran a benchmark, read from /proc and the installed libraries."""

from __future__ import annotations

from pathlib import Path

from bench.common import host_facts, library_version


def fake_proc(root: Path, cpuinfo: str, boot_id: str) -> Path:
    (root / "sys/kernel/random").mkdir(parents=True)
    (root / "cpuinfo").write_text(cpuinfo)
    (root / "sys/kernel/random/boot_id").write_text(boot_id + "\n")
    return root


def test_the_cpu_model_and_boot_are_read_from_proc(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t: x\n",
                     "0f1e2d3c")
    facts = host_facts(proc)
    assert facts["cpu_model"] == "Some CPU 9000"
    assert facts["boot_id"] == "0f1e2d3c"


def test_a_cpuinfo_without_a_model_says_so(tmp_path: Path) -> None:
    assert host_facts(fake_proc(tmp_path, "processor\t: 0\n", "b"))["cpu_model"] == "?"


def test_library_versions_are_the_installed_ones() -> None:
    import aiohttp

    assert library_version("aiohttp") == aiohttp.__version__
    assert library_version("no-such-distribution-here") is None
