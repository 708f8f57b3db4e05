"""Retry delays: growing with failures in a row, capped, jittered, never zero."""

from __future__ import annotations

import random

import pytest

from overcommit.kube.backoff import retry_delay


def test_no_failure_no_wait() -> None:
    assert retry_delay(0, 2.0, 30.0) == 0.0


@pytest.mark.parametrize(("failures", "ceiling"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0),
                                                   (5, 30.0), (40, 30.0)])
def test_the_ceiling_doubles_up_to_the_cap(failures: int, ceiling: float) -> None:
    assert retry_delay(failures, 2.0, 30.0, draw=lambda: 0.0) == 1.0  # half the base at least
    assert retry_delay(failures, 2.0, 30.0, draw=lambda: 1.0) == pytest.approx(ceiling)


def test_a_cap_below_the_base_still_waits_half_the_base() -> None:
    assert retry_delay(3, 2.0, 0.5, draw=lambda: 1.0) == 1.0


def test_agents_failing_together_retry_spread_out() -> None:
    # 5,000 agents rejected at the same moment: their third retries cover the whole range.
    rng = random.Random(1)
    delays = sorted(retry_delay(3, 2.0, 30.0, draw=rng.random) for _ in range(5000))
    assert 1.0 <= delays[0] < 1.1 and 7.9 < delays[-1] <= 8.0
    buckets = [0] * 7
    for d in delays:
        buckets[min(6, int(d - 1.0))] += 1
    assert min(buckets) > 5000 / 7 * 0.8  # roughly uniform: no second gets a stampede
