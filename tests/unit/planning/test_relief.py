"""Relief's decisions (pure): when to ask for a live migration, for which guest, and why not;
the pressure taint the node should carry."""

from __future__ import annotations

from dataclasses import replace

import pytest

from overcommit.api.policy import LadderRelief
from overcommit.planning import relief
from overcommit.planning.ladder import Ladder, Reading, State, Thresholds
from overcommit.planning.relief import Candidate, Decision, InFlight, Memory, decide

MIB = 1 << 20
GIB = 1 << 30
NOTHING_IN_FLIGHT = InFlight()
SPEC = LadderRelief()  # the defaults: after 2 cycles, cooldown 300 s, 1 per node, 2 per cluster


def ladder(state: State) -> Ladder:
    th = Thresholds(minimum=GIB, minimum_source="test", below={}, why={},
                    exit_margin_percent=25, psi=None)
    return Ladder(state, 0.0, "test", th, Reading(None, 0))


CRITICAL = ladder(State.CRITICAL)


def guest(name: str, current_gib: float, used_gib: float, *, migratable: bool = True,
          migrating: bool = False, namespace: str = "vms") -> Candidate:
    return Candidate(namespace, name, int(current_gib * GIB), int(used_gib * GIB), migratable,
                     migrating)


def run(states: list[State], candidates: list[Candidate], *, spec: LadderRelief = SPEC,
        flight: InFlight = NOTHING_IN_FLIGHT, start: float = 0.0,
        step: float = 2.0) -> list[Decision]:
    """One decision per cycle, ``step`` seconds apart, memory carried over."""
    memory, out = Memory(), []
    for i, state in enumerate(states):
        d = decide(ladder(state), spec, candidates, flight, memory, start + i * step)
        memory = d.memory
        out.append(d)
    return out


def test_nothing_is_asked_outside_critical() -> None:
    for state in (State.PLENTY, State.CLEAR, State.SOFT, State.HARD):
        d = decide(ladder(state), SPEC, [guest("a", 4, 1)], InFlight(), Memory(5, None), 0.0)
        assert (d.ask, d.status, d.memory.critical_cycles) == (None, "", 0)
    assert decide(None, SPEC, [guest("a", 4, 1)], InFlight(), Memory(), 0.0).ask is None


def test_reclaim_goes_first_then_one_guest_is_asked_for() -> None:
    first, second = run([State.CRITICAL, State.CRITICAL], [guest("a", 4, 1)])
    assert first.ask is None
    assert first.status == "waiting: Critical for 1 of 2 cycles; reclaim goes first"
    assert second.ask is not None and second.ask.key == ("vms", "a")
    assert second.status.startswith("asked to migrate vms/a: frees 4.0Gi for 1.0Gi in use")
    assert second.memory.last_asked_at == 2.0


def test_leaving_critical_starts_the_count_again() -> None:
    decisions = run([State.CRITICAL, State.HARD, State.CRITICAL, State.CRITICAL],
                    [guest("a", 4, 1)])
    assert [d.ask is not None for d in decisions] == [False, False, False, True]


@pytest.mark.parametrize("after", [1, 3])
def test_after_cycles_is_the_policys(after: int) -> None:
    decisions = run([State.CRITICAL] * 4, [guest("a", 4, 1)],
                    spec=replace(SPEC, after_cycles=after))
    assert [d.ask is not None for d in decisions].index(True) == after - 1


def test_the_guest_that_frees_most_for_least_to_copy_goes() -> None:
    big_idle, small_busy = guest("big-idle", 8, 1), guest("small-busy", 2, 1.8)
    busy_giant = guest("busy-giant", 16, 15)
    chosen = run([State.CRITICAL] * 2, [small_busy, busy_giant, big_idle])[-1].ask
    assert chosen is not None and chosen.name == "big-idle"
    # Ties on the ratio go to the larger guest, then by name, so the choice is stable.
    same = [guest("b", 2, 1), guest("a", 4, 2), guest("c", 4, 2)]
    chosen = run([State.CRITICAL] * 2, same)[-1].ask
    assert chosen is not None and chosen.name == "c"


def test_an_almost_unused_guest_still_costs_a_pass() -> None:
    tiny = guest("tiny-idle", 0.25, 0)  # 256 MiB, nothing in use: scored as 64 MiB to copy
    large = guest("large", 8, 1)
    assert tiny.score == 4.0 and large.score == 8.0
    chosen = run([State.CRITICAL] * 2, [tiny, large])[-1].ask
    assert chosen is not None and chosen.name == "large"


