"""bench.pressure's pure parts: the shifted ladder, the rig's levels, the scenarios, and what a
trial's record adds up to (medians, ties, the issue's two claims)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.pressure_model import (
    CHUNK,
    FLOOR_MARGIN,
    GIB,
    MIB,
    Record,
    aggregate,
    bench_policy,
    levels,
    levels_for,
    median_cycles,
    must_show,
    node_view,
    scenario,
    versus,
)
from overcommit.planning.ladder import State, thresholds

TOTAL = 24683664 * 1024  # this machine's MemTotal
RESERVE = 4 * GIB
NODE = TOTAL - RESERVE


def _policy() -> Any:
    return bench_policy("oc-bench-balloon-1-*", 1, 2)


def test_node_view_takes_the_reserve_out_of_every_figure() -> None:
    raw = {"MemTotal": 24 * GIB, "MemAvailable": 5 * GIB, "MemFree": 3 * GIB,
           "Buffers": 100 * MIB, "Cached": 2 * GIB, "SwapTotal": 0}  # bytes, as MeminfoSource
    out = node_view(raw, RESERVE)
    assert out["MemTotal"] == 20 * GIB and out["MemAvailable"] == GIB
    # MemFree covers 3 GiB of the 4, Cached the rest: MOM's sum is less the reserve too.
    assert out["MemFree"] == 0 and out["Cached"] == GIB and out["Buffers"] == 100 * MIB
    assert sum(out[k] for k in ("MemFree", "Buffers", "Cached")) == \
        sum(raw[k] for k in ("MemFree", "Buffers", "Cached")) - RESERVE
    assert out["SwapTotal"] == 0
    assert node_view({"MemAvailable": 1000}, RESERVE)["MemAvailable"] == 0  # never negative


def test_bench_policy_names_no_ladder_settings() -> None:
    spec = _policy()
    assert spec.ladder is None and spec.balloon is not None
    th, _ = levels_for(spec, NODE)
    # The defaults for the node's MemTotal, Soft raised by Auto ballooning's 20 % band.
    assert th.below[State.CRITICAL] == th.minimum
    assert th.below[State.SOFT] == NODE * 20 // 100


def test_levels_sit_in_their_bands_and_above_the_floor() -> None:
    th, lv = levels_for(_policy(), NODE)
    below = th.below
    assert below[State.HARD] <= lv.soft < below[State.SOFT]
    assert below[State.CRITICAL] <= lv.hard < below[State.HARD]
    assert FLOOR_MARGIN <= lv.critical < below[State.CRITICAL]


def test_levels_refuse_a_critical_threshold_at_the_floor() -> None:
    th = thresholds(_policy(), NODE)
    with pytest.raises(ValueError, match="too close"):
        levels(th, floor=th.below[State.CRITICAL])


@pytest.mark.parametrize("cycles", [6, 8, 12])
def test_scenarios_reach_critical_and_come_back_as_described(cycles: int) -> None:
    _, lv = levels_for(_policy(), NODE)
    step = scenario("step", cycles, lv, 512)
    assert step.start == "soft" and step.cycles == cycles
    assert sum(e.take for e in step.events) == lv.soft - lv.critical
    assert sum(e.eat_mib for e in step.events) == 204
    burst = scenario("burst", cycles, lv, 512)
    assert sum(e.take for e in burst.events) == 0  # the host comes back
    assert [e.thrash for e in burst.events if e.thrash is not None] == [True, False]
    assert any(e.stop for e in burst.events)
    leak = scenario("leak", cycles, lv, 512)
    takes = [e.take for e in leak.events]
    assert takes[0] == 0 and len({t for t in takes if t}) == 1  # a steady leak ...
    assert takes[-1] == 0 and takes.index(0, 1) == cycles * 3 // 4  # ... then Critical, held
    assert lv.soft - lv.critical - CHUNK < sum(takes) <= lv.soft - lv.critical
    assert sum(e.eat_mib for e in leak.events) <= 256


def test_unknown_or_too_short_scenario() -> None:
    _, lv = levels_for(_policy(), NODE)
    with pytest.raises(ValueError):
        scenario("spike", 8, lv, 512)
    with pytest.raises(ValueError):
        scenario("step", 5, lv, 512)


def _record(states: list[State], relief_at: list[int] | None = None) -> Record:
    r = Record(states=[(10.0 + 2 * i, s) for i, s in enumerate(states)],
               end=10.0 + 2 * len(states), relief_at=relief_at or [])
    return r


def test_seconds_in_state_counts_each_cycle_until_the_next() -> None:
    r = _record([State.SOFT, State.SOFT, State.HARD, State.CRITICAL])
    assert r.seconds_in_state() == {"Plenty": 0.0, "Clear": 0.0, "Soft": 4.0, "Hard": 2.0,
                                    "Critical": 2.0}
    assert r.seconds == 8.0


def test_relief_cycles_from_entering_critical() -> None:
    states = [State.SOFT, State.CRITICAL, State.CRITICAL, State.CRITICAL]
    assert _record(states, [2]).relief_cycles() == 1
    assert _record(states, [2]).relief_late() is False
    assert _record(states).relief_cycles() is None
    assert _record(states).relief_late() is True  # 3 cycles in Critical, nothing asked
    assert _record([State.HARD, State.CRITICAL, State.HARD]).relief_late() is False
    assert _record(states).critical_entries() == 1
    assert _record([State.CRITICAL, State.HARD, State.CRITICAL]).critical_entries() == 2


def _summary(kills: int, relief: int | None = None, seconds_hard: float = 0,
             reclaimed: int = 0, critical: int = 0, late: bool = False) -> dict[str, Any]:
    states = {"Plenty": 0.0, "Clear": 0.0, "Soft": 0.0, "Hard": seconds_hard, "Critical": 0.0}
    return {"guest_oom_kills": kills, "host_oom_kills": 0, "seconds_in_state": states,
            "reclaimed_bytes": reclaimed, "returned_bytes": 0, "taken_back_bytes": 0,
            "host_swap_in_pages_per_s": 0,
            "guest_swap_in_kib_per_s": 0, "guest_major_faults_per_s": 0,
            "relief_requests": 0 if relief is None else 1, "relief_cycles": relief,
            "relief_late": late, "critical_entries": critical,
            "lowest_available_bytes": 5 * GIB, "seconds": 16.0}


def test_aggregate_takes_medians_and_keeps_the_worst_kills() -> None:
    out = aggregate([_summary(0), _summary(0), _summary(3)], "mom")
    assert out["guest_oom_kills"] == 0 and out["guest_oom_kills_worst"] == 3
    assert out["relief_requests"] is None and "relief_cycles" not in out
    assert len(out["runs"]) == 3 and out["n_runs"] == 3
    ours = aggregate([_summary(0, 1, critical=1), _summary(0, critical=0),
                      _summary(0, 1, critical=1)], "ladder")
    assert ours["relief_cycles"] == 1 and ours["relief_cycles_worst"] == 1
    assert aggregate([], "ladder") == {"not_run": True}


def test_median_cycles_counts_no_request_as_never() -> None:
    assert median_cycles([1, None, None]) is None
    assert median_cycles([1, 2, None]) == 2
    assert median_cycles([1, 1, 2]) == 1


def test_versus_reports_ties_as_ties() -> None:
    same = _summary(0, seconds_hard=4, reclaimed=10 * MIB)
    assert set(versus(same, same).values()) == {"tie"}
    better = versus(_summary(0, seconds_hard=2, reclaimed=20 * MIB),
                    _summary(1, seconds_hard=4, reclaimed=10 * MIB))
    assert better == {"guest_oom_kills": "better", "host_oom_kills": "tie",
                      "seconds_hard_or_critical": "better", "reclaimed_bytes": "better"}


def test_must_show_judges_the_worst_runs() -> None:
    def results(ours_kills: int, theirs_kills: int, relief: int | None,
                late: bool = False) -> dict[str, Any]:
        return {"step": {"ladder": aggregate([_summary(ours_kills, relief, critical=1,
                                                       late=late)], "ladder"),
                         "mom": aggregate([_summary(theirs_kills)], "mom"),
                         "proxmox": aggregate([_summary(0)], "proxmox")}}

    ok = must_show(results(0, 2, 1))
    assert ok["no_kills_where_baselines_kill"] and ok["relief_within_2_cycles"]
    assert not must_show(results(1, 2, 1))["no_kills_where_baselines_kill"]
    assert ok["scenarios_where_baselines_kill"] == ["step"] and not ok["notes"]
    vacuous = must_show(results(1, 0, 1))
    assert vacuous["no_kills_where_baselines_kill"]  # vacuous there, and said so
    assert vacuous["scenarios_where_baselines_kill"] == []
    assert any("vacuously" in note for note in vacuous["notes"])
    assert any("where no baseline had one" in note for note in vacuous["notes"])  # not hidden
    assert not must_show(results(0, 0, 3))["relief_within_2_cycles"]
    assert not must_show(results(0, 0, None, late=True))["relief_within_2_cycles"]
