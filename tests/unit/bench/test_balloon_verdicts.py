"""bench.balloon's pure parts: verdicts (ties are TIE), medians and spreads, the bursty demand,
and floor violations judged by each strategy's own floor."""

from __future__ import annotations

from typing import Any

import pytest

from bench.balloon import (
    QUICK,
    STOP,
    Ramp,
    Reclaim,
    Relieve,
    Trial,
    below_floor,
    compare,
    floor_kib,
    policy_spec,
    summarise,
    tally,
    verdict,
    verdict_lines,
)
from overcommit.virt.model import GuestObservation

MIB = 1024


@pytest.mark.parametrize(("ours", "theirs", "higher", "word"), [
    (192.0, 192.0, True, "TIE"),
    (193.0, 192.0, True, "PASS"),
    (191.0, 192.0, True, "MISS"),
    (0, 0, False, "TIE"),
    (1, 2, False, "PASS"),
    (3, 2, False, "MISS"),
    (None, None, False, "TIE"),  # neither relieved within the cap
    (5, None, False, "PASS"),  # relieved against never relieved
    (None, 5, False, "MISS"),
])
def test_verdict_is_three_valued(ours: float | None, theirs: float | None, higher: bool,
                                 word: str) -> None:
    assert verdict(ours, theirs, higher) == word


def reclaim(per_cycle: float, floors: int = 0, own: int = 0, ooms: int = 0) -> Reclaim:
    return Reclaim([per_cycle, per_cycle], floors, ooms, own)


def relieve(cycles: int | None, pressured: int = 0, ooms: int = 0) -> Relieve:
    return Relieve(cycles, pressured, 300, ooms, 0, 200.0, 0.0)


def trials(per_cycle: list[float], cycles: list[int | None],
           pressured: list[int] | None = None) -> list[Trial]:
    pressured = pressured or [0] * len(cycles)
    return [Trial({"reclaim": reclaim(p), "relieve": relieve(c), "bursty": relieve(c, b)},
                  {"reclaim": 1.0, "relieve": 1.0, "bursty": 1.0}, [])
            for p, c, b in zip(per_cycle, cycles, pressured, strict=True)]


def test_summary_is_the_median_with_its_spread() -> None:
    summary = summarise(trials([100.0, 300.0, 200.0], [1, None, 2]))
    assert summary["repeats"] == 3
    assert summary["reclaim"]["reclaimed_mib_per_cycle"] == 200.0
    assert summary["reclaim"]["reclaimed_mib_per_cycle_range"] == [100.0, 300.0]
    # Not relieved counts as infinitely slow: the median of 1, 2, inf is 2.
    assert summary["relieve"]["cycles_to_relieve"] == 2
    assert summary["relieve"]["cycles_to_relieve_runs"] == [1, None, 2]


def test_ties_are_reported_as_ties_not_passes() -> None:
    results: dict[str, Any] = {
        "ours": summarise(trials([192.0] * 3, [0, 0, 0], [1, 1, 1])),
        "proxmox": summarise(trials([192.0] * 3, [0, 0, 0], [2, 2, 2])),
        "mom": summarise(trials([67.8] * 3, [1, 1, 1], [0, 0, 0])),
    }
    cmp = compare(results)
    assert cmp["proxmox"]["reclaim/reclaimed_mib_per_cycle"] == "TIE"
    assert cmp["proxmox"]["relieve/cycles_to_relieve"] == "TIE"
    assert cmp["proxmox"]["bursty/pressured_cycles"] == "PASS"
    assert cmp["mom"]["reclaim/reclaimed_mib_per_cycle"] == "PASS"
    assert cmp["mom"]["bursty/pressured_cycles"] == "MISS"  # losses stay in the verdicts
    assert cmp["safety"] == "PASS" and "note" not in cmp
    counts = tally(cmp)
    assert counts["TIE"] >= 2 and counts["MISS"] == 1
    lines = verdict_lines(results, cmp, cap=10)
    assert any(line.startswith("TIE reclaim") for line in lines)
    assert any(line.startswith("MISS bursty (held out)") for line in lines)


def test_fewer_than_three_runs_is_flagged() -> None:
    results = {"ours": summarise(trials([1.0], [0])), "mom": summarise(trials([1.0], [0]))}
    assert "at least 3" in compare(results)["note"]


def test_safety_is_judged_on_the_worst_run() -> None:
    runs = trials([1.0] * 3, [0] * 3)
    runs[1] = Trial({"reclaim": reclaim(1.0, floors=1), "relieve": relieve(0)},
                    runs[1].seconds, [])
    runs = [Trial({k: v for k, v in t.phases.items() if k != "bursty"}, t.seconds, [])
            for t in runs]
    assert compare({"ours": summarise(runs)})["safety"] == "MISS"


def guest(current_mib: int, usable_mib: int, max_mib: int = 1024) -> GuestObservation:
    return GuestObservation(endpoint="qemu:///system", domain="g", uuid="u", time=0.0,
                            max_kib=max_mib * MIB, current_kib=current_mib * MIB,
                            has_balloon=True,
                            stats={"usable": usable_mib * MIB, "unused": usable_mib * MIB})


def test_each_strategy_is_judged_by_its_own_floor_as_well() -> None:
    spec = policy_spec(QUICK, "g*")
    busy = guest(400, 10)  # uses 390 MiB: our floor is above 400, the policy minimum is 256
    assert floor_kib(spec, "ours", busy) > 400 * MIB
    assert floor_kib(spec, "mom", busy) == floor_kib(spec, "proxmox", busy) == 256 * MIB
    assert below_floor(spec, {"g": busy})  # below ours
    assert below_floor(spec, {"g": busy}, "mom") == []  # not below MOM's own guarantee
    assert below_floor(spec, {"g": guest(200, 150)}, "proxmox")  # below its 25 % minimum


def test_bursty_demand_jumps_drops_and_ends_past_what_the_guest_had() -> None:
    chunks = Ramp.bursty(400 * MIB, 96).chunks
    assert chunks[0] == 200 and chunks[3] == STOP
    assert sum(c for c in chunks[4:] if c > 0) == 400 + 96
    assert Ramp.for_scenario("relieve", 400 * MIB, 96) == Ramp.past(400 * MIB, 96).chunks
