"""The node's capacity across cycles: one reading per cycle into ``planning.capacity``'s history
of one-minute buckets, kept on disk beside the originals (``capacity.json``) so an agent that
restarts keeps its evidence; and ksmd's CPU use between cycles.

The file is evidence, not something to restore: it is rewritten (atomically) whenever a minute's
bucket is complete, at most once a minute, and a missing, corrupt or foreign one is simply
started afresh (the ratio then rests on less evidence, which the node state says).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from overcommit.api.policy import (
    BalloonMode,
    BalloonStatic,
    CapacitySpec,
    KsmAdaptive,
    KsmMode,
    PolicySpec,
)
from overcommit.planning import capacity as cap
from overcommit.planning.balloon import static_target_kib
from overcommit.planning.ladder import Ladder, State
from overcommit.planning.observation import Observation
from overcommit.reconcile.guests import GuestResult
from overcommit.reconcile.summary import compressed_bytes, merged_bytes

CAPACITY_FILE = "capacity.json"
FORMAT_VERSION = 1
KIB = 1024


class CapacityStore:
    """``capacity.json`` under the state directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / CAPACITY_FILE

    def load(self) -> cap.History:
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
                return cap.History()
            buckets = tuple(cap.Bucket(int(b["start"]), int(b["merged"]), int(b["ballooned"]),
                                       int(b["compressed"]), float(b["observed"]),
                                       float(b["pressure"])) for b in data["buckets"])
            last = data.get("lastAt")
            return cap.History(buckets, float(last) if last is not None else None)
        except (OSError, ValueError, TypeError, KeyError):
            return cap.History()

    def save(self, history: cap.History) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"version": FORMAT_VERSION, "lastAt": history.last_at,
                              "buckets": [asdict(b) for b in history.buckets]},
                             separators=(",", ":"))
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".capacity.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(payload + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def reading(obs: Observation, ladder: Ladder | None, guests: GuestResult | None,
            spec: PolicySpec | None) -> cap.Reading | None:
    """This cycle's figures; None without MemTotal (no meminfo) or a wall clock."""
    if obs.mem_total <= 0 or obs.wall_time is None:
        return None
    merged_now = merged_bytes(obs)
    ksm = obs.readings.get("ksm")
    merged = merged_now
    if ksm is not None and "general_profit" in ksm.counters:
        merged = max(0, min(merged_now, ksm.counters["general_profit"]))
    seen = guests.guests if guests is not None else []
    return cap.Reading(
        at=obs.wall_time, physical=obs.mem_total, available=obs.mem_available,
        reserve=ladder.thresholds.below[State.SOFT] if ladder is not None else 0,
        committed=sum(g.max_kib for g in seen) * KIB,
        resident=sum(g.stats.get("rss", 0) for g in seen) * KIB,
        merged_now=merged_now, merged=merged,
        ballooned=balloon_reclaimable(guests, spec),
        compressed=compressed_bytes(obs),
        pressured=ladder is not None and ladder.at_least(State.HARD))


def balloon_reclaimable(guests: GuestResult | None, spec: PolicySpec | None) -> int:
    """What ballooning can save: each managed guest's maximum less the least the policy leaves
    it (its floor; with Static, the static target when that is higher)."""
    balloon = spec.balloon if spec is not None else None
    if guests is None or balloon is None or balloon.mode is BalloonMode.OFF:
        return 0
    total = 0
    for decision in guests.decisions:
        if decision.floor_kib is None:
            continue  # not managed this cycle: excluded, skipped or without statistics
        max_kib = decision.guest.max_kib
        lowest = decision.floor_kib
        if balloon.mode is BalloonMode.STATIC:
            static = balloon.static or BalloonStatic(target_percent=100)
            lowest = max(lowest, static_target_kib(static, max_kib))
        total += max(0, max_kib - lowest) * KIB
    return total


def ksmd_budget(spec: PolicySpec | None) -> int | None:
    """The CPU budget (percent of a core) the policy sets for ksmd, if any."""
    ksm = spec.ksm if spec is not None else None
    if ksm is None:
        return None
    if ksm.mode is KsmMode.ADAPTIVE:
        return (ksm.adaptive or KsmAdaptive()).cpu_budget_percent
    if ksm.mode is KsmMode.KERNEL_ADVISOR and ksm.advisor is not None:
        return ksm.advisor.max_cpu_percent
    return None


class CapacityTracker:
    """The history and ksmd's last CPU reading, across cycles (and restarts, for the history)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.store = CapacityStore(state_dir)
        self.history: cap.History | None = None  # loaded at the first cycle
        self._ksmd: tuple[float, float] | None = None

    def loaded(self) -> cap.History:
        if self.history is None:
            self.history = self.store.load()
        return self.history

    def cycle(self, obs: Observation, ladder: Ladder | None, guests: GuestResult | None,
              spec: PolicySpec | None) -> cap.Capacity | None:
        """Record this cycle and assess the node (None when the host gives too little)."""
        now = reading(obs, ladder, guests, spec)
        if now is None:
            return None
        before = self.loaded()
        self.history = cap.record(before, now)
        if _completed_bucket(before, self.history):
            with contextlib.suppress(OSError):  # evidence only: the next minute tries again
                self.store.save(self.history)
        return cap.assess(self.history, now, _spec(spec))

    def ksmd_percent(self, obs: Observation) -> float | None:
        if obs.ksmd_cpu_seconds is None:
            self._ksmd = None
            return None
        now = (obs.time, obs.ksmd_cpu_seconds)
        share = cap.ksmd_percent(self._ksmd, now)
        self._ksmd = now
        return share


def peek(history: cap.History, obs: Observation, ladder: Ladder | None,
         guests: GuestResult | None, spec: PolicySpec | None) -> cap.Capacity | None:
    """The capacity now from a stored history, without keeping the reading
    (``overcommit status``)."""
    now = reading(obs, ladder, guests, spec)
    if now is None:
        return None
    return cap.assess(cap.record(history, now), now, _spec(spec))


def _spec(spec: PolicySpec | None) -> CapacitySpec | None:
    return spec.capacity if spec is not None else None


def _completed_bucket(before: cap.History, after: cap.History) -> bool:
    if not after.buckets:
        return False
    if not before.buckets:
        return len(after.buckets) > 1
    return after.buckets[-1].start != before.buckets[-1].start
