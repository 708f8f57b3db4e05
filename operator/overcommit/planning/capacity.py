"""Measured headroom and the overcommit ratio a node supports. Pure: no I/O, no clock (every
time is passed in), so every rule is unit-tested directly. docs/capacity.md derives the formula.

Each cycle the reconciler hands in one :class:`Reading` (what the node has, what its guests were
promised and hold, what each lever saves now, whether the ladder is in Hard or Critical).
:func:`record` folds it into a :class:`History` of one-minute buckets that keep the *least* of
each lever's saving in that minute, how long the node was watched and how long it was in Hard or
Critical; :func:`assess` turns the buckets inside the policy's window into a :class:`Capacity`:

* sustained saving of a lever = the ``percentile`` of its bucket minima over the window (a low
  one: the saving the node kept nearly all the time, never its peak);
* counted = sustained total x (1 - margin) x (1 - pressure share / pressure budget), where the
  pressure share is the observed time in Hard or Critical;
* guest capacity C = MemTotal - reserve (the ladder's Soft threshold) - non-guest use;
* supported ratio = (C + counted) / C, rounded down to a percent and never below 100;
* headroom = C + counted - committed guest memory (the guests' maxima).

The history survives agent restarts (the reconciler stores it beside the originals); time the
agent did not watch is simply not observed, and the evidence says how much of the window was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from overcommit.api.policy import CapacitySpec

BUCKET_SECONDS = 60
MAX_WINDOW_SECONDS = 86_400  # CapacitySpec.window_seconds' maximum: what the node keeps
MAX_GAP_SECONDS = 120.0  # a longer gap between two readings is time nobody watched
SETTLED_SHARE = 0.9  # the window counts as covered once this share of it was observed
LEVERS = ("merged", "ballooned", "compressed")


@dataclass(frozen=True)
class Reading:
    """One cycle's figures, in bytes (``at``: epoch seconds)."""

    at: float
    physical: int  # MemTotal
    available: int  # MemAvailable
    reserve: int  # the MemAvailable the node keeps: the ladder's Soft threshold
    committed: int  # the guests' maxima, summed
    resident: int  # what the guests' QEMU processes hold (their rss), summed
    merged_now: int  # what KSM merged now (pages_sharing + zero pages), counted in ``resident``
    merged: int  # KSM's saving (general_profit when known, never above merged_now)
    ballooned: int  # each managed guest's maximum less its floor, summed
    compressed: int  # zswap: stored minus pool
    pressured: bool  # the ladder is in Hard or Critical

    @property
    def non_guest(self) -> int:
        """Everything but the guests: in use, less the guests' resident memory, plus what KSM
        merged of it (the guests' rss counts a merged page in every guest mapping it)."""
        return max(0, self.physical - self.available - self.resident + self.merged_now)

    @property
    def guest_capacity(self) -> int:
        """Memory for guests at a ratio of 100%: what is left once the reserve is kept and
        everything else is fed."""
        return self.physical - self.reserve - self.non_guest


@dataclass(frozen=True)
class Bucket:
    """One minute (``start`` a multiple of BUCKET_SECONDS): the least each lever saved in it,
    and how many seconds of it were watched and spent in Hard or Critical."""

    start: int
    merged: int
    ballooned: int
    compressed: int
    observed: float = 0.0
    pressure: float = 0.0

    def saving(self, lever: str) -> int:
        value: int = getattr(self, lever)
        return value


@dataclass(frozen=True)
class History:
    buckets: tuple[Bucket, ...] = ()  # oldest first; the last one may still be filling
    last_at: float | None = None  # the last reading's time


