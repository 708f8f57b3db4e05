"""The reclamation ladder: one node-level memory state that gates every lever. Pure.

VMware's ESXi computes one state from free memory against a size-derived ``minFree`` (899 MB for
the first 28 GB plus 1 % of the rest) and lets each state allow a fixed set of reclamation
techniques, with hysteresis between states. This module does the same for a Linux node, from
two figures the host already reports:

* ``MemAvailable`` (``/proc/meminfo``) against a minimum *M*: the policy's
  ``ladder.minimumAvailable``, or VMware's rule for this node's ``MemTotal`` (pro rata below
  28 GiB, so a small node is not in Soft all the time), but never below twice the kubelet's
  default eviction threshold (200 MiB), so Critical comes before the kubelet evicts;
* host memory PSI (``/proc/pressure/memory``, ``some``/``full`` avg10): stalls say the node is
  short of memory even when ``MemAvailable`` looks fine (thrashing page cache, a cgroup at its
  limit).

Five states, best first, and what each lets the levers do (``docs/ladder.md``):

====================  =========================================================================
Plenty (> 8 M)        KSM (Adaptive) at its idle trickle; guests grow back toward their maximum
Clear                 hold: only pressured guests grow; Adaptive KSM as usual
Soft (< 4 M, PSI)     KSM may boost within its CPU budget; idle guests give one step per cycle
Hard (< 2 M, PSI)     guests reclaimed toward their floors (larger steps); zswap if allowed;
                      nothing grows but a pressured guest
Critical (< M, PSI)   as Hard, and relief is wanted (a guest moved elsewhere)
====================  =========================================================================

The node worsens at once (as soon as a figure crosses a threshold) and improves only when the
state's exit conditions hold: ``MemAvailable`` above the threshold that entered it plus
``exitMarginPercent`` (25 %), and the PSI figure that could have entered it below
``psi.exitPercent`` (50 %) of its threshold. Auto ballooning's host band and Adaptive KSM's
pressure share are not loops of their own any more: they raise the Soft and Plenty thresholds.

Everything here is a function of (what the ladder remembered, the observation, the policy); the
only clock is the observation's, and the wall time is copied, never read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from overcommit.api.policy import (
    BalloonAuto,
    BalloonMode,
    KsmAdaptive,
    KsmMode,
    LadderPsi,
    LadderSpec,
    PolicySpec,
)
from overcommit.api.schema import quantity_bytes
from overcommit.planning.observation import Observation
from overcommit.units import human_bytes

MIB = 1 << 20
GIB = 1 << 30
# VMware ESXi 6.x minFree: 899 MB for the first 28 GB of host memory plus 1 % of the rest.
VMWARE_MIN_FREE = 899 * MIB
VMWARE_FIRST = 28 * GIB
# The kubelet's default hard eviction threshold (memory.available<100Mi). The default M is
# never below twice that, so even a small node reaches Critical (M) while the kubelet still
# sees 100 MiB above its threshold: the ladder acts before the kubelet evicts.
KUBELET_EVICTION = 100 * MIB
MINIMUM_FLOOR = 2 * KUBELET_EVICTION
# The transitions a ladder remembers (and the node state shows), newest first.
RECENT_TRANSITIONS = 16
# Under pressure (Soft or worse) the node's cycle runs at least this often (seconds): a node
# in Hard can fill its last gigabyte within the agent's default 30 s. 10 s is MOM's and
# Proxmox's balloon cycle and the default auto.intervalSeconds, and PSI's avg10 window.
PRESSURE_INTERVAL_S = 10.0


class State(StrEnum):
    PLENTY = "Plenty"
    CLEAR = "Clear"
    SOFT = "Soft"
    HARD = "Hard"
    CRITICAL = "Critical"

    @property
    def severity(self) -> int:
        return ORDER.index(self)

    def worse_than(self, other: State) -> bool:
        return self.severity > other.severity

    def at_least(self, other: State) -> bool:
        """Whether this state is ``other`` or a worse one."""
        return self.severity >= other.severity


ORDER = (State.PLENTY, State.CLEAR, State.SOFT, State.HARD, State.CRITICAL)
# The states entered from above by MemAvailable falling below a threshold (Clear: below the
# Plenty threshold), worst first.
BOUNDED = (State.CRITICAL, State.HARD, State.SOFT, State.CLEAR)


# ------------------------------------------------------------------------------------------------
# Thresholds


@dataclass(frozen=True)
class PsiThresholds:
    """PSI thresholds in hundredths of a percent, as the ``psi`` source's counters are."""

    some_soft: int
    full_hard: int
    full_critical: int
    exit_percent: int

    def exit_of(self, threshold: int) -> int:
        return threshold * self.exit_percent // 100


