"""The memory the KSM strategies are shown: real (a memory rig holds the host at the chosen
MemAvailable, which then rises as merging frees memory) or simulated (a constant view)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from bench.baselines import MemoryView, simulated_pressure
from testkit.memrig import DEFAULT_FLOOR, GIB, MemoryRig

# Other work shares this machine: a real-pressure run never holds MemAvailable below this.
RESERVE_FOR_OTHERS = 9 * GIB // 2
RIG_FLOOR = max(DEFAULT_FLOOR, 3 * GIB)


def meminfo_kib() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        out[name] = int(rest.split()[0])
    return out


def rss_kib(pids: Iterable[int]) -> int:
    """Summed VmRSS of ``pids`` (ksmtuned sums ``ps -o rsz`` of the qemu processes)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def live_view(guest_pids: Callable[[], Iterable[int]]) -> MemoryView:
    """What the tuners would read on this host now: MemAvailable (KubeVirt), MemFree + Buffers
    + Cached (ksmtuned's "free"), and the summed RSS of the processes standing in for guests
    (the workload and the rig's fillers) as ksmtuned's "committed"."""
    info = meminfo_kib()
    return MemoryView(total_kib=info["MemTotal"], available_kib=info["MemAvailable"],
                      free_kib=info["MemFree"] + info.get("Buffers", 0) + info.get("Cached", 0),
                      committed_kib=rss_kib(guest_pids()))


def target_bytes(total_bytes: int, available_percent: float) -> int:
    """The MemAvailable a real-pressure run holds: the share asked for, raised to keep
    RESERVE_FOR_OTHERS free for the other work on this machine."""
    return max(int(total_bytes * available_percent / 100), RESERVE_FOR_OTHERS)


class Pressure:
    """``real``: a MemoryRig filled before every trial so that MemAvailable sits at the target
    once the workload holds its memory; nothing refills it during the trial, so what merging
    frees shows as MemAvailable rising. ``simulated``: every strategy is told a constant
    MemAvailable; the rig is not used."""

    def __init__(self, mode: str, available_percent: float) -> None:
        self.mode = mode
        self.available_percent = available_percent
        self.total_kib = meminfo_kib()["MemTotal"]
        self.target = target_bytes(self.total_kib * 1024, available_percent)
        self.rig: MemoryRig | None = MemoryRig(floor=RIG_FLOOR) if mode == "real" else None
        self.workload_pids: list[int] = []

    @property
    def real(self) -> bool:
        return self.mode == "real"

    def guest_pids(self) -> list[int]:
        return self.workload_pids + (self.rig.children if self.rig else [])

    def view(self) -> MemoryView:
        if self.rig is None:
            return simulated_pressure(self.total_kib, self.available_percent)
        return live_view(self.guest_pids)

    def settle(self, workload_pids: list[int]) -> int | None:
        """Before a trial (the workload running): fill to the target; MemAvailable reached."""
        self.workload_pids = workload_pids
        if self.rig is None:
            return None
        if self.rig.tripped:  # its safety stop killed its fillers: start a fresh one
            self.rig.close()
            self.rig = MemoryRig(floor=RIG_FLOOR)
        return self.rig.fill_to(self.target)

    def describe(self) -> str:
        total_mib = self.total_kib >> 10
        if self.rig is None:
            available = int(self.total_kib * self.available_percent / 100) >> 10
            return (f"SIMULATED MEMORY PRESSURE: every strategy is told MemAvailable = "
                    f"{self.available_percent:g}% of MemTotal ({available} of {total_mib} MiB),"
                    f" constant; the real host is not short of memory")
        share = 100.0 * (self.target >> 10) / self.total_kib
        return (f"REAL MEMORY PRESSURE: a memory rig holds MemAvailable at "
                f"{self.target >> 20} MiB = {share:.1f}% of MemTotal ({total_mib} MiB) at the "
                f"start of every trial ({self.available_percent:g}% asked, raised to keep "
                f"{RESERVE_FOR_OTHERS >> 20} MiB for other work on this machine; rig floor "
                f"{RIG_FLOOR >> 20} MiB); it rises as merging frees memory")

    def close(self) -> None:
        if self.rig is not None:
            self.rig.close()
            self.rig = None
