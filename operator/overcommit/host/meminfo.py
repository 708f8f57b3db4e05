"""Host memory: ``/proc/meminfo`` (read-only), plus the ``/proc/vmstat`` parser others share."""

from __future__ import annotations

from overcommit.host._sysfs import read_text
from overcommit.host.base import HostFS, ReadOnlySource

MEMINFO = "proc/meminfo"
VMSTAT = "proc/vmstat"
_UNITS = {"kB": 1024}


def parse_meminfo(text: str) -> dict[str, int]:
    """Every field in bytes: ``MemTotal: 16 kB`` -> 16384; unitless fields (``HugePages_Total``)
    are counts and kept as they are."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts or not parts[0].isdigit():
            continue
        scale = _UNITS.get(parts[1], 1) if len(parts) > 1 else 1
        fields[key.strip()] = int(parts[0]) * scale
    return fields


def parse_vmstat(text: str) -> dict[str, int]:
    """``/proc/vmstat``: one ``name value`` pair per line (event counts and page counts)."""
    counters: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            counters[parts[0]] = int(parts[1])
    return counters


def read_meminfo(fs: HostFS) -> dict[str, int]:
    text = read_text(fs, MEMINFO)
    return parse_meminfo(text) if text is not None else {}


def read_vmstat(fs: HostFS) -> dict[str, int]:
    text = read_text(fs, VMSTAT)
    return parse_vmstat(text) if text is not None else {}


class MeminfoSource(ReadOnlySource):
    """Read-only: all ``/proc/meminfo`` fields, in bytes, as counters."""

    name = "meminfo"
    file = MEMINFO

    def parse(self, text: str) -> dict[str, int]:
        return parse_meminfo(text)
