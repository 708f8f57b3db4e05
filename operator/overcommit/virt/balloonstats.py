"""Balloon numbers from either libvirt call, in one shape, and what is wrong with them. Pure.

``getAllDomainStats(VIR_DOMAIN_STATS_BALLOON)`` names them ``balloon.current``,
``balloon.maximum``, ``balloon.usable``, ..., ``balloon.last-update``; ``memoryStats()`` names
them ``actual``, ``usable``, ..., ``last_update`` and leaves the maximum to ``info()``. What a
guest reports depends on its driver (libvirt 9.0 / QEMU 7.2, seen on real guests):

* driver loaded: every key, ``last_update`` = host wall-clock seconds of the last report;
* device but no driver: only ``actual``/``current``, ``rss`` and ``last_update`` 0;
* no device (``model='none'``): bulk gives ``current``, ``maximum``, ``rss``; memoryStats
  only ``rss`` (no ``actual``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from overcommit.virt.domainxml import DomainFacts

# What GuestObservation.stats carries (memoryStats' names). hugetlb_* are left out: nothing
# here uses them, and the two calls would otherwise disagree on what a guest "reported".
STAT_KEYS = ("usable", "available", "unused", "disk_caches", "rss", "swap_in", "swap_out",
             "major_fault", "minor_fault", "last_update")
_BULK_PREFIX = "balloon."
# Stats count as stale after this many missed periods, and never sooner than STALE_MIN_S:
# QEMU asks the guest on its own timer, and a guest under memory pressure answers late.
STALE_PERIODS = 5
STALE_MIN_S = 30.0


@dataclass(frozen=True)
class BalloonReading:
    max_kib: int
    current_kib: int
    stats: dict[str, int]


def from_bulk(record: Mapping[str, object]) -> BalloonReading | None:
    """One ``getAllDomainStats`` record; None when it has no balloon group (test driver)."""
    maximum, current = record.get("balloon.maximum"), record.get("balloon.current")
    if not isinstance(maximum, int) or not isinstance(current, int):
        return None
    stats: dict[str, int] = {}
    for key, value in record.items():
        name = key.removeprefix(_BULK_PREFIX).replace("-", "_")
        if key.startswith(_BULK_PREFIX) and name in STAT_KEYS and isinstance(value, int):
            stats[name] = value
    return BalloonReading(maximum, current, stats)


def from_memory_stats(memory_stats: Mapping[str, int], info: Sequence[int]) -> BalloonReading:
    """``dom.memoryStats()`` plus ``dom.info()`` (``[state, maxMem, memory, vcpus, cpuTime]``)."""
    # Without a balloon device there is no "actual": info()'s current memory is the same number.
    current = memory_stats.get("actual", info[2])
    return BalloonReading(info[1], current,
                          {k: memory_stats[k] for k in STAT_KEYS if k in memory_stats})


def stats_age(stats: Mapping[str, int], wall_now: float) -> float | None:
    """Seconds since the guest driver last reported; None when it never has."""
    last = stats.get("last_update", 0)
    # Clamped: the host clock may step back a little between QEMU's stamp and our reading.
    return max(0.0, wall_now - last) if last > 0 else None


def stale_after(period: int) -> float:
    return max(STALE_PERIODS * period, STALE_MIN_S)


def balloon_problem(facts: DomainFacts, stats: Mapping[str, int],
                    age: float | None) -> str | None:
    """Why the planner must leave this guest alone, or None when its numbers can be used."""
    if not facts.has_balloon:
        return ("no balloon device (<memballoon model='none'/>): its memory cannot change "
                "while it runs")
    if facts.stats_period <= 0:
        return ("balloon statistics are off (stats period 0): the guest's memory use is "
                "unknown until a period is set")
    if age is None:
        # Seen on real guests: setMemoryFlags then returns 0 and nothing happens.
        return ("the guest's balloon driver has not reported statistics (virtio_balloon not "
                "loaded, or still booting): a balloon change would be accepted and ignored")
    if "usable" not in stats:
        return ("the guest's balloon driver does not report 'usable' (MemAvailable; guest "
                "kernel older than 4.6?)")
    if age > stale_after(facts.stats_period):
        return (f"balloon statistics are {age:.0f}s old (period {facts.stats_period}s): the "
                f"guest's driver stopped reporting")
    return None


# virDomainJobType and virDomainJobOperation (libvirt's stable ABI): numbers, so this module
# stays pure (no libvirt import).
JOB_ACTIVE = (1, 2)  # VIR_DOMAIN_JOB_BOUNDED, VIR_DOMAIN_JOB_UNBOUNDED
JOB_OPERATIONS = {1: "start", 2: "save", 3: "restore", 4: "incoming migration",
                  5: "outgoing migration", 6: "snapshot", 7: "snapshot revert", 8: "dump",
                  9: "backup", 10: "snapshot delete"}


def job_in_progress(stats: Mapping[str, object]) -> str | None:
    """What a libvirt job in progress (``dom.jobStats()``) means for the balloon: a migration
    copies the guest's memory (a balloon moving meanwhile makes the copy chase it), and so do
    save, dump and snapshot jobs. None when no job runs."""
    if stats.get("type") not in JOB_ACTIVE:
        return None
    operation = stats.get("operation")
    what = JOB_OPERATIONS.get(operation, "a job") if isinstance(operation, int) else "a job"
    return f"libvirt {what} in progress: balloon left alone until it is over"
