"""planning.capacity: sustained savings over a window and the overcommit ratio they support."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overcommit.api.policy import CapacitySpec
from overcommit.planning import capacity as cap

GIB = 1 << 30
MIB = 1 << 20
T0 = 1_800_000_000.0  # a multiple of 60


def reading(at: float, **overrides: object) -> cap.Reading:
    base: dict[str, object] = dict(
        at=at, physical=32 * GIB, available=20 * GIB, reserve=4 * GIB, committed=16 * GIB,
        resident=10 * GIB, merged_now=2 * GIB, merged=2 * GIB, ballooned=GIB, compressed=0,
        pressured=False)
    base.update(overrides)
    return cap.Reading(**base)  # type: ignore[arg-type]


def run(readings: list[cap.Reading], history: cap.History | None = None) -> cap.History:
    for r in readings:
        history = cap.record(history, r)
    assert history is not None
    return history


def steady(minutes: int, step: float = 30.0, **overrides: object) -> list[cap.Reading]:
    return [reading(T0 + i * step, **overrides) for i in range(int(minutes * 60 / step) + 1)]


def test_the_ratio_is_guest_capacity_plus_counted_savings_over_guest_capacity() -> None:
    readings = steady(60)
    c = cap.assess(run(readings), readings[-1], CapacitySpec())
    # non-guest: 32 - 20 in use, less 10 resident, plus 2 merged (counted in every mapping)
    assert c.non_guest == 4 * GIB
    assert c.guest_capacity == 32 * GIB - 4 * GIB - 4 * GIB
    assert c.sustained == {"merged": 2 * GIB, "ballooned": GIB, "compressed": 0}
    assert c.counted == 3 * GIB * 90 // 100  # the 10 % margin
    assert c.supported_percent == (24 * GIB + c.counted) * 100 // (24 * GIB) == 111
    assert c.headroom == 24 * GIB + c.counted - 16 * GIB
    assert c.evidence.settled and c.evidence.observed == 3600 and c.evidence.samples == 61


def test_no_guests_no_savings_is_exactly_100_percent() -> None:
    readings = steady(10, committed=0, resident=0, merged_now=0, merged=0, ballooned=0)
    c = cap.assess(run(readings), readings[-1], None)
    assert c.supported_percent == 100 and c.counted == 0
    assert c.headroom == c.guest_capacity == 32 * GIB - 4 * GIB - 12 * GIB


def test_a_node_without_room_for_guests_supports_100_percent_and_shows_negative_headroom() -> None:
    readings = steady(10, available=2 * GIB, resident=GIB, merged_now=0)
    c = cap.assess(run(readings), readings[-1], None)
    assert c.guest_capacity < 0
    assert c.supported_percent == 100
    assert c.headroom < 0


def test_a_peak_does_not_count_only_what_was_kept_nearly_all_the_time() -> None:
    # KSM saved 1 GiB for an hour, 3 GiB for five minutes: the sustained saving is 1 GiB.
    readings = [reading(T0 + i * 30, merged=(3 if 30 <= i < 40 else 1) * GIB, ballooned=0)
                for i in range(121)]
    c = cap.assess(run(readings), readings[-1], CapacitySpec())
    assert c.sustained["merged"] == GIB


def test_savings_noise_a_few_dips_do_not_drag_the_5th_percentile_down() -> None:
    # Two one-minute dips to nothing in an hour of 2 GiB: p5 of 61 buckets is the 4th lowest.
    readings = [reading(T0 + i * 30, merged=0 if i in (20, 80) else 2 * GIB)
                for i in range(121)]
    c = cap.assess(run(readings), readings[-1], CapacitySpec())
    assert c.sustained["merged"] == 2 * GIB
    # ...but the minimum (percentile 0) takes them.
    c0 = cap.assess(run(readings), readings[-1], CapacitySpec(percentile=0))
    assert c0.sustained["merged"] == 0


def test_a_bucket_keeps_the_least_saving_of_its_minute() -> None:
    history = run([reading(T0, merged=2 * GIB), reading(T0 + 20, merged=GIB),
                   reading(T0 + 40, merged=3 * GIB)])
    assert len(history.buckets) == 1
    assert history.buckets[0].merged == GIB
    assert history.buckets[0].observed == 40


def test_time_in_hard_or_critical_reduces_the_counted_savings_pro_rata() -> None:
    spec = CapacitySpec(margin_percent=0, pressure_budget_percent=10)
    calm = steady(60)
    c_calm = cap.assess(run(calm), calm[-1], spec)
    # 3 of 60 minutes in Hard: half the budget of 10 % -> half the savings count.
    pressed = [dataclasses.replace(r, pressured=10 <= i < 16) for i, r in enumerate(calm)]
    c = cap.assess(run(pressed), pressed[-1], spec)
    assert c.evidence.pressure == 180
    assert c.counted == pytest.approx(c_calm.counted / 2, rel=0.01)
    assert 100 < c.supported_percent < c_calm.supported_percent


def test_spending_the_whole_pressure_budget_in_hard_brings_the_ratio_to_100() -> None:
    readings = [dataclasses.replace(r, pressured=i < 12) for i, r in enumerate(steady(60))]
    c = cap.assess(run(readings), readings[-1], CapacitySpec())  # budget 5 %: 3 minutes
    assert c.counted == 0 and c.supported_percent == 100


def test_the_margin_comes_off_the_sustained_savings() -> None:
    readings = steady(60)
    none = cap.assess(run(readings), readings[-1], CapacitySpec(margin_percent=0))
    half = cap.assess(run(readings), readings[-1], CapacitySpec(margin_percent=50))
    assert none.counted == 3 * GIB and half.counted == 3 * GIB // 2


def test_evidence_is_not_settled_before_the_window_is_covered() -> None:
    readings = steady(20)
    c = cap.assess(run(readings), readings[-1], CapacitySpec())
    assert not c.evidence.settled and c.evidence.observed == 1200
    assert c.evidence.since == T0


def test_an_agent_restart_keeps_the_history_and_the_gap_is_not_observed() -> None:
    before = steady(30)
    history = run(before)
    # Down for ten minutes, then back: the first reading after the gap adds no watched time.
    after = [reading(T0 + 2400 + i * 30) for i in range(41)]
    history = run(after, history)
    c = cap.assess(history, after[-1], CapacitySpec())
    assert c.evidence.observed == 1800 + 1200
    assert not c.evidence.settled


def test_old_buckets_leave_the_window_and_the_store_after_a_day() -> None:
    readings = [reading(T0 + i * 60, merged=0 if i < 10 else GIB) for i in range(70)]
    c = cap.assess(run(readings), readings[-1], CapacitySpec(window_seconds=3000,
                                                            percentile=0))
    assert c.sustained["merged"] == GIB  # the early zeros are outside the 50-minute window
    history = run([reading(T0), reading(T0 + cap.MAX_WINDOW_SECONDS + 120)])
    assert [b.start for b in history.buckets] == [int(T0 + cap.MAX_WINDOW_SECONDS + 120)]


def test_a_clock_that_goes_back_starts_afresh() -> None:
    history = run([*steady(5), reading(T0 - 3600)])
    assert len(history.buckets) == 1 and history.buckets[0].observed == 0


def test_ksmd_share_between_two_readings() -> None:
    assert cap.ksmd_percent(None, (10.0, 1.0)) is None
    assert cap.ksmd_percent((10.0, 1.0), (20.0, 3.0)) == pytest.approx(20.0)
    assert cap.ksmd_percent((10.0, 3.0), (20.0, 1.0)) is None  # ksmd restarted: unknown


@given(st.lists(st.integers(min_value=0, max_value=64 * GIB), min_size=1, max_size=200),
       st.integers(min_value=0, max_value=50))
def test_the_percentile_is_a_sample_no_larger_than_the_median(values: list[int], q: int) -> None:
    p = cap.percentile(values, q)
    assert p in values
    assert p <= cap.percentile(values, 50)


@given(st.integers(min_value=-8 * GIB, max_value=64 * GIB),
       st.integers(min_value=0, max_value=64 * GIB),
       st.integers(min_value=0, max_value=64 * GIB))
def test_the_ratio_is_at_least_100_and_grows_with_counted_savings(capacity: int, a: int,
                                                                  b: int) -> None:
    low, high = sorted((a, b))
    assert 100 <= cap.supported_percent(capacity, low) <= cap.supported_percent(capacity, high)


@given(st.integers(min_value=0, max_value=10 * GIB), st.integers(min_value=0, max_value=90),
       st.floats(min_value=0, max_value=1), st.integers(min_value=1, max_value=100))
def test_counted_never_exceeds_sustained(sustained: int, margin: int, share: float,
                                         budget: int) -> None:
    assert 0 <= cap.counted_savings(sustained, margin, share, budget) <= sustained
