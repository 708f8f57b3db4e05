"""Swap: ``vm.swappiness`` (the only setting) and what swap holds.

Counters: ``swap_devices``, ``swap_size_bytes`` and ``swap_used_bytes`` from ``/proc/swaps``;
``swap_total_bytes`` and ``swap_free_bytes`` from ``/proc/meminfo``; ``pswpin``/``pswpout``
(pages swapped in/out since boot) from ``/proc/vmstat``.
"""

from __future__ import annotations

from overcommit.host._sysfs import SettingSpec, SettingsSource, read_text, unsigned
from overcommit.host.meminfo import read_meminfo, read_vmstat
from overcommit.host.rules import KernelRules

SYSCTL_VM = "proc/sys/vm"
SWAPS = "proc/swaps"


def parse_swaps(text: str) -> dict[str, int]:
    """``/proc/swaps``: a header, then ``Filename Type Size Used Priority`` with sizes in kB."""
    devices = size = used = 0
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 4 or not (parts[2].isdigit() and parts[3].isdigit()):
            continue
        devices += 1
        size += int(parts[2]) * 1024
        used += int(parts[3]) * 1024
    return {"swap_devices": devices, "swap_size_bytes": size, "swap_used_bytes": used}


SPECS = (SettingSpec("swappiness", check=unsigned(0, 200)),)
SWAP = KernelRules(source="swap", directory=SYSCTL_VM, names=("swappiness",))


class SwapSource(SettingsSource):
    title = "swap"
    rules = SWAP
    specs = SPECS

    def present(self) -> bool:
        return self.fs.exists(self.path_of("swappiness")) or self.fs.exists(SWAPS)

    def read_counters(self) -> dict[str, int]:
        text = read_text(self.fs, SWAPS)
        counters = parse_swaps(text) if text is not None else {}
        meminfo = read_meminfo(self.fs)
        for field, key in (("SwapTotal", "swap_total_bytes"), ("SwapFree", "swap_free_bytes")):
            if field in meminfo:
                counters[key] = meminfo[field]
        vmstat = read_vmstat(self.fs)
        counters.update({name: vmstat[name] for name in ("pswpin", "pswpout") if name in vmstat})
        return counters