def bucket_start(at: float) -> int:
    return int(at // BUCKET_SECONDS) * BUCKET_SECONDS


def record(history: History | None, reading: Reading) -> History:
    """``history`` with ``reading`` folded in; buckets older than a day are dropped. The time
    since the previous reading (at most MAX_GAP_SECONDS) counts as watched, and as pressure
    when the node is in Hard or Critical now."""
    history = history or History()
    start = bucket_start(reading.at)
    gap = 0.0
    if history.last_at is not None and reading.at > history.last_at:
        gap = reading.at - history.last_at
        gap = gap if gap <= MAX_GAP_SECONDS else 0.0
    if reading.at < (history.last_at or -math.inf):  # the wall clock went back: start over
        history = History()
    buckets = list(history.buckets)
    if buckets and buckets[-1].start == start:
        last = buckets[-1]
        buckets[-1] = replace(last, merged=min(last.merged, reading.merged),
                              ballooned=min(last.ballooned, reading.ballooned),
                              compressed=min(last.compressed, reading.compressed),
                              observed=last.observed + gap,
                              pressure=last.pressure + (gap if reading.pressured else 0.0))
    else:
        buckets.append(Bucket(start, reading.merged, reading.ballooned, reading.compressed,
                              gap, gap if reading.pressured else 0.0))
    oldest = start - MAX_WINDOW_SECONDS
    return History(tuple(b for b in buckets if b.start >= oldest), reading.at)


def percentile(values: Sequence[int], q: int) -> int:
    """The q-th percentile (0-100) by the nearest rank below: never a value above the q share
    of the samples (0: the minimum)."""
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[math.floor(q / 100 * (len(ordered) - 1))]


@dataclass(frozen=True)
class Evidence:
    window: int
    observed: int
    samples: int
    settled: bool
    percentile: int
    margin_percent: int
    pressure: int
    pressure_budget_percent: int
    since: float | None


@dataclass(frozen=True)
class Capacity:
    """What the node supports, with the figures it came from (bytes)."""

    physical: int
    reserve: int
    non_guest: int
    committed: int
    resident: int
    guest_capacity: int
    sustained: dict[str, int]  # by lever (LEVERS)
    counted: int
    headroom: int
    supported_percent: int
    evidence: Evidence

    @property
    def sustained_total(self) -> int:
        return sum(self.sustained.values())


def window_buckets(history: History, window: int, now: float) -> list[Bucket]:
    """The buckets that overlap the window ending ``now``."""
    edge = now - window
    return [b for b in history.buckets if b.start + BUCKET_SECONDS > edge]


def assess(history: History, reading: Reading, spec: CapacitySpec | None) -> Capacity:
    """The node's capacity now (``reading`` should be the last one recorded)."""
    spec = spec or CapacitySpec()
    buckets = window_buckets(history, spec.window_seconds, reading.at)
    sustained = {lever: percentile([b.saving(lever) for b in buckets] or
                                   [getattr(reading, lever)], spec.percentile)
                 for lever in LEVERS}
    observed = min(float(spec.window_seconds), sum(b.observed for b in buckets))
    pressure = min(observed, sum(b.pressure for b in buckets))
    counted = counted_savings(sum(sustained.values()), spec.margin_percent,
                              pressure / observed if observed > 0 else
                              (1.0 if reading.pressured else 0.0),
                              spec.pressure_budget_percent)
    capacity = reading.guest_capacity
    return Capacity(
        physical=reading.physical, reserve=reading.reserve, non_guest=reading.non_guest,
        committed=reading.committed, resident=reading.resident, guest_capacity=capacity,
        sustained=sustained, counted=counted,
        headroom=capacity + counted - reading.committed,
        supported_percent=supported_percent(capacity, counted),
        evidence=Evidence(
            window=spec.window_seconds, observed=int(observed), samples=len(buckets),
            settled=observed >= SETTLED_SHARE * spec.window_seconds,
            percentile=spec.percentile, margin_percent=spec.margin_percent,
            pressure=int(pressure), pressure_budget_percent=spec.pressure_budget_percent,
            since=float(buckets[0].start) if buckets else None))


def counted_savings(sustained: int, margin_percent: int, pressure_share: float,
                    budget_percent: int) -> int:
    """The sustained savings less the margin, and less the share of the pressure budget the
    node used (all of them once it spent ``budget_percent`` of its time in Hard/Critical)."""
    if sustained <= 0:
        return 0
    used = min(1.0, max(0.0, pressure_share) * 100 / budget_percent)
    return max(0, math.floor(sustained * (100 - margin_percent) / 100 * (1.0 - used)))


def supported_percent(guest_capacity: int, counted: int) -> int:
    """(C + counted) / C in percent, rounded down; 100 when the node has no room for guests at
    all (C <= 0: nothing to overcommit) or nothing counts."""
    if guest_capacity <= 0 or counted <= 0:
        return 100
    return max(100, (guest_capacity + counted) * 100 // guest_capacity)


def ksmd_percent(prev: tuple[float, float] | None, now: tuple[float, float]) -> float | None:
    """ksmd's CPU use in percent of one core between two (monotonic time, ksmd CPU seconds)
    readings; None without an earlier one or when time did not move."""
    if prev is None or now[0] <= prev[0] or now[1] < prev[1]:
        return None
    return 100.0 * (now[1] - prev[1]) / (now[0] - prev[0])

