"""bench.agent's pure parts: percentiles (p99 over 200 changes) and the soak's growth figures."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.agent import (
    SoakSample,
    allowed_writes,
    percentile,
    series_stats,
    shipped_env,
    soak_growth,
)


def test_percentile_interpolates_like_numpy() -> None:
    values = [float(v) for v in range(1, 201)]  # 1..200
    assert percentile(values, 0.5) == pytest.approx(100.5)
    assert percentile(values, 0.95) == pytest.approx(190.05)
    assert percentile(values, 0.99) == pytest.approx(198.01)
    assert percentile([3.0, 1.0, 2.0], 0.0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 1.0) == 3.0
    assert percentile([7.0], 0.99) == 7.0


def test_percentile_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        percentile([], 0.5)
    with pytest.raises(ValueError):
        percentile([1.0], 1.5)


def test_series_stats_has_p99_below_the_max_with_200_samples() -> None:
    values = [0.02] * 197 + [0.05, 0.08, 0.5]
    stats = series_stats(values)
    assert stats["p50"] == pytest.approx(0.02)
    assert stats["max"] == 0.5
    assert stats["p95"] == pytest.approx(0.02)
    assert 0.05 < stats["p99"] < 0.5  # one outlier in 200 moves the p99, not the p95


def sample(t: float, rss_mib: float, fds: int = 20, tasks: int = 4,
           cpu: float = 0.0) -> SoakSample:
    return SoakSample(t, int(rss_mib * 1024), fds, tasks, cpu)


def test_soak_growth_leaves_out_the_warm_up_and_fits_a_slope() -> None:
    # 10 MiB of warm-up in the first sample, then a steady 1 MiB per 100 s: 36 MiB/h.
    samples = [sample(0, 40.0)] + [sample(t, 50 + t / 100) for t in range(100, 1100, 100)]
    growth = soak_growth(samples)
    assert growth["warmup_samples"] == 1
    assert growth["rss_start_mib"] == pytest.approx(51.0)
    assert growth["rss_end_mib"] == pytest.approx(60.0)
    assert growth["rss_growth_mib"] == pytest.approx(9.0)
    assert growth["rss_slope_mib_per_h"] == pytest.approx(36.0, rel=1e-3)
    assert growth["rss_max_mib"] == pytest.approx(60.0)


def test_soak_growth_of_a_flat_agent_is_zero_and_counts_fds_and_tasks() -> None:
    samples = [sample(t, 49.0, fds=18 + (t == 50), tasks=5, cpu=t / 1000)
               for t in range(0, 120, 5)]
    growth = soak_growth(samples)
    assert growth["rss_growth_mib"] == 0
    assert growth["rss_slope_mib_per_h"] == pytest.approx(0.0)
    assert (growth["fds_start"], growth["fds_end"], growth["fds_max"]) == (18, 18, 19)
    assert growth["tasks_max"] == 5
    assert growth["cpu_percent"] == pytest.approx(0.1)
    assert growth["seconds"] == 115


def test_soak_needs_two_samples() -> None:
    with pytest.raises(ValueError):
        soak_growth([sample(0, 1.0)])


def test_allowed_writes_static_none_live_one_per_status_interval() -> None:
    assert allowed_writes({"live": False, "steady_window_s": 60.0,
                           "agent_status_interval_s": 60.0}) == 0
    assert allowed_writes({"live": True, "steady_window_s": 60.0,
                           "agent_status_interval_s": 60.0}) == 2


def test_the_bench_runs_the_agent_with_the_daemonset_s_literal_environment(
        tmp_path: Path) -> None:
    manifest = tmp_path / "agent.yaml"
    manifest.write_text(yaml.safe_dump_all([
        {"kind": "ServiceAccount"},
        {"kind": "DaemonSet", "spec": {"template": {"spec": {"containers": [
            {"name": "agent", "env": [
                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "x"}}},
                {"name": "HOME", "value": "/tmp"},
                {"name": "MALLOC_ARENA_MAX", "value": 2}]}]}}}}]))
    assert shipped_env(manifest) == {"HOME": "/tmp", "MALLOC_ARENA_MAX": "2"}
    assert shipped_env()["HOME"] == "/tmp"  # the shipped manifest itself parses