@dataclass(frozen=True)
class Thresholds:
    """MemAvailable thresholds (bytes): the node is in ``state`` or worse below
    ``below[state]``, and leaves it upward only above ``leave_above(state)``."""

    minimum: int
    minimum_source: str
    below: Mapping[State, int]  # Clear (= the Plenty threshold), Soft, Hard, Critical
    why: Mapping[State, str]  # what set each threshold
    exit_margin_percent: int
    psi: PsiThresholds | None  # None: PSI is not used

    def leave_above(self, state: State) -> int:
        return self.below[state] * (100 + self.exit_margin_percent) // 100


def vmware_minimum(total: int) -> int:
    """VMware's minFree for a host with ``total`` bytes: 899 MiB for the first 28 GiB plus 1 %
    of the rest; pro rata below 28 GiB (ESXi's rule is written for its host sizes; a flat 899 MiB
    would keep a 4 GiB node in Soft below 3.5 GiB of MemAvailable)."""
    if total <= VMWARE_FIRST:
        return VMWARE_MIN_FREE * total // VMWARE_FIRST
    return VMWARE_MIN_FREE + (total - VMWARE_FIRST) // 100


def thresholds(spec: PolicySpec | None, total: int) -> Thresholds:
    """The ladder's thresholds for a node with ``total`` bytes under ``spec`` (None: no policy,
    the defaults)."""
    ladder = (spec.ladder if spec is not None else None) or LadderSpec()
    if ladder.minimum_available is not None:
        minimum = quantity_bytes(ladder.minimum_available)
        source = f"ladder.minimumAvailable {ladder.minimum_available}"
    elif vmware_minimum(total) >= MINIMUM_FLOOR:
        minimum = vmware_minimum(total)
        source = (f"VMware's minFree rule for MemTotal {human_bytes(total)} (899 MiB for "
                  f"the first 28 GiB, pro rata below, plus 1% of the rest)")
    else:
        minimum = MINIMUM_FLOOR
        source = (f"twice the kubelet's default eviction threshold (100Mi): VMware's minFree "
                  f"rule gives less for MemTotal {human_bytes(total)}")
    below = {State.CRITICAL: minimum * ladder.critical_percent // 100,
             State.HARD: minimum * ladder.hard_percent // 100,
             State.SOFT: minimum * ladder.soft_percent // 100,
             State.CLEAR: minimum * ladder.plenty_percent // 100}
    why = {State.CRITICAL: f"{ladder.critical_percent}% of M",
           State.HARD: f"{ladder.hard_percent}% of M",
           State.SOFT: f"{ladder.soft_percent}% of M",
           State.CLEAR: f"{ladder.plenty_percent}% of M"}
    for state, percent, name in _raises(spec):
        raised = total * percent // 100
        if raised > below[state]:
            below[state], why[state] = raised, f"{name} {percent}% of MemTotal"
    if below[State.CLEAR] < below[State.SOFT]:  # a raised Soft above Plenty: no Clear band
        below[State.CLEAR], why[State.CLEAR] = below[State.SOFT], why[State.SOFT]
    return Thresholds(minimum, source, below, why, ladder.exit_margin_percent,
                      _psi(ladder.psi or LadderPsi()))


def _raises(spec: PolicySpec | None) -> list[tuple[State, int, str]]:
    """The other knobs that are inputs of the ladder: Auto ballooning's host band and Adaptive
    KSM's pressure share raise the Soft (and Plenty) thresholds to their share of MemTotal."""
    out: list[tuple[State, int, str]] = []
    if spec is None:
        return out
    balloon = spec.balloon
    if balloon is not None and balloon.mode is BalloonMode.AUTO:
        auto = balloon.auto or BalloonAuto()
        out += [(State.SOFT, auto.host_available_low_percent,
                 "balloon.auto.hostAvailableLowPercent"),
                (State.CLEAR, auto.host_available_high_percent,
                 "balloon.auto.hostAvailableHighPercent")]
    ksm = spec.ksm
    if ksm is not None and ksm.mode is KsmMode.ADAPTIVE:
        share = (ksm.adaptive or KsmAdaptive()).pressure_available_percent
        if share > 0:
            out.append((State.SOFT, share, "ksm.adaptive.pressureAvailablePercent"))
    return out


def _psi(psi: LadderPsi) -> PsiThresholds | None:
    if not psi.enabled:
        return None
    return PsiThresholds(psi.some_soft_percent * 100, psi.full_hard_percent * 100,
                         psi.full_critical_percent * 100, psi.exit_percent)


# ------------------------------------------------------------------------------------------------
# What the ladder reads


@dataclass(frozen=True)
class Reading:
    """The figures one cycle judged: MemAvailable and MemTotal (bytes; available None when the
    node has no /proc/meminfo), PSI avg10 in hundredths of a percent (None without PSI)."""

    available: int | None
    total: int
    psi_some: int | None = None
    psi_full: int | None = None

    @staticmethod
    def of(obs: Observation) -> Reading:
        total = obs.mem_total
        available = obs.mem_available if obs.present("meminfo") and total > 0 else None
        if not obs.present("psi"):
            return Reading(available, total)
        return Reading(available, total, obs.counter("psi", "some_avg10"),
                       obs.counter("psi", "full_avg10"))


def _percent(hundredths: int) -> str:
    return f"{hundredths / 100:.2f}%"


def _entered(th: Thresholds, r: Reading) -> tuple[State, str]:
    """The worst state the figures call for on their own (no hysteresis), and why."""
    if r.available is None:
        state, why = State.CLEAR, "host MemAvailable unknown"
    else:
        state, why = State.PLENTY, (f"MemAvailable {human_bytes(r.available)} >= "
                                    f"{human_bytes(th.below[State.CLEAR])} "
                                    f"({th.why[State.CLEAR]})")
        for bounded in BOUNDED:
            if r.available < th.below[bounded]:
                name = "Plenty's" if bounded is State.CLEAR else f"{bounded.value}'s"
                state, why = bounded, (f"MemAvailable {human_bytes(r.available)} < "
                                       f"{human_bytes(th.below[bounded])} ({name} threshold: "
                                       f"{th.why[bounded]})")
                break
    psi_state, psi_why = _psi_entered(th.psi, r)
    if psi_state.worse_than(state):
        return psi_state, psi_why
    return state, why


def _psi_entered(psi: PsiThresholds | None, r: Reading) -> tuple[State, str]:
    if psi is None or r.psi_some is None or r.psi_full is None:
        return State.PLENTY, ""
    if r.psi_full >= psi.full_critical:
        return State.CRITICAL, (f"memory PSI full avg10 {_percent(r.psi_full)} >= "
                                f"{_percent(psi.full_critical)}")
    if r.psi_full >= psi.full_hard:
        return State.HARD, (f"memory PSI full avg10 {_percent(r.psi_full)} >= "
                            f"{_percent(psi.full_hard)}")
    if r.psi_some >= psi.some_soft:
        return State.SOFT, (f"memory PSI some avg10 {_percent(r.psi_some)} >= "
                            f"{_percent(psi.some_soft)}")
    if r.psi_some >= psi.exit_of(psi.some_soft):  # not quiet enough for Plenty
        return State.CLEAR, (f"memory PSI some avg10 {_percent(r.psi_some)} >= "
                             f"{_percent(psi.exit_of(psi.some_soft))}")
    return State.PLENTY, ""


def _holds(state: State, th: Thresholds, r: Reading) -> str:
    """Why the node cannot leave ``state`` upward yet ("" when it can)."""
    if r.available is not None and r.available <= th.leave_above(state):
        return (f"MemAvailable {human_bytes(r.available)} <= "
                f"{human_bytes(th.leave_above(state))}")
    psi = th.psi
    if psi is None or r.psi_some is None or r.psi_full is None:
        return ""
    figure, threshold, name = {
        State.CLEAR: (r.psi_some, psi.some_soft, "some"),
        State.SOFT: (r.psi_some, psi.some_soft, "some"),
        State.HARD: (r.psi_full, psi.full_hard, "full"),
        State.CRITICAL: (r.psi_full, psi.full_critical, "full"),
    }[state]
    if figure >= psi.exit_of(threshold):
        return f"memory PSI {name} avg10 {_percent(figure)} >= {_percent(psi.exit_of(threshold))}"
    return ""


def _left(state: State, th: Thresholds, r: Reading) -> str:
    """Why the node left ``state`` upward."""
    text = f"left {state.value}: "
    if r.available is not None:
        text += (f"MemAvailable {human_bytes(r.available)} > "
                 f"{human_bytes(th.leave_above(state))} (its threshold + "
                 f"{th.exit_margin_percent}%)")
    else:
        text += "host MemAvailable unknown"
    if th.psi is not None and r.psi_some is not None and r.psi_full is not None:
        text += f", memory PSI some {_percent(r.psi_some)} full {_percent(r.psi_full)}"
    return text


# ------------------------------------------------------------------------------------------------
# The ladder


@dataclass(frozen=True)
class Transition:
    """One move between states; ``at`` is the observation's wall time (epoch seconds) when
    known. ``from_state`` is None for the state the ladder started in."""

    from_state: State | None
    to_state: State
    at: float | None
    reason: str

    @property
    def worsened(self) -> bool:
        return self.from_state is None or self.to_state.worse_than(self.from_state)


@dataclass(frozen=True)
class Ladder:
    """The node's state this cycle: what it gates, since when and why, and the figures and
    thresholds it was judged on. Also what the next cycle starts from."""

    state: State
    since: float | None  # wall time the node entered the state (None: unknown)
    reason: str  # why it entered the state
    thresholds: Thresholds
    reading: Reading
    transitions: tuple[Transition, ...] = ()  # newest first
    changed: bool = False  # transitions[0] happened in this cycle

    @property
    def relief(self) -> bool:
        """Critical: relief (a guest moved elsewhere) is wanted."""
        return self.state is State.CRITICAL

    @property
    def transition(self) -> Transition | None:
        """The transition this cycle made, if any."""
        return self.transitions[0] if self.changed and self.transitions else None

    def at_least(self, state: State) -> bool:
        return self.state.at_least(state)

    def after_growth(self, growth: int) -> State:
        """The state the balloon planner acts on once pressured guests grew by ``growth``
        bytes: the ladder's own, or worse if that growth takes MemAvailable below a threshold
        (it never improves the state)."""
        if growth <= 0 or self.reading.available is None:
            return self.state
        projected = replace(self.reading, available=self.reading.available - growth)
        worse, _ = _entered(self.thresholds, replace(projected, psi_some=None, psi_full=None))
        return worse if worse.worse_than(self.state) else self.state


def step(prev: Ladder | None, obs: Observation, spec: PolicySpec | None) -> Ladder:
    """This cycle's ladder. ``prev`` is the last cycle's (None at start); ``spec`` the policy
    in force (None: defaults). Worsens at once; improves only as far as the exit conditions of
    each state on the way up allow."""
    reading = Reading.of(obs)
    th = thresholds(spec, reading.total)
    entered, why = _entered(th, reading)
    if prev is None:
        first = Transition(None, entered, obs.wall_time, why)
        return Ladder(entered, obs.wall_time, why, th, reading, (first,), True)
    state, reason = prev.state, prev.reason
    if entered.worse_than(state):
        state, reason = entered, why
    elif state.worse_than(entered):
        state, reason = _improve(prev.state, entered, why, th, reading)
    if state is prev.state:
        return Ladder(state, prev.since, prev.reason, th, reading, prev.transitions)
    moved = Transition(prev.state, state, obs.wall_time, reason)
    transitions = (moved, *prev.transitions)[:RECENT_TRANSITIONS]
    return Ladder(state, obs.wall_time, reason, th, reading, transitions, True)


def _improve(current: State, entered: State, why: str, th: Thresholds,
             r: Reading) -> tuple[State, str]:
    """From ``current`` toward the better ``entered``: the node stays in the first state on
    the way whose exit conditions do not hold yet (``current`` itself, if its own do not)."""
    if _holds(current, th, r):
        return current, ""
    left = _left(current, th, r)
    state = ORDER[current.severity - 1]
    while state.worse_than(entered):
        if _holds(state, th, r):
            return state, left
        state = ORDER[state.severity - 1]
    return entered, left if entered is not State.PLENTY else f"{left}; {why}"


def next_interval(ladder: Ladder | None, interval: float) -> float:
    """The time to the next cycle: ``interval``, at most ``PRESSURE_INTERVAL_S`` under
    pressure (Soft or worse)."""
    if ladder is not None and ladder.at_least(State.SOFT):
        return min(interval, PRESSURE_INTERVAL_S)
    return interval
