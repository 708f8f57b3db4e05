"""The balloon planner, rule by rule, on hand-made observations (pure, no libvirt).

The builders at the top (``vm``, ``host``, ``balloon``) are shared by the other test_balloon_*
modules.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from overcommit.api.model import policy_from_object
from overcommit.api.policy import BalloonFloor, BalloonSpec
from overcommit.host.base import SourceReading
from overcommit.planning.balloon import (
    SHARES_ANNOTATION,
    BalloonPlan,
    BalloonState,
    guest_floor,
    mib,
    plan_balloons,
    release_targets,
    select_guests,
)
from overcommit.planning.ladder import State
from overcommit.planning.observation import Observation
from overcommit.virt.model import GuestObservation
from testkit.cases import policy_document

MIB = 1024  # KiB
GIB = 1024 * MIB
STEP_4G = 4 * GIB * 10 // 100  # the default 10% step of a 4 GiB guest


def vm(name: str = "vm", *, max_mib: int = 4096, current_mib: int | None = None,
       usable_mib: int | None = None, t: float = 100.0, stamp: int | None = None,
       faults: int = 0, swap_in_kib: int = 0, unused_mib: int | None = None,
       ns: str | None = "default", labels: dict[str, str] | None = None,
       annotations: dict[str, str] | None = None, request_mib: int | None = None,
       has_balloon: bool = True, problem: str | None = None, stats: bool = True,
       age: float | None = None, uuid: str | None = None) -> GuestObservation:
    """A guest; sizes in MiB. By default at its maximum with half of it usable, and a fresh
    statistics sample stamped ``t``."""
    current = (current_mib if current_mib is not None else max_mib) * MIB
    usable = usable_mib * MIB if usable_mib is not None else current // 2
    unused = unused_mib * MIB if unused_mib is not None else usable // 2
    numbers = {"usable": usable, "available": current, "unused": unused, "major_fault": faults,
               "swap_in": swap_in_kib, "last_update": stamp if stamp is not None else int(t)}
    return GuestObservation(
        endpoint="qemu:///system", domain=f"{ns}_{name}" if ns else name,
        uuid=uuid or f"uuid-{name}", time=t, max_kib=max_mib * MIB, current_kib=current,
        has_balloon=has_balloon, stats=numbers if stats else {"last_update": 0},
        vmi_namespace=ns, vmi_name=name if ns else None, labels=labels or {},
        annotations=annotations or {},
        request_kib=request_mib * MIB if request_mib is not None else None, problem=problem,
        stats_age_s=age)


def host(available_percent: float | None = None, *, total_gib: float = 16,
         available_kib: int | None = None, t: float = 100.0) -> Observation:
    """A host with this share (or this many KiB) of MemAvailable; MemFree is the same."""
    total = int(total_gib * GIB * 1024)
    if available_kib is not None:
        available = available_kib * 1024
    else:
        available = int(total * (available_percent or 0) / 100)
    counters = {"MemTotal": total, "MemAvailable": available, "MemFree": available,
                "Buffers": 0, "Cached": 0}
    return Observation(time=t, readings={"meminfo": SourceReading("meminfo", True, {},
                                                                  counters)})


def balloon(**section: Any) -> BalloonSpec:
    """A validated balloon section (camelCase, as in a policy); mode Auto by default."""
    section.setdefault("mode", "Auto")
    spec = policy_from_object(policy_document("p", {"balloon": section})).spec.balloon
    assert spec is not None
    return spec


def decision_of(plan: BalloonPlan, g: GuestObservation) -> Any:
    return next(d for d in plan.decisions if d.guest.key == g.key)


def target_of(plan: BalloonPlan, g: GuestObservation) -> int | None:
    return next((t.to_kib for t in plan.targets if t.domain == g.domain), None)


def two_cycles(spec: BalloonSpec, before: list[GuestObservation],
               after: list[GuestObservation], obs: Observation) -> BalloonPlan:
    first = plan_balloons(spec, before, obs, None)
    return plan_balloons(spec, after, obs, first.state)


AUTO = balloon()
# Where host() puts a 16 GiB node on the ladder under AUTO (Soft below the 20% low mark, Plenty
# above the 40% high mark, Hard below 2 x VMware's minFree, 1 GiB here):
MID = 30.0  # Clear: hold
SHORT = 15.0  # Soft: idle guests give
HARD = 5.0  # Hard: every guest not under pressure gives, toward its floor


def seen(spec: BalloonSpec, guests: list[GuestObservation]) -> BalloonState:
    """The state of a running agent that saw the same guests one sample (10 s) earlier, using
    as much as now: the planner shrinks no guest on its first sample."""
    earlier = [replace(g, time=g.time - 10,
                       stats={**g.stats, "last_update": int(g.stats["last_update"]) - 10})
               for g in guests]
    return plan_balloons(spec, earlier, host(MID), None).state


# ------------------------------------------------------------------------------------------------
# Selection


def test_empty_or_absent_selector_selects_every_guest() -> None:
    guests = [vm("a"), vm("b", ns=None)]
    assert select_guests(None, guests)[0] == tuple(guests)
    assert select_guests(balloon(vmSelector={}).vm_selector, guests)[0] == tuple(guests)
    assert select_guests(balloon(vmSelector={"namespaces": []}).vm_selector,
                         guests)[0] == tuple(guests)


def test_namespace_label_and_expression_terms_all_hold() -> None:
    sel = balloon(vmSelector={
        "namespaces": ["prod"], "matchLabels": {"tier": "web"},
        "matchExpressions": [{"key": "pinned", "operator": "DoesNotExist"}]}).vm_selector
    ok = vm("ok", ns="prod", labels={"tier": "web"})
    other_ns = vm("ns", ns="dev", labels={"tier": "web"})
    other_label = vm("label", ns="prod", labels={"tier": "db"})
    pinned = vm("pinned", ns="prod", labels={"tier": "web", "pinned": ""})
    selected, excluded = select_guests(sel, [ok, other_ns, other_label, pinned])
    assert selected == (ok,)
    reasons = {d.guest.vmi_name: d.reason for d in excluded}
    assert "namespace dev is not one of prod" in reasons["ns"]
    assert "labels do not match" in reasons["label"]
    assert "labels do not match" in reasons["pinned"]


def test_a_plain_domain_never_matches_a_namespace_or_label_selector() -> None:
    plain = vm("plain", ns=None)
    # Even a selector an empty label set would satisfy (NotIn) does not take a plain domain.
    for terms in ({"namespaces": ["default"]}, {"matchLabels": {"a": "x"}},
                  {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]}]}):
        selected, excluded = select_guests(balloon(vmSelector=terms).vm_selector, [plain])
        assert selected == ()
        assert "no KubeVirt VMI metadata" in excluded[0].reason


def test_domain_name_pattern_is_fnmatch_on_the_libvirt_name() -> None:
    sel = balloon(vmSelector={"domainNamePattern": "web-[0-9]*"}).vm_selector
    web, db = vm("web-1", ns=None), vm("db-1", ns=None)
    selected, excluded = select_guests(sel, [web, db])
    assert selected == (web,)
    assert "'db-1' does not match 'web-[0-9]*'" in excluded[0].reason


def test_unselected_guests_get_a_decision_and_no_target() -> None:
    spec = balloon(vmSelector={"namespaces": ["prod"]})
    small = vm("x", ns="dev", current_mib=512)  # below its floor, but not ours to touch
    plan = plan_balloons(spec, [small], host(MID), None)
    assert plan.targets == ()
    assert plan.decisions[0].target_kib is None
    assert plan.decisions[0].reason.startswith("not selected")


# ------------------------------------------------------------------------------------------------
# Skipped guests


@pytest.mark.parametrize(("guest", "reason"), [
    (vm(problem="domain is paused"), "skipped: domain is paused"),
    (vm(has_balloon=False), "no balloon device"),
    (vm(stats=False), "balloon driver not reporting statistics"),
    (vm(age=31.0), "statistics are 31s old"),
    (replace(vm(), exclusions=("hugepage-backed memory", "dedicated CPUs")),
     "skipped: never ballooned: hugepage-backed memory; dedicated CPUs"),
    (replace(vm(), migration="KubeVirt live migration in progress"),
     "skipped: KubeVirt live migration in progress"),
])
def test_guests_that_cannot_be_managed_are_skipped_with_a_reason(
        guest: GuestObservation, reason: str) -> None:
    low = replace(guest, current_kib=512 * MIB)  # below the floor: would otherwise move
    plan = plan_balloons(AUTO, [low, vm("ok")], host(5), None)
    assert target_of(plan, low) is None
    assert reason in decision_of(plan, low).reason
    assert [d.guest for d in plan.decisions] == [low, vm("ok")]


def test_a_balloon_above_its_maximum_is_skipped() -> None:
    odd = vm(max_mib=1024, current_mib=2048, usable_mib=10)  # pressured, but cannot grow
    plan = plan_balloons(AUTO, [odd], host(MID), None)
    assert plan.targets == ()
    assert "balloon size 2048 MiB is above the maximum 1024 MiB" in plan.decisions[0].reason


def test_fresh_enough_statistics_are_used() -> None:
    plan = plan_balloons(AUTO, [vm(age=29.0, current_mib=512)], host(MID), None)
    assert plan.targets  # raised to the floor: age 29 s < 3 x 10 s


def test_mode_off_leaves_everything_alone() -> None:
    plan = plan_balloons(balloon(mode="Off"), [vm(current_mib=256)], host(5), None)
    assert plan.targets == ()
    assert "Off" in plan.decisions[0].reason


# ------------------------------------------------------------------------------------------------
# Floors


@pytest.mark.parametrize(("floor", "guest", "expected_mib", "why"), [
    ({}, vm(usable_mib=4000), 1024, "25% of max"),
    ({"minPercent": 50}, vm(usable_mib=4000), 2048, "50% of max"),
    ({"min": "3Gi"}, vm(usable_mib=4000), 3072, "floor.min 3Gi"),
    ({}, vm(usable_mib=4000, request_mib=2500), 2500, "VMI memory request"),
    # in use 4096 - 1000 = 3096 MiB + 10% of 4096 MiB (409.6, rounded up in KiB)
    ({}, vm(usable_mib=1000), 3096 + 409.6, "in use 3096 MiB + 10% margin"),
    ({"min": "8Gi"}, vm(usable_mib=4000), 4096, "capped at max"),
])
def test_the_floor_is_the_largest_term_and_never_above_max(
        floor: dict[str, Any], guest: GuestObservation, expected_mib: float, why: str) -> None:
    value, reason = guest_floor(balloon(floor=floor).floor or BalloonFloor(), guest)
    assert value == pytest.approx(expected_mib * MIB, abs=1)
    assert why in reason


def test_a_guest_below_its_floor_is_raised_even_when_the_host_is_short() -> None:
    g = vm(current_mib=800, usable_mib=600, request_mib=1500)
    plan = plan_balloons(AUTO, [g], host(SHORT), None)
    assert target_of(plan, g) == 1500 * MIB
    assert "below its floor 1500 MiB (VMI memory request)" in plan.targets[0].reason


def test_in_hard_only_a_pressured_guest_grows_not_one_below_a_policy_floor() -> None:
    below = vm("below", current_mib=800, usable_mib=600, request_mib=1500)
    hungry = vm("hungry", current_mib=2048, usable_mib=50)
    plan = plan_balloons(AUTO, [below, hungry], host(HARD), None)
    assert target_of(plan, below) is None
    assert "only guests under pressure grow" in decision_of(plan, below).reason
    assert (target_of(plan, hungry) or 0) > 2048 * MIB


# ------------------------------------------------------------------------------------------------
# Static


def test_static_goes_straight_to_its_target() -> None:
    spec = balloon(mode="Static", static={"targetPercent": 50})
    g = vm(usable_mib=3500)  # uses 596 MiB: floor 1024 (25%)
    plan = plan_balloons(spec, [g], host(MID), None)
    assert target_of(plan, g) == 2048 * MIB  # a 2 GiB move in one cycle, no step limit
    assert "static target 2048 MiB" in plan.targets[0].reason


def test_static_size_is_capped_at_max_and_held_at_the_floor() -> None:
    spec = balloon(mode="Static", static={"target": "8Gi"})
    g = vm(current_mib=2048, usable_mib=1500)
    assert target_of(plan_balloons(spec, [g], host(MID), None), g) == 4096 * MIB
    spec = balloon(mode="Static", static={"target": "1Gi"})
    busy = vm(usable_mib=1000)  # uses 3096 MiB: floor 3096 + 410 margin
    plan = plan_balloons(spec, [busy], host(MID), None)
    decision = decision_of(plan, busy)
    assert decision.target_kib == decision.floor_kib > 1024 * MIB
    assert "held at floor (3506 MiB: in use 3096 MiB + 10% margin)" in decision.reason


def test_static_never_shrinks_a_pressured_guest() -> None:
    spec = balloon(mode="Static", static={"targetPercent": 50})
    before, after = vm(t=0, faults=0, usable_mib=3000), vm(t=10, faults=5000, usable_mib=3000)
    plan = two_cycles(spec, [before], [after], host(MID))
    assert plan.targets == ()
    assert "under pressure (500 major faults/s > 20)" in plan.decisions[0].reason


def test_static_ignores_moves_below_the_threshold() -> None:
    spec = balloon(mode="Static", static={"targetPercent": 50})
    g = vm(current_mib=2048 + 30, usable_mib=1500)  # 30 MiB off, 1% of max is 41 MiB
    plan = plan_balloons(spec, [g], host(MID), None)
    assert plan.targets == ()
    assert "at the static target" in plan.decisions[0].reason


# ------------------------------------------------------------------------------------------------
# Auto: pressure


def test_major_faults_make_a_guest_grow_this_cycle_even_when_the_host_is_short() -> None:
    before = vm(t=0, current_mib=2048, usable_mib=1000, faults=100)
    after = vm(t=10, current_mib=2048, usable_mib=1000, faults=100 + 10 * 25)
    plan = two_cycles(AUTO, [before], [after], host(SHORT))
    assert target_of(plan, after) == 2048 * MIB + STEP_4G  # no margin deficit: one step
    d = decision_of(plan, after)
    assert d.pressured
    assert "under pressure (25 major faults/s > 20): grown by 410 MiB" in d.reason


@pytest.mark.parametrize(("swap_kib_per_s", "pressured"), [(100, True), (60, False)])
def test_swap_in_is_counted_in_4_kib_pages(swap_kib_per_s: int, pressured: bool) -> None:
    before = vm(t=0, current_mib=2048, usable_mib=1000, swap_in_kib=0)
    after = vm(t=10, current_mib=2048, usable_mib=1000, swap_in_kib=10 * swap_kib_per_s)
    plan = two_cycles(AUTO, [before], [after], host(MID))
    assert decision_of(plan, after).pressured is pressured  # 25 or 15 pages/s against 20


def test_rates_use_the_samples_stamps_not_the_observation_times() -> None:
    before = vm(t=0, stamp=1000, faults=0, usable_mib=1000, current_mib=2048)
    # Observed 10 s later, but the samples are 100 s apart: 1000 faults are 10/s, not 100/s.
    after = vm(t=10, stamp=1100, faults=1000, usable_mib=1000, current_mib=2048)
    assert not decision_of(two_cycles(AUTO, [before], [after], host(MID)), after).pressured


def test_counters_of_a_new_guest_under_the_same_name_are_not_compared() -> None:
    before = vm(t=0, faults=10**6, uuid="old", current_mib=2048, usable_mib=1000)
    after = vm(t=10, faults=10**6 + 10**5, uuid="new", current_mib=2048, usable_mib=1000)
    assert not decision_of(two_cycles(AUTO, [before], [after], host(MID)), after).pressured


@pytest.mark.parametrize(("some_percent", "pressured"), [(25.0, True), (10.0, False)])
def test_a_guest_whose_cgroup_stalls_on_memory_is_pressured(some_percent: float,
                                                            pressured: bool) -> None:
    g = replace(vm(current_mib=2048, usable_mib=1500),
                cgroup_pressure={"some_avg10": round(some_percent * 100), "full_avg10": 0})
    plan = plan_balloons(AUTO, [g], host(SHORT), seen(AUTO, [g]))
    decision = decision_of(plan, g)
    assert decision.pressured is pressured  # more than the default 10%
    if pressured:
        assert "its cgroup's memory PSI some avg10 25.00% > 10%" in decision.reason
        assert (target_of(plan, g) or 0) > 2048 * MIB  # grown, even though the node is short


def test_usable_below_the_margin_grows_by_the_deficit_plus_a_step() -> None:
    g = vm(current_mib=2048, usable_mib=100)  # margin 10% of 2048 = 204.8 MiB
    plan = plan_balloons(AUTO, [g], host(MID), None)
    deficit = -(-2048 * MIB * 10 // 100) - 100 * MIB
    assert target_of(plan, g) == 2048 * MIB + deficit + STEP_4G
    assert "usable 100 MiB < margin 205 MiB" in plan.targets[0].reason


def test_a_guest_still_pressured_gets_twice_the_headroom_and_never_more_than_max() -> None:
    spec = balloon(auto={"maxStepPercent": 20})
    step = 4 * GIB * 20 // 100
    first = plan_balloons(spec, [vm(t=0, current_mib=1024, faults=0, usable_mib=50)],
                          host(MID), None)
    assert first.decisions[0].pressured  # usable 50 MiB < margin 103 MiB
    # The balloon did not get there (the guest is slow to deflate under pressure) and it faults.
    g = vm(t=10, current_mib=1024, faults=1000, usable_mib=500)
    second = plan_balloons(spec, [g], host(MID), first.state)
    # It used 974 MiB 10 s ago (its recent peak) and uses 524 now: 450 MiB may come back.
    deficit = -(-1024 * MIB * 10 // 100) - (500 - 450) * MIB
    assert target_of(second, g) == 1024 * MIB + deficit + 2 * step  # pressured twice
    g3 = vm(t=20, current_mib=3500, faults=2000, usable_mib=500)
    third = plan_balloons(spec, [g3], host(MID), second.state)
    assert target_of(third, g3) == 4096 * MIB


def test_a_grown_guest_is_not_grown_again_on_the_same_statistics_sample() -> None:
    g = vm(t=0, stamp=50, current_mib=2048, usable_mib=100)
    first = plan_balloons(AUTO, [g], host(MID), None)
    grown = target_of(first, g)
    assert grown is not None
    # Next cycle: the balloon is at the new size, the guest has not reported since.
    same_sample = replace(g, time=10.0, current_kib=grown)
    second = plan_balloons(AUTO, [same_sample], host(MID), first.state)
    assert second.targets == ()
    assert decision_of(second, same_sample).usable_kib == 100 * MIB + grown - 2048 * MIB


def test_a_guest_whose_use_grows_faster_than_its_margin_is_grown_before_it_runs_out() -> None:
    # 1 GiB: used 300 MiB, then 650 MiB at the next sample. Usable 374 MiB is still well above
    # the 103 MiB margin, but another 350 MiB by the next sample would leave 24 MiB - the
    # trend, not the level, is what warns a guest without swap before an OOM kill.
    spec = balloon(floor={"minPercent": 10})
    before = vm(t=0, max_mib=2048, current_mib=1024, usable_mib=724)
    after = vm(t=10, max_mib=2048, current_mib=1024, usable_mib=374)
    plan = two_cycles(spec, [before], [after], host(MID))
    decision = decision_of(plan, after)
    assert decision.pressured and decision.use_growth_kib == 350 * MIB
    margin = -(-1024 * MIB * 10 // 100)
    projected = 374 * MIB - 350 * MIB
    step = 2048 * MIB * 10 // 100
    assert target_of(plan, after) == 1024 * MIB + (margin - projected) + step
    assert "use grew 350 MiB since the last sample" in decision.reason
    # The same sample seen again keeps the trend (the guest has not reported since).
    again = replace(after, time=15.0)
    assert decision_of(plan_balloons(spec, [again], host(MID), plan.state),
                       again).use_growth_kib == 350 * MIB


def test_a_guest_whose_use_grows_is_not_idle_even_with_room_above_its_margin() -> None:
    before = vm(t=0, current_mib=4096, usable_mib=3000)
    after = vm(t=10, current_mib=4096, usable_mib=2400)  # 600 MiB more used
    plan = two_cycles(AUTO, [before], [after], host(SHORT))
    decision = decision_of(plan, after)
    # floor: 1696 used + 600 growing + 410 margin = 2706 MiB; still 1390 MiB to give
    assert decision.floor_kib == 1696 * MIB + 600 * MIB + -(-4096 * MIB * 10 // 100)
    assert target_of(plan, after) == 4096 * MIB - STEP_4G
    steady = vm(t=10, current_mib=4096, usable_mib=3000)  # the same use: the plain floor
    plan = two_cycles(AUTO, [before], [steady], host(SHORT))
    assert decision_of(plan, steady).floor_kib == 1096 * MIB + -(-4096 * MIB * 10 // 100)


def test_a_guest_using_less_than_before_keeps_its_recent_peak_until_the_window_passes() -> None:
    # Used 1748 MiB, then 1148: a process OOM-killed or a paused job will want it back.
    before = vm(t=0, current_mib=2048, usable_mib=300)
    after = vm(t=10, current_mib=2048, usable_mib=900)
    plan = two_cycles(AUTO, [before], [after], host(SHORT))
    decision = decision_of(plan, after)
    assert decision.use_growth_kib == 600 * MIB
    assert decision.floor_kib == 1748 * MIB + -(-2048 * MIB * 10 // 100)
    # Six 10 s intervals later without using that much again, it is idle at its present use.
    later = vm(t=71, current_mib=2048, usable_mib=900)
    late = decision_of(plan_balloons(AUTO, [later], host(SHORT), plan.state), later)
    assert late.use_growth_kib == 0 and late.floor_kib < decision.floor_kib


@pytest.mark.parametrize(("max_mib", "min_step", "expected_mib"), [
    (512, None, 128),       # 10% is 51 MiB: the 128Mi minimum wins
    (4096, None, 409.6),    # 10% of 4 GiB wins over 128 MiB
    (100, None, 100),       # never more than the guest's maximum
    (512, "64Mi", 64),
])
def test_the_step_is_a_share_of_the_maximum_but_at_least_min_step(
        max_mib: int, min_step: str | None, expected_mib: float) -> None:
    auto: dict[str, Any] = {} if min_step is None else {"minStep": min_step}
    spec = balloon(auto=auto, floor={"minPercent": 1, "guestFreeMarginPercent": 0})
    g = vm(max_mib=max_mib, usable_mib=max_mib - 1)
    plan = plan_balloons(spec, [g], host(SHORT), seen(spec, [g]))
    given = max_mib * MIB - (target_of(plan, g) or max_mib * MIB)
    floor = max(-(-max_mib * MIB // 100), MIB)  # 1% of max, or the 1 MiB in use
    assert given == min(int(expected_mib * MIB), max_mib * MIB - floor)


def shrunk_in_hard(max_mib: int = 4096) -> tuple[GuestObservation, BalloonPlan]:
    """A guest at its maximum with plenty usable, and the Hard cycle that shrinks it."""
    g = vm(t=100, max_mib=max_mib, usable_mib=3000)
    plan = plan_balloons(AUTO, [g], host(HARD), seen(AUTO, [g]))
    assert target_of(plan, g) is not None and target_of(plan, g) < g.current_kib  # type: ignore[operator]
    return g, plan


def test_a_guest_that_took_pages_back_from_its_balloon_is_pressured_even_in_hard() -> None:
    g, shrunk = shrunk_in_hard()
    target = target_of(shrunk, g)
    assert target is not None
    # The balloon reached the target, then the guest's kernel took 300 MiB back (deflate-on-OOM).
    back = replace(vm(t=110, current_mib=target // MIB + 300, usable_mib=60), autodeflate=True)
    plan = plan_balloons(AUTO, [back], host(HARD, t=110), shrunk.state)
    decision = decision_of(plan, back)
    assert decision.pressured
    assert f"took {mib(back.current_kib - target)} back from its balloon" in decision.reason
    assert decision.floor_kib >= back.current_kib  # not below what it uses at this peak
    grown = target_of(plan, back)
    assert grown is not None and grown > back.current_kib  # grown by headroom, in Hard
    # Without deflate-on-OOM the balloon could not take that much (or someone set the size).
    stuck = plan_balloons(AUTO, [replace(back, autodeflate=False)], host(HARD, t=110),
                          shrunk.state)
    assert "above the size asked at the last decision" in decision_of(stuck, back).reason
    assert (target_of(stuck, back) or 0) > back.current_kib


def test_a_guest_that_took_pages_back_is_not_shrunk_again_in_hard() -> None:
    """The fight MOM's and Proxmox's rules lose: the next cycles must not take the pages
    again (what it used at that peak is its floor for the peak window)."""
    g, shrunk = shrunk_in_hard()
    target = target_of(shrunk, g)
    assert target is not None
    size = target // MIB + 300
    taken = plan_balloons(AUTO, [vm(t=110, current_mib=size, usable_mib=60)],
                          host(HARD, t=110), shrunk.state)
    held = vm(t=120, current_mib=size, usable_mib=1500)  # not grown yet; its use fell again
    plan = plan_balloons(AUTO, [held], host(HARD, t=120), taken.state)
    assert (target_of(plan, held) or held.current_kib) >= held.current_kib
    assert decision_of(plan, held).floor_kib >= held.current_kib


def test_a_balloon_still_inflating_or_grown_as_asked_is_no_take_back() -> None:
    g, shrunk = shrunk_in_hard()
    target = target_of(shrunk, g)
    assert target is not None
    halfway = vm(t=110, current_mib=(g.current_kib + target) // 2 // MIB, usable_mib=2000)
    plan = plan_balloons(AUTO, [halfway], host(HARD, t=110), shrunk.state)
    assert "took" not in decision_of(plan, halfway).reason  # not short of memory: inflating
    pressured = plan_balloons(AUTO, [vm(t=0, current_mib=2048, usable_mib=100)], host(MID), None)
    asked = pressured.targets[0].to_kib // MIB
    arrived = vm(t=10, current_mib=asked, usable_mib=1500)
    grown = plan_balloons(AUTO, [arrived], host(MID, t=10), pressured.state)
    assert "took" not in decision_of(grown, arrived).reason


# ------------------------------------------------------------------------------------------------
# Auto: host short of memory


def test_idle_guests_give_most_surplus_per_share_first_and_only_what_the_host_needs() -> None:
    a = vm("a", usable_mib=3000)  # floor: 1096 in use + 410 margin; surplus 2590 MiB
    b = vm("b", usable_mib=2000, annotations={SHARES_ANNOTATION: "500"})  # 1590 MiB x 2
    obs = host(total_gib=4, available_kib=500 * MIB)  # 12% < 20%: Soft (Hard < 400 MiB)
    plan = plan_balloons(AUTO, [a, b], obs, seen(AUTO, [a, b]))
    # Up to Soft's exit: its threshold (the 20% low mark) + the 25% exit margin, just above.
    leave = (4 * GIB * 1024 * 20 // 100) * 125 // 100
    need = (leave - 500 * MIB * 1024) // 1024 + 1
    assert 4096 * MIB - (target_of(plan, b) or 0) == STEP_4G  # b first, a full step
    assert 4096 * MIB - (target_of(plan, a) or 0) == need - STEP_4G  # a: the rest only
    assert decision_of(plan, b).reason == (
        "ladder Soft, MemAvailable 500 MiB < 1024 MiB (back to Clear): idle guest (usable "
        "2000 MiB, floor 2506 MiB) gives 410 MiB")


def test_no_guest_is_shrunk_on_its_first_sample() -> None:
    g = vm(usable_mib=3000)
    first = plan_balloons(AUTO, [g], host(SHORT), None)  # an agent just restarted, host short
    assert first.targets == ()
    assert "first sample: its trend is not known yet" in first.decisions[0].reason
    later = vm(t=110, usable_mib=3000)
    assert target_of(plan_balloons(AUTO, [later], host(SHORT, t=110), first.state), later) \
        == 4096 * MIB - STEP_4G


def test_reclaim_goes_on_until_the_node_is_back_in_clear_once_started() -> None:
    g = vm(usable_mib=3000)
    started = plan_balloons(AUTO, [g], host(15), None)
    assert started.state.ladder is not None and started.state.ladder.state is State.SOFT
    above_low = vm(t=110, current_mib=3686, usable_mib=2590)
    # 22% is above the 20% low mark but not above Soft's exit (20% + 25% of it = 25%).
    plan = plan_balloons(AUTO, [above_low], host(22, t=110), started.state)
    assert "ladder Soft, MemAvailable 3604 MiB < 4096 MiB (back to Clear)" \
        in plan.targets[0].reason
    assert not plan_balloons(AUTO, [above_low], host(22, t=110), None).targets  # fresh: Clear
    done = plan_balloons(AUTO, [above_low], host(26, t=110), started.state)
    assert not done.targets
    assert done.state.ladder is not None and done.state.ladder.state is State.CLEAR


def test_in_hard_every_guest_not_under_pressure_gives_larger_steps_to_its_floor() -> None:
    idle = vm("idle", usable_mib=3000)
    new = vm("new", usable_mib=3000, uuid="uuid-new")  # first sample: no trend known yet
    tight = vm("tight", current_mib=3000, usable_mib=700)  # usable not well above the margin
    known = seen(AUTO, [idle, tight])
    plan = plan_balloons(AUTO, [idle, new, tight], host(HARD), known)
    assert 4096 * MIB - (target_of(plan, idle) or 0) == 2 * STEP_4G  # two steps at once
    assert 4096 * MIB - (target_of(plan, new) or 0) == 2 * STEP_4G
    # tight: floor 2300 used + 300 margin = 2600 MiB; gives what is above it, no more
    assert target_of(plan, tight) == decision_of(plan, tight).floor_kib
    assert "ladder Hard" in decision_of(plan, idle).reason
    assert all(t.to_kib >= (decision_of(plan, g).floor_kib or 0)
               for t, g in zip(plan.targets, (idle, new, tight), strict=False))


def test_reclaim_stops_at_the_floor() -> None:
    g = vm(current_mib=1100, max_mib=4096, usable_mib=1000)  # floor 1024 (25%): 76 to give
    plan = plan_balloons(AUTO, [g], host(SHORT), seen(AUTO, [g]))
    assert target_of(plan, g) == 1024 * MIB


def test_a_guest_at_its_floor_or_without_room_above_its_margin_gives_nothing() -> None:
    at_floor = vm("f", current_mib=1024, usable_mib=900)
    tight = vm("t", current_mib=3000, usable_mib=320)  # margin 300: not well above it
    plan = plan_balloons(AUTO, [at_floor, tight], host(SHORT), seen(AUTO, [at_floor, tight]))
    assert plan.targets == ()
    assert "at its floor 1024 MiB (25% of max)" in decision_of(plan, at_floor).reason
    assert "not well above its margin" in decision_of(plan, tight).reason


def test_a_recently_pressured_guest_is_not_shrunk() -> None:
    pressured = plan_balloons(AUTO, [vm(t=0, current_mib=2048, usable_mib=100)],
                              host(MID), None)
    grown = pressured.targets[0].to_kib // MIB  # where the planner grew it
    recovered = vm(t=10, current_mib=grown, usable_mib=2000)
    plan = plan_balloons(AUTO, [recovered], host(SHORT, t=10), pressured.state)
    assert plan.targets == ()
    assert "under pressure recently" in plan.decisions[0].reason
    later = vm(t=40, current_mib=grown, usable_mib=2000)  # 3 x 10 s later
    assert plan_balloons(AUTO, [later], host(SHORT), plan.state).targets


def test_growth_for_pressured_guests_is_taken_from_idle_ones() -> None:
    idle = vm("idle", usable_mib=3500)
    hungry = vm("hungry", current_mib=2048, usable_mib=0)
    obs = host(total_gib=16, available_percent=25)  # in the band, until hungry grows
    plan = plan_balloons(AUTO, [idle, hungry], obs, None)
    assert (target_of(plan, hungry) or 0) > 2048 * MIB
    assert (target_of(plan, idle) or 0) < 4096 * MIB
    assert "after growing pressured guests" in decision_of(plan, idle).reason


def reporting(g: GuestObservation) -> GuestObservation:
    return replace(g, free_page_reporting=True)


def test_before_critical_a_guest_reporting_its_free_pages_gives_only_beyond_them() -> None:
    """Its free memory is back on the host already: a balloon over it gains nothing and takes
    the guest's headroom. Measured: a guest freeing 350 MiB gave the host 328 MiB back without
    a balloon; inflating it by 312 MiB more then gained 20 MiB (docs/ladder.md)."""
    all_free = reporting(vm("free", usable_mib=3000, unused_mib=2900))
    cached = reporting(vm("cache", usable_mib=3000, unused_mib=100))
    plain = vm("plain", usable_mib=3000, unused_mib=2900)
    for level in (SHORT, HARD):
        plan = plan_balloons(AUTO, [all_free, cached, plain], host(level),
                             seen(AUTO, [all_free, cached, plain]))
        assert target_of(plan, all_free) is None
        assert "reports its free pages: its 2900 MiB free are back on the host" in \
            decision_of(plan, all_free).reason
        assert target_of(plan, plain) is not None  # no reporting: its free memory is the gain
        given = target_of(plan, cached)
        assert given is not None and given < cached.current_kib
        assert "of it gained: the rest is free memory the host has back" in \
            decision_of(plan, cached).reason


def test_in_critical_a_guest_reporting_its_free_pages_gives_like_any_other() -> None:
    all_free = reporting(vm("free", usable_mib=3000, unused_mib=2900))
    guests = [all_free]
    plan = plan_balloons(AUTO, guests, host(available_kib=64 * MIB), seen(AUTO, guests))
    assert decision_of(plan, all_free).reason.startswith("ladder Critical")
    given = target_of(plan, all_free)
    assert given is not None and given < all_free.current_kib


# ------------------------------------------------------------------------------------------------
# Auto: host with plenty, and in between


def test_with_plenty_guests_grow_back_most_used_first_within_the_budget() -> None:
    busy = vm("busy", current_mib=2048, usable_mib=300)
    light = vm("light", current_mib=3000, usable_mib=2000)
    plenty = plan_balloons(AUTO, [busy, light], host(60), None)
    assert target_of(plenty, busy) == 2048 * MIB + STEP_4G
    assert target_of(plenty, light) == 3000 * MIB + STEP_4G
    assert "ladder Plenty, MemAvailable 9830 MiB > 6554 MiB: grown by 410 MiB" \
        in plenty.targets[0].reason
    budget = host(total_gib=16, available_kib=int(16 * GIB * 0.41))  # 1% above the mark
    plan = plan_balloons(AUTO, [light, busy], budget, None)
    assert [t.domain for t in plan.targets] == [busy.domain]
    assert (target_of(plan, busy) or 0) - 2048 * MIB <= 16 * GIB // 100 + 1
    assert "nothing left to give" in decision_of(plan, light).reason


def test_in_the_band_guests_hold_but_pressured_ones_still_grow() -> None:
    idle, hungry = vm("idle", usable_mib=3500), vm("hungry", current_mib=2048, usable_mib=0)
    plan = plan_balloons(AUTO, [idle, hungry], host(35), None)
    assert [t.domain for t in plan.targets] == [hungry.domain]
    assert "ladder Clear, MemAvailable 5734 MiB (5120 MiB after growing pressured guests): " \
        "hold" in decision_of(plan, idle).reason


def test_unknown_host_memory_moves_only_pressured_guests_and_floors() -> None:
    obs = Observation(time=0.0)
    plan = plan_balloons(AUTO, [vm("idle", usable_mib=3500),
                                vm("hungry", current_mib=2048, usable_mib=0)], obs, None)
    assert [t.domain for t in plan.targets] == ["default_hungry"]


def test_tiny_moves_are_not_made() -> None:
    g = vm(current_mib=4096 - 20, usable_mib=3000)  # 20 MiB below max, threshold 41 MiB
    plan = plan_balloons(AUTO, [g], host(60), None)
    assert plan.targets == ()


# ------------------------------------------------------------------------------------------------
# State and release


def test_state_keeps_skipped_guests_and_forgets_vanished_or_unselected_ones() -> None:
    a, b = vm("a"), vm("b")
    first = plan_balloons(AUTO, [a, b], host(MID), None)
    second = plan_balloons(AUTO, [replace(a, problem="paused")], host(MID), first.state)
    assert set(second.state.guests) == {a.key}
    assert second.state.guests[a.key] == first.state.guests[a.key]
    spec = balloon(vmSelector={"namespaces": ["other"]})
    assert plan_balloons(spec, [a], host(MID), first.state).state.guests == {}


def test_release_restores_every_balloon_to_its_maximum() -> None:
    shrunk, full = vm("s", current_mib=1024), vm("f")
    none = vm("n", current_mib=1024, has_balloon=False)
    targets = release_targets([shrunk, full, none], restore_on_release=True)
    # "full" too: its balloon may still be on its way down to the last target set.
    assert [(t.domain, t.to_kib) for t in targets] == [(shrunk.domain, 4096 * MIB),
                                                       (full.domain, 4096 * MIB)]
    assert release_targets([shrunk], restore_on_release=False) == ()
    # A guest migrating is given back once its migration is over (it stays owed till then).
    moving = replace(shrunk, migration="libvirt outgoing migration in progress")
    assert release_targets([moving], restore_on_release=True) == ()


def test_the_lever_obeys_the_nodes_ladder_not_its_own_reading_of_memory() -> None:
    """Memory PSI puts the node in Hard while MemAvailable is plentiful: the balloon lever
    takes the state it is given (every guest not under pressure gives, two steps each,
    "held by memory pressure" since MemAvailable alone would need nothing)."""
    from overcommit.api.policy import PolicySpec
    from overcommit.planning import ladder as node_ladder
    from overcommit.planning.levers.balloon import BalloonLever
    from overcommit.planning.levers.base import LeverInput

    g = vm(usable_mib=3000)
    obs = host(60)
    psi = replace(obs, readings={**obs.readings, "psi": SourceReading(
        "psi", True, {}, {"some_avg10": 3000, "full_avg10": 600})})
    spec = PolicySpec(balloon=AUTO)
    judged = node_ladder.step(None, psi, spec)
    assert judged.state is State.HARD
    earlier = seen(AUTO, [g])
    plan = BalloonLever().plan(LeverInput(spec, obs, earlier, guests=[g], ladder=judged))
    assert [(t.domain, t.to_kib) for t in plan.targets] == [(g.domain, 4096 * MIB - 2 * STEP_4G)]
    assert "ladder Hard, MemAvailable 9830 MiB, held by memory pressure" in plan.targets[0].reason
    # Without the node's ladder (a bare preview) the lever judges one afresh from what it sees.
    calm = BalloonLever().plan(LeverInput(spec, obs, earlier, guests=[g]))
    assert calm.targets == ()
