"""Relief without killing: when reclaim cannot bring the node out of Critical, ask for one guest
to be live-migrated away, and (optionally) taint the node so no new VM lands on it. Pure.

The ladder says when (``Ladder.relief``: Critical); this module says whom, whether now, and
why not. It asks only once the node has been Critical for ``after_cycles`` cycles in a row
(the first cycles reclaim from guests down to their floors), at most once per
``cooldown_seconds``, while fewer migrations than allowed are in flight for this node and in
the whole cluster, and never for a guest that cannot migrate (its VMI's ``LiveMigratable``
condition is not True), that migrates already, or that a migration is pending for.

Whom: the guest whose departure frees most for the least to copy. It frees what its balloon
holds on the host now (``current``); a live migration copies what the guest uses (``current -
usable``; free pages are sent as zero pages, which cost little). The highest freed-per-copied
ratio wins, then the larger guest, then the name: a big idle guest goes before a small busy
one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from overcommit.api.policy import LadderRelief
from overcommit.planning.ladder import Ladder, State
from overcommit.units import human_bytes

TAINT_KEY = "memoryovercommit.io/memory-pressure"
PREFER_NO_SCHEDULE, NO_SCHEDULE = "PreferNoSchedule", "NoSchedule"
# A guest using almost nothing still costs a pass over its memory: count at least this much.
MIN_COPY_BYTES = 64 << 20
# A request the API server refused or never answered is asked again after this long (not at
# the next cycle: under pressure that is every 2 s; not after the cooldown: nothing was asked).
RETRY_AFTER_FAILURE_S = 30.0


@dataclass(frozen=True)
class Candidate:
    """A guest that could be moved: its VMI and what moving it would free and cost."""

    namespace: str
    name: str
    current_bytes: int  # what its balloon holds on the host: freed by its departure
    used_bytes: int  # what it uses: copied by a live migration
    migratable: bool  # the VMI's LiveMigratable condition is True
    migrating: bool  # the VMI reports a migration that has not completed

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def score(self) -> float:
        return self.current_bytes / max(self.used_bytes, MIN_COPY_BYTES)


@dataclass(frozen=True)
class InFlight:
    """Migrations not yet Succeeded or Failed: for this node's guests, in the cluster, and the
    VMIs they are for."""

    node: int = 0
    cluster: int = 0
    vmis: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Memory:
    """What relief remembers between cycles."""

    critical_cycles: int = 0  # consecutive cycles in Critical, this one included
    last_asked_at: float | None = None  # monotonic time of the last request
    failed_at: float | None = None  # monotonic time the last request failed


@dataclass(frozen=True)
class Decision:
    """``ask``: the guest to migrate now (None: none); ``status``: what relief does and why."""

    ask: Candidate | None
    status: str
    memory: Memory
    reason: str = ""  # why this guest, when one is asked for

    def failed(self, previous: Memory, now: float) -> Memory:
        """What to remember when the request this decision asked for failed at ``now``: not
        asked (no cooldown), but not again before ``RETRY_AFTER_FAILURE_S``."""
        return Memory(self.memory.critical_cycles, previous.last_asked_at, now)


def decide(ladder: Ladder | None, spec: LadderRelief, candidates: Sequence[Candidate],
           in_flight: InFlight, previous: Memory, now: float) -> Decision:
    """Whether to ask for a migration this cycle, and for which guest."""
    critical = ladder is not None and ladder.state is State.CRITICAL
    memory = Memory(previous.critical_cycles + 1 if critical else 0, previous.last_asked_at,
                    previous.failed_at)
    if not critical:
        return Decision(None, "", memory)
    why_not = _why_not_now(spec, memory, in_flight, now)
    if why_not:
        return Decision(None, why_not, memory)
    movable = [c for c in candidates
               if c.migratable and not c.migrating and c.key not in in_flight.vmis]
    if not movable:
        return Decision(None, "unable: " + _unmovable(candidates, in_flight), memory)
    chosen = max(movable, key=lambda c: (c.score, c.current_bytes, c.key))
    reason = (f"frees {human_bytes(chosen.current_bytes)} for "
              f"{human_bytes(chosen.used_bytes)} in use to copy (the best ratio of "
              f"{len(movable)} movable guest(s))")
    return Decision(chosen, f"asked to migrate {chosen.namespace}/{chosen.name}: {reason}",
                    Memory(memory.critical_cycles, now), reason)


def _why_not_now(spec: LadderRelief, memory: Memory, in_flight: InFlight, now: float) -> str:
    if not spec.migrate:
        return "off: ladder.relief.migrate is false"
    if memory.critical_cycles < spec.after_cycles:
        return (f"waiting: Critical for {memory.critical_cycles} of {spec.after_cycles} "
                "cycles; reclaim goes first")
    if memory.last_asked_at is not None and now - memory.last_asked_at < spec.cooldown_seconds:
        left = spec.cooldown_seconds - (now - memory.last_asked_at)
        return f"waiting: cooldown, {left:.0f} s left after the last request"
    if memory.failed_at is not None and now - memory.failed_at < RETRY_AFTER_FAILURE_S:
        left = RETRY_AFTER_FAILURE_S - (now - memory.failed_at)
        return f"waiting: the last request failed, asking again in {left:.0f} s"
    if in_flight.node >= spec.max_in_flight_per_node:
        return (f"waiting: {in_flight.node} migration(s) in flight for this node "
                f"(maxInFlightPerNode {spec.max_in_flight_per_node})")
    if in_flight.cluster >= spec.max_in_flight_per_cluster:
        return (f"waiting: {in_flight.cluster} migration(s) in flight in the cluster "
                f"(maxInFlightPerCluster {spec.max_in_flight_per_cluster})")
    return ""


def _unmovable(candidates: Iterable[Candidate], in_flight: InFlight) -> str:
    reasons = []
    for c in candidates:
        why = ("is not LiveMigratable" if not c.migratable else "is migrating" if c.migrating
               else "has a migration pending" if c.key in in_flight.vmis else "")
        reasons.append(f"{c.namespace}/{c.name} {why}")
    return "no guest can migrate" + (f" ({'; '.join(reasons)})" if reasons else
                                     " (no KubeVirt guest on this node)")


def taint_effect(ladder: Ladder | None, spec: LadderRelief) -> str | None:
    """The pressure taint the node should carry now: PreferNoSchedule in Hard, NoSchedule in
    Critical, none otherwise (or when tainting is off)."""
    if not spec.taint or ladder is None:
        return None
    if ladder.state is State.CRITICAL:
        return NO_SCHEDULE
    return PREFER_NO_SCHEDULE if ladder.state is State.HARD else None


def with_taint(taints: Sequence[Mapping[str, Any]],
               effect: str | None) -> list[dict[str, Any]]:
    """The node's taints with ours set to ``effect`` (removed when None), the rest untouched."""
    others = [dict(t) for t in taints if t.get("key") != TAINT_KEY]
    if effect is None:
        return others
    return [*others, {"key": TAINT_KEY, "value": "true", "effect": effect}]


def local_status(ladder: Ladder | None) -> str:
    """Relief in local mode (plain libvirt, no cluster): reported, never acted on."""
    if ladder is None or ladder.state is not State.CRITICAL:
        return ""
    return ("unable: local mode: relief is reported, not acted on (no KubeVirt here to "
            "live-migrate a guest: move one yourself, e.g. virsh migrate)")
