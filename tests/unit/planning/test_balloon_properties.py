"""Properties of the balloon planner over random valid policies, guests, hosts and histories.

Each example runs 1-3 cycles of ``plan_balloons`` on the same guests (counters moving on,
samples sometimes repeated, guests sometimes rebooted) and checks every cycle's plan:

1. no target is below its guest's floor or above its maximum;
2. in Auto, a balloon moves at most ``maxStepPercent`` of its maximum per cycle (down:
   ``HARD_STEP_FACTOR`` times that while the ladder is in Hard or Critical), except up: to the
   guest's floor, or for a pressured guest to at most ``current + margin deficit +
   step x 2^min(streak, 4)`` (``streak``: the cycles in a row it was pressured before);
3. guests that cannot be managed (a problem, no balloon, no statistics, stale statistics, a
   balloon size of 0 or above the maximum) never get a target;
4. guests the selector leaves out never get a target;
5. a pressured guest (at least: usable below its margin, or one that took pages back from its
   balloon since the last decision) is never shrunk.
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from overcommit.api.model import PolicyError, policy_from_object
from overcommit.api.policy import BalloonAuto, BalloonFloor, BalloonMode, BalloonSpec
from overcommit.api.schema import quantity_bytes
from overcommit.planning.balloon import (
    HARD_STEP_FACTOR,
    MAX_HEADROOM_DOUBLINGS,
    SHARES_ANNOTATION,
    STALE_PERIODS,
    BalloonPlan,
    BalloonState,
    guest_floor,
    plan_balloons,
    policy_minimum,
    taken_back_kib,
)
from overcommit.planning.observation import Observation
from overcommit.virt.model import GuestDecision, GuestObservation
from testkit.cases import policy_document
from tests.unit.planning.strategies import SCHEMA, from_schema
from tests.unit.planning.test_balloon import MIB, host

NAMESPACES = ["default", "prod"]
PATTERNS = ["*", "default_*", "prod_vm?", "*1", "[a-p]*"]
# Built once: building strategies from the schema is most of the cost of an example.
SECTIONS = from_schema(SCHEMA["properties"]["balloon"])
LABELS = from_schema({"type": "object"})
STATIC = st.one_of(st.builds(lambda p: {"targetPercent": p}, st.integers(1, 100)),
                   st.builds(lambda n: {"target": f"{n}Mi"}, st.integers(1, 20000)))
SHARES = st.sampled_from([{}, *({SHARES_ANNOTATION: s} for s in ("1", "500", "x", "0"))])
BROKEN_STATS = st.sampled_from([{}, {"last_update": 0}, {"usable": 1}])
PROBLEMS = st.sampled_from([None] * 9 + ["domain is paused"])
AGES = st.sampled_from([None, 0.0, 5.0, 25.0, 29.9, 31.0, 95.0, 10_000.0])


# ------------------------------------------------------------------------------------------------
# Strategies


@st.composite
def balloon_specs(draw: st.DrawFn) -> BalloonSpec:
    """A balloon section the API server accepts, drawn from the CRD schema."""
    section = draw(SECTIONS)
    section["mode"] = draw(st.sampled_from(["Static", "Auto", "Auto"]))
    _make_consistent(section, draw)
    try:
        policy = policy_from_object(policy_document("p", {"balloon": copy.deepcopy(section)}))
    except PolicyError:
        assume(False)
        raise
    assert policy.spec.balloon is not None
    return policy.spec.balloon


def _make_consistent(section: dict[str, Any], draw: st.DrawFn) -> None:
    """Steer random drafts toward the cross-field rules, and toward selectors that match."""
    mode = section["mode"]
    if mode == "Static":
        section.pop("auto", None)
        section["static"] = draw(STATIC)
        floor = section.get("floor", {})
        if "targetPercent" in section["static"] and "minPercent" in floor:
            section["static"]["targetPercent"] = max(section["static"]["targetPercent"],
                                                     floor["minPercent"])
        if "target" in section["static"]:
            floor.pop("min", None)
    else:
        section.pop("static", None)
        auto = section.get("auto", {})
        low, high = auto.get("hostAvailableLowPercent", 20), auto.get(
            "hostAvailableHighPercent", 40)
        auto.update(hostAvailableLowPercent=min(low, high - 1) if high > 1 else 1,
                    hostAvailableHighPercent=max(high, 2))
    selector = section.get("vmSelector")
    if isinstance(selector, dict) and draw(st.booleans()):
        del section["vmSelector"]  # a selector that matches little would leave little to test
    elif isinstance(selector, dict):
        for name in ("namespaces", "domainNamePattern"):
            selector.pop(name, None)
        if draw(st.booleans()):
            selector["namespaces"] = draw(st.lists(st.sampled_from(NAMESPACES), unique=True))
        if draw(st.booleans()):
            selector["domainNamePattern"] = draw(st.sampled_from(PATTERNS))
        for req in selector.get("matchExpressions", []):
            if req["operator"] in ("In", "NotIn"):
                req["values"] = req.get("values") or ["x"]
            else:
                req.pop("values", None)


@st.composite
def identities(draw: st.DrawFn, index: int) -> dict[str, Any]:
    """What stays the same about a guest across cycles."""
    ns = draw(st.sampled_from([*NAMESPACES, None]))
    max_mib = draw(st.integers(64, 16384))
    return {
        "endpoint": "qemu:///system", "domain": f"{ns}_vm{index}" if ns else f"vm{index}",
        "max_kib": max_mib * MIB, "has_balloon": draw(st.sampled_from([True] * 9 + [False])),
        "vmi_namespace": ns, "vmi_name": f"vm{index}" if ns else None,
        "labels": draw(LABELS) if ns else {},
        "annotations": draw(SHARES),
        "request_kib": draw(st.none() | st.integers(1, 2 * max_mib).map(lambda m: m * MIB)),
        "free_page_reporting": draw(st.booleans()),
    }


@st.composite
def observations(draw: st.DrawFn, ident: dict[str, Any], t: float,
                 before: GuestObservation | None) -> GuestObservation:
    """One cycle's view of a guest; counters move on from ``before`` (or restart)."""
    max_kib = ident["max_kib"]
    current = draw(st.integers(max_kib // 2, max_kib) | st.integers(1, max_kib)
                   | st.integers(0, max_kib + MIB))
    reboot = before is None or draw(st.integers(0, 9)) == 0
    base = {} if reboot or before is None else before.stats
    repeat_sample = before is not None and not reboot and draw(st.integers(0, 4)) == 0
    # Mostly a comfortable guest; sometimes a tight one; now and then a sample above current.
    usable = draw(st.integers(current // 4, current) | st.integers(0, current + 64 * MIB))
    stats: dict[str, int] = {
        "usable": usable,
        "available": current, "unused": draw(st.integers(0, current)),
        "major_fault": base.get("major_fault", 0) + draw(st.integers(0, 5000)),
        "swap_in": base.get("swap_in", 0) + draw(st.integers(0, 20000)),
        "last_update": base.get("last_update", 1000) if repeat_sample else int(t) + 1000,
    }
    if draw(st.integers(0, 9)) == 0:
        stats = draw(BROKEN_STATS)
    uuid = "u0" if before is None else before.uuid
    return GuestObservation(
        **ident, uuid=f"{uuid}r" if reboot and before is not None else uuid, time=t,
        current_kib=current, stats=stats,
        problem=draw(PROBLEMS), stats_age_s=draw(AGES))


@st.composite
def histories(draw: st.DrawFn) -> tuple[BalloonSpec, list[tuple[list[GuestObservation],
                                                                  Observation]]]:
    spec = draw(balloon_specs())
    idents = [draw(identities(i)) for i in range(draw(st.integers(1, 5)))]
    cycles: list[tuple[list[GuestObservation], Observation]] = []
    previous: list[GuestObservation | None] = [None] * len(idents)
    for n in range(draw(st.integers(1, 3))):
        t = 10.0 * n + draw(st.floats(0, 5))
        guests = [draw(observations(ident, t, prev)) for ident, prev in zip(idents, previous,
                                                                               strict=True)]
        total_gib = draw(st.sampled_from([1, 4, 16, 256]))
        obs = host(draw(st.floats(0, 100)), total_gib=total_gib, t=t) if draw(
            st.integers(0, 9)) else Observation(time=t)
        cycles.append((guests, obs))
        previous = list(guests)
    return spec, cycles


# ------------------------------------------------------------------------------------------------
# The properties


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.filter_too_much])
@given(histories())
def test_balloon_plans_keep_their_promises(history: tuple[BalloonSpec, list[Any]]) -> None:
    spec, cycles = history
    prev: BalloonState | None = None
    for guests, obs in cycles:
        plan = plan_balloons(spec, guests, obs, prev)
        _check(spec, guests, plan, prev)
        prev = plan.state


def _check(spec: BalloonSpec, guests: list[GuestObservation], plan: BalloonPlan,
           prev: BalloonState | None) -> None:
    assert [d.guest for d in plan.decisions] == guests
    decisions = {d.guest.key: d for d in plan.decisions}
    moved = {t.domain for t in plan.targets}
    for guest in guests:
        decision = decisions[guest.key]
        if _unmanageable(spec, guest) or _unselected(spec, guest):  # (3) and (4)
            assert guest.domain not in moved
            assert decision.target_kib is None
        if decision.usable_kib is not None and decision.usable_kib < _margin(spec, guest):
            assert decision.pressured
        memory = prev.guests.get(guest.key) if prev is not None else None
        if decision.usable_kib is not None and memory is not None and taken_back_kib(
                guest, memory, decision.usable_kib, _margin(spec, guest)):
            assert decision.pressured
            if spec.mode is BalloonMode.AUTO:  # Static's reasons name its target instead
                assert "back from its balloon" in decision.reason \
                    or "above the size asked" in decision.reason
    for target in plan.targets:
        decision = next(d for d in plan.decisions if d.guest.domain == target.domain)
        guest = decision.guest
        assert target.from_kib == guest.current_kib != target.to_kib
        assert decision.target_kib == target.to_kib
        _check_floor(spec, decision, target.to_kib)  # (1)
        if decision.pressured:  # (5)
            assert target.to_kib >= target.from_kib
        if spec.mode is BalloonMode.AUTO:
            _check_step(spec, decision, target.to_kib, prev)  # (2)


def _unmanageable(spec: BalloonSpec, guest: GuestObservation) -> bool:
    age = guest.stats_age_s
    return bool(guest.problem or not guest.has_balloon or "usable" not in guest.stats
                or "available" not in guest.stats or not 0 < guest.current_kib <= guest.max_kib
                or (age is not None and age > STALE_PERIODS * spec.stats_period_seconds))


def _unselected(spec: BalloonSpec, guest: GuestObservation) -> bool:
    sel = spec.vm_selector
    if sel is None:
        return False
    wants_vmi = bool(sel.namespaces or sel.match_labels or sel.match_expressions)
    return bool((sel.domain_name_pattern
                 and not fnmatch.fnmatchcase(guest.domain, sel.domain_name_pattern))
                or (wants_vmi and guest.vmi_namespace is None)
                or (sel.namespaces and guest.vmi_namespace not in sel.namespaces)
                or any(guest.labels.get(k) != v for k, v in (sel.match_labels or {}).items()))


def _margin(spec: BalloonSpec, guest: GuestObservation) -> int:
    percent = (spec.floor or BalloonFloor()).guest_free_margin_percent
    return -(-guest.current_kib * percent // 100)


def _check_floor(spec: BalloonSpec, decision: GuestDecision, to_kib: int) -> None:
    guest, floor = decision.guest, spec.floor or BalloonFloor()
    assert decision.usable_kib is not None and 0 <= decision.usable_kib <= guest.current_kib
    expected = guest_floor(floor, guest, decision.usable_kib, decision.use_growth_kib)[0]
    static_terms = max(policy_minimum(floor, guest.max_kib)[0],
                       min(guest.request_kib or 0, guest.max_kib))
    assert decision.floor_kib == expected >= static_terms
    assert expected <= to_kib <= guest.max_kib


def _check_step(spec: BalloonSpec, decision: GuestDecision, to_kib: int,
                prev: BalloonState | None) -> None:
    guest, auto = decision.guest, spec.auto or BalloonAuto()
    at_least = quantity_bytes(auto.min_step) // 1024
    step = max(1, min(guest.max_kib, max(guest.max_kib * auto.max_step_percent // 100, at_least)))
    moved = to_kib - guest.current_kib
    if abs(moved) <= step:
        return
    hard = "ladder Hard" in decision.reason or "ladder Critical" in decision.reason
    if moved < 0 and hard:
        assert -moved <= HARD_STEP_FACTOR * step, "Hard: at most HARD_STEP_FACTOR steps down"
        return
    assert moved > 0, "only growth may exceed a step (out of Hard)"
    if to_kib == decision.floor_kib:
        return
    memory = prev.guests.get(guest.key) if prev is not None else None
    streak = memory.pressure_streak if memory is not None and memory.uuid == guest.uuid else 0
    assert decision.usable_kib is not None
    projected = decision.usable_kib - decision.use_growth_kib
    deficit = max(0, _margin(spec, guest) - projected)
    assert decision.pressured
    assert moved <= deficit + (step << min(streak, MAX_HEADROOM_DOUBLINGS))
