"""The real KSM for the benchmark: snapshot/restore its settings, unmerge, time ksmd's CPU."""

from __future__ import annotations

import os
import time
from pathlib import Path

from overcommit.host.base import HostFS
from overcommit.host.ksm import find_ksmd_pid, ksmd_cpu_seconds

KSM_DIR = Path("/sys/kernel/mm/ksm")
# Writable files, in a restore order the kernel accepts: advisor tuning before the advisor,
# pages_to_scan while the advisor is off, the EBUSY-while-merged ones after an unmerge, run last.
SETTINGS = (
    "advisor_max_cpu", "advisor_min_pages_to_scan", "advisor_max_pages_to_scan",
    "advisor_target_scan_time", "pages_to_scan", "sleep_millisecs", "use_zero_pages",
    "smart_scan", "stable_node_chains_prune_millisecs", "merge_across_nodes",
    "max_page_sharing", "advisor_mode", "run",
)
KERNEL_DEFAULTS = {"advisor_mode": "none", "pages_to_scan": "100", "sleep_millisecs": "20"}


def read(name: str) -> str:
    text = (KSM_DIR / name).read_text().strip()
    if "[" in text:  # a choice file: "[none] scan-time" -> "none"
        return text.partition("[")[2].partition("]")[0]
    return text


def read_int(name: str) -> int:
    return int(read(name))


def write(name: str, value: str | int) -> None:
    (KSM_DIR / name).write_text(str(value))


def snapshot() -> dict[str, str]:
    return {name: read(name) for name in SETTINGS if (KSM_DIR / name).exists()}


def unmerge_all(timeout_s: float = 120.0) -> None:
    """run=2 (unmerge everything, stop ksmd) and wait until nothing is merged."""
    write("run", 2)
    deadline = time.monotonic() + timeout_s
    while read_int("pages_shared") or read_int("pages_sharing"):
        if time.monotonic() > deadline:
            raise TimeoutError("KSM did not unmerge within the timeout")
        time.sleep(0.1)


def reset_to_defaults() -> None:
    """Unmerged and stopped, at the kernel's default rate: the same start for every strategy."""
    unmerge_all()
    if (KSM_DIR / "advisor_mode").exists() and read("advisor_mode") != "none":
        write("advisor_mode", "none")  # pages_to_scan is EINVAL while the advisor is on
    for name in ("pages_to_scan", "sleep_millisecs"):
        write(name, KERNEL_DEFAULTS[name])
    write("run", 0)


def restore(original: dict[str, str]) -> list[str]:
    """Put every setting back; returns the ones that still differ (should be none)."""
    unmerge_all()  # frees merge_across_nodes / max_page_sharing from EBUSY
    if "advisor_mode" in original:
        write("advisor_mode", "none")
    for name in SETTINGS:
        if name in original and read(name) != original[name]:
            write(name, original[name])
    return [f"{name}: {read(name)} (was {value})" for name, value in original.items()
            if read(name) != value and not _same_run(name, read(name), value)]


def _same_run(name: str, now: str, was: str) -> bool:
    return name == "run" and {now, was} == {"0", "2"}  # both mean stopped with nothing merged


class KsmdClock:
    """ksmd's CPU time. ``/proc/<pid>/schedstat`` counts nanoseconds; ``stat`` only 10 ms
    ticks (what the engine itself reads), used when schedstat is missing."""

    def __init__(self) -> None:
        self.fs = HostFS("/")
        pid = find_ksmd_pid(self.fs)
        if pid is None:
            raise RuntimeError("no ksmd kernel thread found")
        self.pid = pid
        self.schedstat = Path(f"/proc/{pid}/schedstat")

    def seconds(self) -> float:
        try:
            return int(self.schedstat.read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return ksmd_cpu_seconds(self.fs, self.pid)


RATE = ("run", "pages_to_scan", "sleep_millisecs")
RESET_RATE = ("0", KERNEL_DEFAULTS["pages_to_scan"], KERNEL_DEFAULTS["sleep_millisecs"])


def rate_settings() -> tuple[str, ...]:
    return tuple(read(name) for name in RATE)


def foreign_ksm_users(own: set[int]) -> list[int]:
    """Processes outside ``own`` with memory KSM tracks or may merge (``/proc/<pid>/ksm_stat``,
    kernel 6.1+; older kernels report nobody). ksmd's CPU would be theirs too."""
    users = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in own:
            continue
        try:
            stat = Path(f"/proc/{entry}/ksm_stat").read_text()
        except OSError:
            continue
        if "ksm_mergeable: yes" in stat or _rmap_items(stat) > 0:
            users.append(int(entry))
    return sorted(users)


def _rmap_items(stat: str) -> int:
    for line in stat.splitlines():
        if line.startswith("ksm_rmap_items"):
            return int(line.split()[1])
    return 0


def is_root() -> bool:
    return os.geteuid() == 0
