"""Memory pressure (PSI): ``/proc/pressure/memory``, read-only.

Counters: ``some_avg10``, ``some_avg60``, ``some_avg300``, ``some_total`` and the same for
``full``. The averages are percentages stored as integers in **hundredths of a percent**
(``avg10=1.25`` -> 125) so every counter stays an int; ``*_total`` is cumulative stall time in
microseconds. No file (kernel without PSI) or an unreadable one (booted with ``psi=0``: EOPNOTSUPP)
means ``present=False``.
"""

from __future__ import annotations

from overcommit.host.base import ReadOnlySource

PSI_MEMORY = "proc/pressure/memory"


def parse_psi(text: str) -> dict[str, int]:
    """``some avg10=0.12 avg60=0.00 avg300=0.00 total=1234`` -> ``{"some_avg10": 12, ...}``."""
    counters: dict[str, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        kind, *pairs = line.split()
        for pair in pairs:
            key, _, value = pair.partition("=")
            try:
                counters[f"{kind}_{key}"] = (
                    round(float(value) * 100) if key.startswith("avg") else int(value)
                )
            except ValueError:
                continue
    return counters


class PressureSource(ReadOnlySource):
    name = "psi"
    file = PSI_MEMORY

    def parse(self, text: str) -> dict[str, int]:
        return parse_psi(text)
