"""What the planner sees of a host: one immutable snapshot per cycle."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from overcommit.host.base import SourceReading


@dataclass(frozen=True)
class Observation:
    """Readings of every source, keyed by source name (ksm, uksm, zswap, swap, meminfo, psi)."""

    time: float  # monotonic seconds; only differences matter
    readings: Mapping[str, SourceReading] = field(default_factory=dict)
    ksmd_cpu_seconds: float | None = None
    page_size: int = 4096
    # Epoch seconds when observed, for the times people read (the ladder's transitions): the
    # planner copies it, never computes with it. None when the caller has no wall clock.
    wall_time: float | None = None

    def present(self, source: str) -> bool:
        reading = self.readings.get(source)
        return reading is not None and reading.present

    @property
    def merge_engine(self) -> str:
        """The page-merging engine this kernel has: ksm, uksm (a patched kernel has it instead
        of KSM) or none."""
        return "ksm" if self.present("ksm") else "uksm" if self.present("uksm") else "none"

    def settings(self) -> dict[str, str]:
        """Every current setting of every source, keyed by path."""
        merged: dict[str, str] = {}
        for reading in self.readings.values():
            merged.update(reading.settings)
        return merged

    def counter(self, source: str, name: str, default: int = 0) -> int:
        reading = self.readings.get(source)
        if reading is None:
            return default
        return reading.counters.get(name, default)

    @property
    def mem_total(self) -> int:
        return self.counter("meminfo", "MemTotal")

    @property
    def mem_available(self) -> int:
        return self.counter("meminfo", "MemAvailable")

    def available_percent(self) -> float | None:
        total = self.mem_total
        return None if total <= 0 else 100.0 * self.mem_available / total
