"""The reclamation ladder on synthetic observations (pure): thresholds, worsening at once,
improving only past the exit conditions, PSI, transitions, and the knobs that feed it."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from overcommit.api.model import policy_from_object
from overcommit.api.policy import PolicySpec
from overcommit.host.base import SourceReading
from overcommit.planning import ladder
from overcommit.planning.ladder import RECENT_TRANSITIONS, State, step, thresholds
from overcommit.planning.observation import Observation
from testkit.cases import policy_document

MIB = 1 << 20
GIB = 1 << 30
TOTAL = 24 * GIB
M = 1 * GIB  # the minimum the tests' policy names: Critical < 1, Hard < 2, Soft < 4, Plenty > 8


def spec(**section: Any) -> PolicySpec:
    """A validated policy spec (camelCase sections), KSM on so it is a valid policy."""
    section.setdefault("ksm", {"enabled": True})
    return policy_from_object(policy_document("p", section)).spec


LADDER = spec(ladder={"minimumAvailable": "1Gi"})


def obs(available: float | None, *, some: float = 0.0, full: float = 0.0, t: float = 0.0,
        total: int = TOTAL, psi: bool = True) -> Observation:
    """``available`` in GiB (None: no /proc/meminfo); PSI avg10 figures in percent."""
    readings = {}
    if available is not None:
        readings["meminfo"] = SourceReading("meminfo", True, {}, {
            "MemTotal": total, "MemAvailable": int(available * GIB)})
    if psi:
        readings["psi"] = SourceReading("psi", True, {}, {
            "some_avg10": round(some * 100), "full_avg10": round(full * 100)})
    return Observation(time=t, readings=readings, wall_time=1_700_000_000.0 + t)


def walk(sequence: list[Observation], policy: PolicySpec | None = LADDER) -> list[State]:
    prev = None
    states = []
    for o in sequence:
        prev = step(prev, o, policy)
        states.append(prev.state)
    return states


# ------------------------------------------------------------------------------------------------
# Thresholds


def test_the_default_minimum_is_vmwares_min_free_rule() -> None:
    assert ladder.vmware_minimum(28 * GIB) == 899 * MIB
    assert ladder.vmware_minimum(100 * GIB) == 899 * MIB + 72 * GIB // 100  # 1636 MiB
    # Pro rata below 28 GiB: a 24 GiB node keeps ~770 MiB, a 4 GiB test VM ~128 MiB.
    assert ladder.vmware_minimum(24 * GIB) == 899 * MIB * 24 // 28
    assert ladder.vmware_minimum(4 * GIB) == 899 * MIB * 4 // 28
    th = thresholds(None, 24 * GIB)
    assert th.minimum == ladder.vmware_minimum(24 * GIB)
    assert "VMware's minFree" in th.minimum_source
    assert th.below == {State.CRITICAL: th.minimum, State.HARD: 2 * th.minimum,
                        State.SOFT: 4 * th.minimum, State.CLEAR: 8 * th.minimum}
    assert th.leave_above(State.HARD) == 2 * th.minimum * 125 // 100
    # Never below twice the kubelet's default eviction threshold (100Mi): Critical first.
    small = thresholds(None, 4 * GIB)
    assert small.minimum == 200 * MIB and "kubelet" in small.minimum_source


def test_a_policy_sets_its_own_minimum_and_percentages() -> None:
    th = thresholds(spec(ladder={"minimumAvailable": "2Gi", "criticalPercent": 50,
                                 "hardPercent": 150, "softPercent": 300, "plentyPercent": 600,
                                 "exitMarginPercent": 10}), TOTAL)
    assert th.minimum == 2 * GIB and th.minimum_source == "ladder.minimumAvailable 2Gi"
    assert th.below == {State.CRITICAL: GIB, State.HARD: 3 * GIB, State.SOFT: 6 * GIB,
                        State.CLEAR: 12 * GIB}
    assert th.leave_above(State.SOFT) == 6 * GIB * 110 // 100


def test_auto_ballooning_keeps_its_band_and_adaptive_ksm_raises_soft() -> None:
    auto = spec(balloon={"mode": "Auto", "auto": {"hostAvailableLowPercent": 30,
                                                  "hostAvailableHighPercent": 50}})
    th = thresholds(auto, TOTAL)
    assert th.below[State.SOFT] == TOTAL * 30 // 100
    assert th.below[State.CLEAR] == TOTAL * 50 // 100
    assert th.why[State.SOFT] == "balloon.auto.hostAvailableLowPercent 30% of MemTotal"
    adaptive = spec(ksm={"mode": "Adaptive", "adaptive": {"pressureAvailablePercent": 25}})
    th = thresholds(adaptive, TOTAL)
    assert th.below[State.SOFT] == TOTAL * 25 // 100
    assert th.why[State.SOFT] == "ksm.adaptive.pressureAvailablePercent 25% of MemTotal"
    # Only raised: a share below the ladder's own threshold changes nothing, 0 nothing at all.
    low = spec(ksm={"mode": "Adaptive", "adaptive": {"pressureAvailablePercent": 0}})
    assert thresholds(low, TOTAL).below == thresholds(None, TOTAL).below
    # Soft raised above Plenty: Plenty rises with it (no Clear band, but the order holds).
    high = spec(ksm={"mode": "Adaptive", "adaptive": {"pressureAvailablePercent": 90}})
    th = thresholds(high, TOTAL)
    assert th.below[State.CLEAR] == th.below[State.SOFT] == TOTAL * 90 // 100


def test_psi_can_be_turned_off() -> None:
    off = spec(ladder={"minimumAvailable": "1Gi", "psi": {"enabled": False}})
    assert walk([obs(20, full=80)], off) == [State.PLENTY]
    assert walk([obs(20, full=80)]) == [State.CRITICAL]


# ------------------------------------------------------------------------------------------------
# States from MemAvailable


def test_each_state_is_entered_below_its_threshold() -> None:
    for available, state in ((9, State.PLENTY), (8.0, State.PLENTY), (7.9, State.CLEAR),
                             (3.9, State.SOFT), (1.9, State.HARD), (0.9, State.CRITICAL)):
        assert walk([obs(available)]) == [state], available


def test_the_node_worsens_at_once_skipping_states() -> None:
    assert walk([obs(6), obs(0.5)]) == [State.CLEAR, State.CRITICAL]


def test_the_node_improves_only_above_the_threshold_plus_the_margin() -> None:
    # Hard below 2 GiB, left only above 2.5 GiB; Soft left above 5 GiB; Plenty above 10 GiB.
    states = walk([obs(1.9), obs(2.3), obs(1.95), obs(2.05), obs(2.6), obs(4.9), obs(5.1),
                   obs(9.9), obs(10.1), obs(8.5), obs(7.9)])
    assert states == [State.HARD, State.HARD, State.HARD, State.HARD, State.SOFT, State.SOFT,
                      State.CLEAR, State.CLEAR, State.PLENTY, State.PLENTY, State.CLEAR]


def test_improving_stops_at_the_first_state_whose_exit_does_not_hold() -> None:
    # From Critical straight to 3 GiB: above Critical's and Hard's exits, not Soft's.
    assert walk([obs(0.5), obs(3)]) == [State.CRITICAL, State.SOFT]
    assert walk([obs(0.5), obs(1.2)]) == [State.CRITICAL, State.CRITICAL]  # 1.2 < 1.25
    assert walk([obs(0.5), obs(12)]) == [State.CRITICAL, State.PLENTY]


def test_unknown_memory_is_clear() -> None:
    assert walk([obs(None)]) == [State.CLEAR]
    assert step(None, obs(None), LADDER).reason == "host MemAvailable unknown"


# ------------------------------------------------------------------------------------------------
# States from PSI


def test_psi_escalates_whatever_memavailable_says() -> None:
    assert walk([obs(20, some=12)]) == [State.SOFT]
    assert walk([obs(20, some=30, full=6)]) == [State.HARD]
    assert walk([obs(20, some=60, full=25)]) == [State.CRITICAL]
    first = step(None, obs(20, some=60, full=25), LADDER)
    assert first.reason == "memory PSI full avg10 25.00% >= 20.00%"
    assert first.relief


def test_psi_states_are_left_below_half_their_threshold() -> None:
    states = walk([obs(20, some=60, full=25), obs(20, some=40, full=12),
                   obs(20, some=30, full=9), obs(20, some=20, full=3),
                   obs(20, some=12, full=2), obs(20, some=6, full=1), obs(20, some=4, full=0),
                   obs(20, some=3, full=0)])
    assert states == [State.CRITICAL, State.CRITICAL, State.HARD, State.HARD, State.SOFT,
                      State.SOFT, State.PLENTY, State.PLENTY]


def test_plenty_needs_quiet_psi() -> None:
    assert walk([obs(20, some=6)]) == [State.CLEAR]  # above soft's exit (5%): not Plenty
    assert walk([obs(20, some=4)]) == [State.PLENTY]
    assert walk([obs(20)], None) == [State.PLENTY]  # defaults: 8 x ~770 MiB on 24 GiB


def test_a_node_without_psi_is_judged_on_memory_alone() -> None:
    assert walk([obs(20, psi=False), obs(1.5, psi=False)]) == [State.PLENTY, State.HARD]


# ------------------------------------------------------------------------------------------------
# Transitions


def test_transitions_are_recorded_newest_first_with_the_observation_wall_time() -> None:
    first = step(None, obs(6, t=0), LADDER)
    assert first.changed and first.transition is not None
    assert first.transition.from_state is None and first.transition.to_state is State.CLEAR
    assert first.since == 1_700_000_000.0
    same = step(first, obs(5, t=10), LADDER)
    assert not same.changed and same.transition is None
    assert (same.since, same.reason, same.transitions) == (first.since, first.reason,
                                                           first.transitions)
    worse = step(same, obs(1.5, t=20), LADDER)
    assert worse.changed and worse.since == 1_700_000_020.0
    moved = worse.transitions[0]
    assert (moved.from_state, moved.to_state, moved.worsened) == (State.CLEAR, State.HARD, True)
    assert moved.reason == "MemAvailable 1.5Gi < 2.0Gi (Hard's threshold: 200% of M)"
    better = step(worse, obs(3, t=30), LADDER)
    assert better.transitions[0].reason == ("left Hard: MemAvailable 3.0Gi > 2.5Gi (its "
                                            "threshold + 25%), memory PSI some 0.00% full "
                                            "0.00%")
    assert not better.transitions[0].worsened
    assert [t.to_state for t in better.transitions] == [State.SOFT, State.HARD, State.CLEAR]


def test_the_transition_list_is_bounded() -> None:
    prev = None
    for n in range(3 * RECENT_TRANSITIONS):
        prev = step(prev, obs(0.5 if n % 2 else 20, t=n), LADDER)
    assert prev is not None and len(prev.transitions) == RECENT_TRANSITIONS
    assert prev.transitions[0].at == 1_700_000_000.0 + 3 * RECENT_TRANSITIONS - 1


def test_the_ladder_survives_a_policy_change() -> None:
    hard = step(None, obs(1.5), LADDER)
    # A policy without a ladder section: defaults (M ~770 MiB), under which 2.2 GiB is Soft,
    # while its own Hard's exit is 1.9 GiB: the node leaves Hard.
    assert step(hard, obs(2.2), None).state is State.SOFT


def test_pressured_growth_can_only_worsen_the_state_the_balloons_act_on() -> None:
    clear = step(None, obs(4.2), LADDER)
    assert clear.state is State.CLEAR
    assert clear.after_growth(0) is State.CLEAR
    assert clear.after_growth(300 * MIB) is State.SOFT
    assert clear.after_growth(3 * GIB) is State.HARD
    assert clear.after_growth(7 * GIB // 2) is State.CRITICAL
    assert step(None, obs(1.5), LADDER).after_growth(-GIB) is State.HARD


def test_under_pressure_cycles_come_sooner() -> None:
    assert ladder.next_interval(step(None, obs(6), LADDER), 30.0) == 30.0
    assert ladder.next_interval(step(None, obs(3), LADDER), 30.0) == ladder.PRESSURE_INTERVAL_S
    assert ladder.next_interval(step(None, obs(3), LADDER), 2.0) == 2.0
    assert ladder.next_interval(None, 30.0) == 30.0


# ------------------------------------------------------------------------------------------------
# Properties


READINGS = st.lists(st.tuples(st.floats(0.1, 20), st.floats(0, 100), st.floats(0, 100)),
                    min_size=1, max_size=25)


@given(READINGS)
@settings(max_examples=200, deadline=None)
def test_never_better_than_the_figures_and_improving_only_past_exits(
        readings: list[tuple[float, float, float]]) -> None:
    prev = None
    for n, (available, some, full) in enumerate(readings):
        o = obs(available, some=max(some, full), full=full, t=n)
        now = step(prev, o, LADDER)
        entered, _ = ladder._entered(now.thresholds, ladder.Reading.of(o))
        assert now.state.at_least(entered)  # worsening is never delayed
        if prev is not None and prev.state.worse_than(now.state):
            # left prev.state: its memory exit held, and its PSI figure was low enough
            assert o.mem_available > now.thresholds.leave_above(prev.state)
            assert not ladder._holds(prev.state, now.thresholds, ladder.Reading.of(o))
        if prev is not None and now.state is not prev.state:
            assert now.changed and now.transitions[0].from_state is prev.state
        prev = now
