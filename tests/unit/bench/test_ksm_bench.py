"""The KSM benchmark's pure parts: saved memory integrated over the window, the churn
schedule and page contents, the verdicts against every baseline, the medians and spreads, and
the baselines reading their memory view at every cycle."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench.baselines import KsmRate, KsmtunedDriver, MemoryView, SysfsKsm
from bench.ksm_churn import churn_pages, page_content, per_tick
from bench.ksm_efficiency import Trial, figures, summarise
from bench.ksm_metrics import FIGURES, Figure, compare_all, integrate, spread, verdict
from bench.ksm_pressure import RESERVE_FOR_OTHERS, target_bytes
from bench.strategies import STRATEGY_NAMES, static_name

GIB = 1 << 30

# -- integration over the window ------------------------------------------------------------


def test_integrate_constant_is_value_times_window() -> None:
    assert integrate([(0.0, 10.0), (1.0, 10.0)], 5.0) == pytest.approx(50.0)


def test_integrate_ramp_uses_trapezoids_and_holds_the_last_value() -> None:
    # 0 -> 4 over 2 s (area 4), then 4 held to t=5 (area 12)
    assert integrate([(0.0, 0.0), (2.0, 4.0)], 5.0) == pytest.approx(16.0)


def test_integrate_holds_the_first_value_back_to_zero_and_clips_to_the_window() -> None:
    assert integrate([(1.0, 2.0), (3.0, 2.0), (9.0, 100.0)], 4.0) == pytest.approx(8.0)


def test_integrate_nothing_sampled_is_zero() -> None:
    assert integrate([], 10.0) == 0.0
    assert integrate([(0.0, 5.0)], 0.0) == 0.0


def test_faster_merging_saves_more_byte_seconds() -> None:
    fast = [(t * 0.25, min(1.0, t * 0.25 / 2) * GIB) for t in range(81)]
    slow = [(t * 0.25, min(1.0, t * 0.25 / 10) * GIB) for t in range(81)]
    assert integrate(fast, 20.0) > integrate(slow, 20.0)
    assert integrate(fast, 20.0) == pytest.approx((20.0 - 1.0) * GIB, rel=1e-3)


# -- the churn schedule -----------------------------------------------------------------------


def test_per_tick_is_a_share_of_the_pages_at_least_one() -> None:
    assert per_tick(8192, 1.0) == 82
    assert per_tick(10, 1.0) == 1
    assert per_tick(8192, 0.0) == 0


def test_churn_covers_every_page_once_per_round() -> None:
    pages, count = 1024, 64
    seen: list[int] = []
    for tick in range(pages // count):
        chosen = churn_pages(tick, pages, count)
        assert len(chosen) == count
        seen += chosen
    assert sorted(seen) == list(range(pages))
    # ... and starts over, the same for every worker (a pure function of the tick)
    assert churn_pages(pages // count, pages, count) == churn_pages(0, pages, count)


def test_churn_spreads_over_the_area_not_one_region() -> None:
    chosen = churn_pages(0, 65536, 655)
    assert max(chosen) - min(chosen) > 65536 // 2


def test_churn_with_a_page_count_sharing_the_stride_still_covers_everything() -> None:
    pages = 7919 * 2
    seen = [p for tick in range(2) for p in churn_pages(tick, pages, 7919)]
    assert sorted(seen) == list(range(pages))


def test_rewritten_shared_pages_are_new_duplicates_across_workers() -> None:
    a = page_content(3, 5, shared_pages=10, seed=0, unique=b"a" * 16, page_size=4096)
    b = page_content(3, 5, shared_pages=10, seed=1, unique=b"b" * 16, page_size=4096)
    before = page_content(3, None, shared_pages=10, seed=0, unique=b"a" * 16, page_size=4096)
    assert a == b and len(a) == 4096
    assert a != before  # the write broke the old merged page


def test_rewritten_unique_pages_stay_unique() -> None:
    a = page_content(12, 5, shared_pages=10, seed=0, unique=b"a" * 16, page_size=4096)
    b = page_content(12, 5, shared_pages=10, seed=1, unique=b"b" * 16, page_size=4096)
    assert a != b


# -- verdicts ---------------------------------------------------------------------------------

LOWER = Figure("x", higher_is_better=False, rel_tol=0.05, abs_tol=0.5)
HIGHER = Figure("y", higher_is_better=True)


@pytest.mark.parametrize(("ours", "theirs", "figure", "expected"), [
    (1.0, 4.0, LOWER, "PASS"),
    (4.0, 1.0, LOWER, "MISS"),
    (4.0, 4.3, LOWER, "TIE"),  # within 0.5 s
    (100.0, 104.0, LOWER, "TIE"),  # within 5 %
    (100.0, 110.0, LOWER, "PASS"),
    (None, 3.0, LOWER, "MISS"),  # never reached t90
    (3.0, None, LOWER, "PASS"),
    (None, None, LOWER, "TIE"),
    (10.0, 5.0, HIGHER, "PASS"),
    (5.0, 10.0, HIGHER, "MISS"),
    (10.0, 10.2, HIGHER, "TIE"),
])
def test_verdict(ours: float | None, theirs: float | None, figure: Figure,
                 expected: str) -> None:
    assert verdict(ours, theirs, figure) == expected


def _result(t90: float | None, ksmd: float, ctl: float, saved: float) -> dict[str, Any]:
    return {"t90_s": t90, "ksmd_cpu_s": ksmd, "total_cpu_s": ksmd + ctl,
            "saved_byte_seconds": saved, "saved_byte_seconds_per_cpu_s": saved / ksmd}


def test_compare_all_judges_every_baseline_that_ran() -> None:
    results = {
        "kernel-default": _result(60.0, 2.0, 0.0, 10 * GIB),
        "kernel-advisor": {"t90_s": None, "ksmd_cpu_s": None, "not_run": True},
        "ksmtuned": _result(13.0, 4.0, 0.001, 30 * GIB),
        "adaptive": _result(5.0, 3.0, 0.2, 33 * GIB),
    }
    cmp = compare_all(results, "adaptive", STRATEGY_NAMES[:-1])
    assert set(cmp) == {"kernel-default", "ksmtuned", "tally"}
    assert set(cmp["ksmtuned"]) == {f.key for f in FIGURES}
    assert cmp["kernel-default"]["ksmd_cpu_s"]["verdict"] == "MISS"
    assert cmp["kernel-default"]["t90_s"]["verdict"] == "PASS"
    assert cmp["ksmtuned"]["ksmd_cpu_s"]["verdict"] == "PASS"
    assert cmp["ksmtuned"]["saved_byte_seconds"]["verdict"] == "PASS"
    assert cmp["ksmtuned"]["saved_byte_seconds_per_cpu_s"]["ratio"] == pytest.approx(
        (33 / 3) / (30 / 4), abs=1e-3)
    assert sum(cmp["tally"].values()) == 2 * len(FIGURES)


def test_compare_all_without_ours_or_baselines_is_skipped() -> None:
    assert "skipped" in compare_all({"ksmtuned": _result(1, 1, 0, 1)}, "adaptive", ["ksmtuned"])
    assert "skipped" in compare_all({"adaptive": _result(1, 1, 0, 1)}, "adaptive", ["ksmtuned"])


# -- medians, spreads, disturbed trials -------------------------------------------------------


def _trial(t90: float | None, cpu: float, saved: float,
           disturbed: str | None = None) -> Trial:
    return Trial(t90, None if t90 is None else cpu / 2, None, cpu, 0.01, saved, 100, 100,
                 20.0, disturbed=disturbed)


def test_headline_is_saved_byte_seconds_per_ksmd_cpu_second() -> None:
    row = figures(_trial(1.0, 2.0, 8 * GIB))
    assert row["saved_byte_seconds_per_cpu_s"] == pytest.approx(4 * GIB)
    assert row["total_cpu_s"] == pytest.approx(2.01)
    assert row["saved_byte_seconds_per_total_cpu_s"] == pytest.approx(8 * GIB / 2.01)


def test_summarise_medians_spreads_and_drops_disturbed_trials() -> None:
    trials = [_trial(1.0, 1.0, 10.0), _trial(3.0, 3.0, 30.0), _trial(2.0, 2.0, 20.0),
              _trial(0.1, 99.0, 1.0, disturbed="someone else")]
    s = summarise(trials)
    assert s["t90_s"] == 2.0 and s["ksmd_cpu_s"] == 2.0 and s["n"] == 3
    assert s["spread"]["ksmd_cpu_s"] == [1.0, 3.0]
    assert s["disturbed"] == ["someone else"] and "disturbed_only" not in s
    assert len(s["runs"]) == 4


def test_summarise_counts_a_missed_t90_as_infinitely_slow() -> None:
    s = summarise([_trial(None, 1.0, 1.0), _trial(None, 1.0, 1.0), _trial(2.0, 1.0, 1.0)])
    assert s["t90_s"] is None
    assert s["spread"]["t90_s"] == [2.0, None]


def test_spread() -> None:
    assert spread([3.0, 1.0, 2.0]) == [1.0, 3.0]
    assert spread([]) is None
    assert spread([None]) == [None, None]


# -- pressure and baselines -------------------------------------------------------------------


def test_real_pressure_target_keeps_the_reserve_for_others() -> None:
    assert target_bytes(24 * GIB, 10.0) == RESERVE_FOR_OTHERS
    assert target_bytes(100 * GIB, 10.0) == 10 * GIB


def test_ksmtuned_reads_its_memory_view_at_every_cycle(tmp_path: Any) -> None:
    for name, value in (("run", "0"), ("pages_to_scan", "100"), ("sleep_millisecs", "20")):
        (tmp_path / name).write_text(value)
    total = 16 * 1024 * 1024
    views = iter([
        MemoryView(total, total // 10, total // 10, total - total // 10),  # pressure
        MemoryView(total, total // 2, total // 2, total // 4),  # merging freed it all
    ])
    driver = KsmtunedDriver(lambda: next(views), SysfsKsm(tmp_path))
    assert driver.cycle() == KsmRate(True, 300, 10)
    assert driver.cycle() == KsmRate(running=False)
    assert (tmp_path / "run").read_text() == "0"


def test_static_names_round_trip_through_the_factory() -> None:
    from bench.strategies import factory

    make = factory(static_name(300, 20), lambda: MemoryView(1, 1, 1, 0), None)
    strategy = make()
    assert strategy.name == "static-300p-20ms" and math.isinf(strategy.interval_s)


def test_frontier_grid_full_and_reduced() -> None:
    from bench.ksm_efficiency import FRONTIER_PAGES, FRONTIER_SLEEP_MS, frontier_names

    assert len(frontier_names()) == len(FRONTIER_PAGES) * len(FRONTIER_SLEEP_MS)
    assert frontier_names("300x20, 1000X50") == ["static-300p-20ms", "static-1000p-50ms"]


def test_guard_leaves_pages_to_scan_to_the_kernels_advisor(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import ksm_host
    from bench.ksm_efficiency import Guard

    rate = ["1", "500", "20"]
    monkeypatch.setattr(ksm_host, "rate_settings", lambda: tuple(rate))
    monkeypatch.setattr(ksm_host, "foreign_ksm_users", lambda own: [])
    advisor, other = Guard(set(), self_tuning=True), Guard(set(), self_tuning=False)
    advisor.after_act()
    other.after_act()
    rate[1] = "10"  # the advisor rescaled the rate after a full scan
    assert advisor.check(0, 100) is None
    assert other.check(0, 100) is not None
    rate[2] = "100"  # but sleep_millisecs moving is someone else
    assert advisor.check(0, 100) is not None
    assert Guard(set(), self_tuning=False).check(103, 100) is not None  # more than can share
