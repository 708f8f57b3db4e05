"""The pure parts of ``bench.pressure``: the node's view of the machine, the bench's policy,
the host levels the rig aims at, the scenarios' schedules, and what a trial's record adds up
to. No I/O, so the unit tests cover it without a guest or a rig.

The node is the machine minus a reserve. The benchmark shares its machine: it must leave
``reserve`` bytes of MemAvailable to others at all times (the rig's safety floor), and the
ladder's thresholds for this machine's MemTotal (VMware's minFree rule: Critical below ~756 MiB
of 23.5 GiB) all lie below such a reserve. So every strategy -- ours, MOM's, Proxmox's -- reads
the real ``/proc/meminfo`` with the reserve taken out of it (``node_view``): MemTotal and
MemAvailable less the reserve, and MemFree less the reserve (what MemFree cannot cover comes
out of Cached, then Buffers, so MOM's MemFree + Buffers + Cached is less the reserve too). That
is the node a dedicated machine of MemTotal - reserve would be, judged by every rule alike; the
ladder's thresholds are the product's defaults for that MemTotal (the policy names no ladder
settings). PSI is the machine's own, unchanged.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from overcommit.api.model import policy_from_object
from overcommit.api.policy import GROUP, POLICY_KIND, VERSION, PolicySpec
from overcommit.planning.ladder import ORDER, State, Thresholds, thresholds

MIB = 1 << 20
GIB = 1 << 30
CHUNK = 64 * MIB  # the rig's unit (testkit.memrig.CHUNK)
# The deepest level the rig aims at stays this far above its floor (its own refusal is at
# two chunks; one more chunk for the guests' and others' noise).
FLOOR_MARGIN = 3 * CHUNK
STRATEGIES = ("ladder", "mom", "proxmox")
BASELINES = ("mom", "proxmox")
SCENARIOS = ("step", "burst", "leak")


# ------------------------------------------------------------------------------------------------
# The node and the policy


def node_view(counters: Mapping[str, int], reserve: int) -> dict[str, int]:
    """/proc/meminfo counters (bytes, as ``MeminfoSource`` reads them) with ``reserve`` bytes
    taken out (module doc)."""
    out = dict(counters)
    out["MemTotal"] = max(0, out.get("MemTotal", 0) - reserve)
    out["MemAvailable"] = max(0, out.get("MemAvailable", 0) - reserve)
    rest = reserve
    for name in ("MemFree", "Cached", "Buffers"):
        taken = min(rest, out.get(name, 0))
        out[name] = out.get(name, 0) - taken
        rest -= taken
    return out


def bench_policy(pattern: str, stats_period_s: int, interval_s: int) -> PolicySpec:
    """Auto ballooning of our guests only, validated like any policy; everything else --
    the ladder and relief included -- at its default."""
    policy = policy_from_object({
        "apiVersion": f"{GROUP}/{VERSION}", "kind": POLICY_KIND,
        "metadata": {"name": "bench-pressure", "uid": "bench-pressure", "generation": 1},
        "spec": {
            "balloon": {"mode": "Auto", "statsPeriodSeconds": stats_period_s,
                        "vmSelector": {"domainNamePattern": pattern},
                        "auto": {"intervalSeconds": interval_s}},
        },
    })
    return policy.spec


@dataclass(frozen=True)
class Levels:
    """The node's MemAvailable the rig aims at (bytes, reserve out), one per band: the middle
    of Soft and Hard, and half-way into Critical (never closer than FLOOR_MARGIN to the rig's
    floor, which is the reserve: 0 in the node's terms)."""

    soft: int
    hard: int
    critical: int

    def of(self, name: str) -> int:
        return {"soft": self.soft, "hard": self.hard, "critical": self.critical}[name]


def levels(th: Thresholds, floor: int = 0) -> Levels:
    below = th.below
    critical = max(floor + FLOOR_MARGIN,
                   below[State.CRITICAL] - (below[State.HARD] - below[State.CRITICAL]) // 2)
    if critical >= below[State.CRITICAL]:
        raise ValueError(f"the Critical threshold {below[State.CRITICAL] >> 20} MiB is too "
                         f"close to the rig's floor {floor >> 20} MiB")
    return Levels(soft=(below[State.HARD] + below[State.SOFT]) // 2,
                  hard=(below[State.CRITICAL] + below[State.HARD]) // 2, critical=critical)


def levels_for(spec: PolicySpec, node_total: int) -> tuple[Thresholds, Levels]:
    """The ladder's thresholds for the node (MemTotal less the reserve) and the levels."""
    th = thresholds(spec, node_total)
    return th, levels(th)


# ------------------------------------------------------------------------------------------------
# Scenarios


@dataclass(frozen=True)
class Event:
    """What happens just before one cycle: the rig takes (gives back, negative) ``take`` bytes
    of host memory; the PSI thrashers start (True) or stop (False); the busy guest's workload
    ends (every eater killed) and/or it eats ``eat_mib`` MiB more."""

    take: int = 0
    thrash: bool | None = None
    stop: bool = False
    eat_mib: int = 0

    @property
    def empty(self) -> bool:
        return self == Event()


@dataclass(frozen=True)
class Scenario:
    name: str
    start: str  # the level the host starts at (Levels.of)
    base_mib: int  # the busy guest's workload before cycle 1
    events: tuple[Event, ...]  # one per cycle

    @property
    def cycles(self) -> int:
        return len(self.events)


def scenario(name: str, cycles: int, lv: Levels, max_mib: int) -> Scenario:
    """The three scenarios, ``cycles`` long, for guests of ``max_mib``:

    * step: the host at Soft; at a quarter of the run the host drops to Critical and the busy
      guest's load steps up by 40 % of its maximum, both for good;
    * burst: the host at Hard; at a third of the run, for two cycles, the host drops to
      Critical with real memory stalls (PSI, the rig's thrashers) and the busy guest bursts by
      45 % of its maximum; then both go back (the guest restarts its base load);
    * leak: the host at Soft loses memory every cycle until it is in Critical three quarters
      into the run (and stays there), and the busy guest's use grows a little every cycle, by
      50 % of its maximum in all.
    """
    if cycles < 6:
        raise ValueError("a scenario needs at least 6 cycles")
    base = max_mib * 25 // 100
    events = [Event() for _ in range(cycles)]
    if name == "step":
        at = cycles // 4
        events[at] = Event(take=lv.soft - lv.critical, eat_mib=max_mib * 40 // 100)
        return Scenario(name, "soft", base, tuple(events))
    if name == "burst":
        at = cycles // 3
        drop = lv.hard - lv.critical
        events[at] = Event(take=drop, thrash=True, eat_mib=max_mib * 45 // 100)
        events[at + 2] = Event(take=-drop, thrash=False, stop=True, eat_mib=base)
        return Scenario(name, "hard", base, tuple(events))
    if name == "leak":
        # The host loses an equal share in cycles 2..L and is in Critical from cycle L + 1
        # (three quarters into the run) to the end; the guest's use grows every cycle.
        leaking = cycles * 3 // 4 - 1
        per_take = (lv.soft - lv.critical) // leaking
        per_eat = max(1, max_mib * 50 // 100 // (cycles - 1))
        events = [Event(), *(Event(take=per_take if k <= leaking else 0, eat_mib=per_eat)
                             for k in range(1, cycles))]
        return Scenario(name, "soft", base, tuple(events))
    raise ValueError(f"unknown scenario {name!r}")


# ------------------------------------------------------------------------------------------------
# One trial's record


@dataclass
class Record:
    """What one strategy's trial of one scenario saw, cycle by cycle."""

    states: list[tuple[float, State]] = field(default_factory=list)  # (monotonic, state)
    end: float | None = None  # monotonic time the last cycle ended
    relief_at: list[int] = field(default_factory=list)  # cycles (0-based) a relief was asked
    reclaimed_kib: int = 0  # every balloon move that took memory from a guest, added up
    returned_kib: int = 0  # every move that gave memory back
    # What the guests took back from their balloons on their own, between one cycle's end
    # (balloons settled at their targets) and the next observation, when no target changed:
    # deflate-on-OOM at work (0 without it: a balloon does not deflate by itself otherwise).
    taken_back_kib: int = 0
    guest_oom_kills: int = 0
    host_oom_kills: int = 0
    host_swap_in_pages: int = 0
    guest_swap_in_kib: int = 0
    guest_major_faults: int = 0
    lowest_available: int | None = None
    disturbed: list[str] = field(default_factory=list)

    def seconds_in_state(self) -> dict[str, float]:
        """Seconds spent in each state: each cycle's state counts from its observation to the
        next one's (the last one's to the end of the trial)."""
        out = {s.value: 0.0 for s in ORDER}
        if not self.states:
            return out
        ends = [t for t, _ in self.states[1:]] + [self.end if self.end is not None else
                                                  (self.states[-1][0] if self.states else 0)]
        for (t, state), until in zip(self.states, ends, strict=True):
            out[state.value] += max(0.0, until - t)
        return {k: round(v, 1) for k, v in out.items()}

    @property
    def seconds(self) -> float:
        if not self.states or self.end is None:
            return 0.0
        return self.end - self.states[0][0]

    def relief_cycles(self) -> int | None:
        """Cycles from entering Critical to the first relief request (None: none asked)."""
        if not self.relief_at:
            return None
        asked = self.relief_at[0]
        entered = asked
        while entered > 0 and self.states[entered - 1][1] is State.CRITICAL:
            entered -= 1
        return asked - entered

    def relief_late(self) -> bool:
        """The first Critical episode lasted 3 cycles or more without a relief request in
        its first 3 cycles (an episode of 1 or 2 cycles is one reclaim ended in time)."""
        first = next((i for i, (_, s) in enumerate(self.states) if s is State.CRITICAL), None)
        if first is None:
            return False
        length = 0
        while first + length < len(self.states) and \
                self.states[first + length][1] is State.CRITICAL:
            length += 1
        return length >= 3 and not any(first <= c <= first + 2 for c in self.relief_at)

    def critical_entries(self) -> int:
        return sum(1 for i, (_, s) in enumerate(self.states)
                   if s is State.CRITICAL and (i == 0 or self.states[i - 1][1] is not s))

    def summary(self) -> dict[str, Any]:
        seconds = self.seconds or 1.0
        return {
            "guest_oom_kills": self.guest_oom_kills,
            "host_oom_kills": self.host_oom_kills,
            "seconds_in_state": self.seconds_in_state(),
            "reclaimed_bytes": self.reclaimed_kib * 1024,
            "returned_bytes": self.returned_kib * 1024,
            "taken_back_bytes": self.taken_back_kib * 1024,
            "host_swap_in_pages_per_s": round(self.host_swap_in_pages / seconds, 2),
            "guest_swap_in_kib_per_s": round(self.guest_swap_in_kib / seconds, 2),
            "guest_major_faults_per_s": round(self.guest_major_faults / seconds, 2),
            "relief_requests": len(self.relief_at),
            "relief_cycles": self.relief_cycles(),
            "relief_late": self.relief_late(),
            "critical_entries": self.critical_entries(),
            "lowest_available_bytes": self.lowest_available,
            "seconds": round(self.seconds, 1),
        }


# ------------------------------------------------------------------------------------------------
# Medians, comparisons


def _median(values: Sequence[float]) -> float | int:
    m = statistics.median(values)
    return int(m) if float(m).is_integer() else round(float(m), 2)


def median_cycles(values: Sequence[int | None]) -> int | float | None:
    """Median relief cycles; a run without a request counts as never (None when the median
    is never)."""
    m = statistics.median([math.inf if v is None else v for v in values])
    return None if math.isinf(m) else (int(m) if float(m).is_integer() else m)


def aggregate(runs: Sequence[Mapping[str, Any]], strategy: str) -> dict[str, Any]:
    """The median of each figure over ``runs`` (trial summaries), the worst of the OOM kills;
    ``runs`` kept when there are several. Baselines have no relief rule: their relief fields
    are None."""
    if not runs:
        return {"not_run": True}
    out: dict[str, Any] = {}
    for key in ("guest_oom_kills", "host_oom_kills", "reclaimed_bytes", "returned_bytes",
                "taken_back_bytes", "host_swap_in_pages_per_s", "guest_swap_in_kib_per_s",
                "guest_major_faults_per_s", "critical_entries", "seconds"):
        out[key] = _median([r[key] for r in runs])
    out["seconds_in_state"] = {s.value: _median([r["seconds_in_state"][s.value] for r in runs])
                               for s in ORDER}
    out["guest_oom_kills_worst"] = max(r["guest_oom_kills"] for r in runs)
    out["host_oom_kills_worst"] = max(r["host_oom_kills"] for r in runs)
    lows = [r["lowest_available_bytes"] for r in runs if r["lowest_available_bytes"] is not None]
    out["lowest_available_bytes"] = min(lows) if lows else None
    if strategy == "ladder":
        out["relief_requests"] = _median([r["relief_requests"] for r in runs])
        out["relief_cycles"] = median_cycles([r["relief_cycles"] for r in runs])
        out["relief_late_runs"] = sum(1 for r in runs if r["relief_late"])
        asked = [r["relief_cycles"] for r in runs if r["relief_cycles"] is not None]
        out["relief_cycles_worst"] = max(asked) if asked else None
    else:
        out["relief_requests"] = None  # MOM and Proxmox have no relief rule
    out["n_runs"] = len(runs)
    disturbed = [d for r in runs for d in r.get("disturbed", [])]
    if disturbed:
        out["disturbed"] = disturbed
    if len(runs) > 1:
        out["runs"] = list(runs)
    return out


def pressured_seconds(result: Mapping[str, Any]) -> float:
    s = result["seconds_in_state"]
    return float(s[State.HARD.value] + s[State.CRITICAL.value])


def versus(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, str]:
    """ladder against one baseline, figure by figure: "better", "worse" or "tie" (exactly
    equal medians are ties; fewer kills, fewer seconds in Hard + Critical and more reclaimed
    are better)."""

    def word(a: float, b: float, lower_is_better: bool) -> str:
        if a == b:
            return "tie"
        return "better" if (a < b) == lower_is_better else "worse"

    return {
        "guest_oom_kills": word(ours["guest_oom_kills"], theirs["guest_oom_kills"], True),
        "host_oom_kills": word(ours["host_oom_kills"], theirs["host_oom_kills"], True),
        "seconds_hard_or_critical": word(pressured_seconds(ours), pressured_seconds(theirs),
                                         True),
        "reclaimed_bytes": word(ours["reclaimed_bytes"], theirs["reclaimed_bytes"], False),
    }


def must_show(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Issue 12's two claims, judged on the worst runs: (1) ladder has 0 guest and 0 host OOM
    kills in every scenario where MOM or Proxmox has at least one (vacuous where neither
    has); (2) ladder asks for relief within 2 cycles of entering Critical, in every scenario
    where it entered Critical."""
    kills_ok, relief_ok, notes = True, True, []
    judged = []  # the scenarios where a baseline killed: the only ones the claim is about
    for name, by_strategy in results.items():
        ours = by_strategy.get("ladder")
        if ours is None or ours.get("not_run"):
            continue
        baseline_kills = any(by_strategy[b]["guest_oom_kills_worst"]
                             + by_strategy[b]["host_oom_kills_worst"] > 0
                             for b in BASELINES if b in by_strategy
                             and not by_strategy[b].get("not_run"))
        ours_kills = ours["guest_oom_kills_worst"] + ours["host_oom_kills_worst"]
        if baseline_kills:
            judged.append(name)
            if ours_kills:
                kills_ok = False
                notes.append(f"{name}: ladder {ours_kills} OOM kill(s) where a baseline had some")
        elif ours_kills:
            notes.append(f"{name}: ladder {ours_kills} OOM kill(s) where no baseline had one "
                         "(worse, though outside the claim)")
        worst = ours["relief_cycles_worst"]
        if ours["relief_late_runs"] or (worst is not None and worst > 2):
            relief_ok = False
            notes.append(f"{name}: relief {worst} cycles after entering Critical, "
                         f"{ours['relief_late_runs']} run(s) with none within 2")
    if not judged:
        notes.append("no baseline had an OOM kill in any scenario: the first claim holds "
                     "vacuously and shows nothing")
    return {"no_kills_where_baselines_kill": kills_ok, "relief_within_2_cycles": relief_ok,
            "scenarios_where_baselines_kill": judged, "notes": notes}