def test_guests_that_cannot_move_are_never_asked_for() -> None:
    stuck = [guest("vfio", 8, 1, migratable=False), guest("moving", 8, 1, migrating=True),
             guest("pending", 8, 1)]
    flight = InFlight(node=0, cluster=0, vmis=frozenset({("vms", "pending")}))
    last = run([State.CRITICAL] * 2, stuck, flight=flight)[-1]
    assert last.ask is None
    assert last.status == ("unable: no guest can migrate (vms/vfio is not LiveMigratable; "
                           "vms/moving is migrating; vms/pending has a migration pending)")
    movable = run([State.CRITICAL] * 2, [*stuck, guest("small", 1, 0.5)], flight=flight)[-1]
    assert movable.ask is not None and movable.ask.name == "small"
    nobody = run([State.CRITICAL] * 2, [])[-1]
    assert nobody.status == "unable: no guest can migrate (no KubeVirt guest on this node)"


def test_not_again_within_the_cooldown() -> None:
    decisions = run([State.CRITICAL] * 200, [guest("a", 4, 1)], step=2.0)
    asked_at = [i * 2.0 for i, d in enumerate(decisions) if d.ask is not None]
    assert asked_at == [2.0, 302.0]
    assert decisions[2].status == "waiting: cooldown, 298 s left after the last request"


@pytest.mark.parametrize(("flight", "why"), [
    (InFlight(node=1, cluster=1), "waiting: 1 migration(s) in flight for this node "
                                  "(maxInFlightPerNode 1)"),
    (InFlight(node=0, cluster=2), "waiting: 2 migration(s) in flight in the cluster "
                                  "(maxInFlightPerCluster 2)"),
])
def test_migrations_in_flight_hold_relief_back(flight: InFlight, why: str) -> None:
    last = run([State.CRITICAL] * 2, [guest("a", 4, 1)], flight=flight)[-1]
    assert (last.ask, last.status) == (None, why)
    roomier = replace(SPEC, max_in_flight_per_node=2, max_in_flight_per_cluster=3)
    assert run([State.CRITICAL] * 2, [guest("a", 4, 1)], flight=flight,
               spec=roomier)[-1].ask is not None


def test_relief_can_be_switched_off() -> None:
    last = run([State.CRITICAL] * 3, [guest("a", 4, 1)], spec=replace(SPEC, migrate=False))[-1]
    assert (last.ask, last.status) == (None, "off: ladder.relief.migrate is false")


def test_a_failed_request_is_retried_after_a_pause_not_the_cooldown() -> None:
    candidates = [guest("a", 4, 1)]
    memory = Memory()
    asked = decide(CRITICAL, SPEC, candidates, InFlight(), memory, 0.0)
    asked = decide(CRITICAL, SPEC, candidates, InFlight(), asked.memory, 2.0)
    assert asked.ask is not None
    memory = asked.failed(Memory(1, None), 2.0)
    assert memory == Memory(2, None, 2.0)
    soon = decide(CRITICAL, SPEC, candidates, InFlight(), memory, 10.0)
    assert soon.ask is None and soon.status == ("waiting: the last request failed, asking "
                                                "again in 22 s")
    later = decide(CRITICAL, SPEC, candidates, InFlight(), soon.memory, 33.0)
    assert later.ask is not None


@pytest.mark.parametrize(("state", "taint", "effect"), [
    (State.PLENTY, True, None), (State.SOFT, True, None),
    (State.HARD, True, "PreferNoSchedule"), (State.CRITICAL, True, "NoSchedule"),
    (State.CRITICAL, False, None),  # the default: no taint
])
def test_the_taint_follows_the_ladder(state: State, taint: bool, effect: str | None) -> None:
    assert relief.taint_effect(ladder(state), replace(SPEC, taint=taint)) == effect


def test_only_our_taint_is_ever_changed() -> None:
    theirs = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    ours = {"key": relief.TAINT_KEY, "value": "true", "effect": "PreferNoSchedule"}
    assert relief.with_taint([theirs], "NoSchedule") == [
        theirs, {**ours, "effect": "NoSchedule"}]
    assert relief.with_taint([ours, theirs], "NoSchedule") == [
        theirs, {**ours, "effect": "NoSchedule"}]
    assert relief.with_taint([theirs, ours], None) == [theirs]
    assert relief.with_taint([], None) == []


def test_local_mode_reports_relief_and_does_not_act() -> None:
    assert relief.local_status(ladder(State.HARD)) == ""
    assert relief.local_status(CRITICAL).startswith("unable: local mode: relief is reported, "
                                                    "not acted on")
