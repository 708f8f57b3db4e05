"""The Adaptive KSM controller, step by step on synthetic observations (pure)."""

from __future__ import annotations

import itertools

from overcommit.api.policy import KsmAdaptive
from overcommit.host.base import SourceReading
from overcommit.planning import adaptive
from overcommit.planning.adaptive import Phase
from overcommit.planning.ladder import State
from overcommit.planning.observation import Observation

GIB = 2**30
CFG = KsmAdaptive()


def obs(t: float, *, sharing: int = 0, scanned: int = 0, full_scans: int = 0, cpu: float = 0.0,
        available: int = 10 * GIB, total: int = 16 * GIB) -> Observation:
    ksm = SourceReading("ksm", True, {}, {"pages_sharing": sharing, "pages_scanned": scanned,
                                          "full_scans": full_scans, "ksm_zero_pages": 0})
    mem = SourceReading("meminfo", True, {}, {"MemTotal": total, "MemAvailable": available})
    return Observation(time=t, readings={"ksm": ksm, "meminfo": mem}, ksmd_cpu_seconds=cpu)


def test_first_step_probes_within_bounds() -> None:
    decision = adaptive.step(None, obs(0), CFG)
    assert decision.state.phase is Phase.PROBE
    assert CFG.min_pages_to_scan <= decision.pages_to_scan <= CFG.max_pages_to_scan
    assert decision.sleep_ms == CFG.sleep_millisecs


def test_productive_scans_boost_then_unproductive_scans_idle() -> None:
    d = adaptive.step(None, obs(0), CFG)
    # scan 1: checksums only, nothing merged yet; scan 2: lots merged
    d = adaptive.step(d.state, obs(2, scanned=100_000, full_scans=1, cpu=0.1), CFG)
    assert d.state.phase is Phase.PROBE
    d = adaptive.step(d.state, obs(4, scanned=200_000, full_scans=2, sharing=60_000, cpu=0.6),
                      CFG)
    assert d.state.phase is Phase.BOOST, d.state.reason
    # two full scans that find nothing new
    d = adaptive.step(d.state, obs(6, scanned=300_000, full_scans=3, sharing=60_000, cpu=0.8),
                      CFG)
    assert d.state.phase is Phase.BOOST
    d = adaptive.step(d.state, obs(8, scanned=400_000, full_scans=4, sharing=60_000, cpu=1.0),
                      CFG)
    assert d.state.phase is Phase.IDLE
    assert (d.pages_to_scan, d.sleep_ms) == (CFG.min_pages_to_scan, CFG.idle_sleep_millisecs)


def _idle_state() -> adaptive.AdaptiveState:
    d = adaptive.step(None, obs(0), CFG)
    for i in (1, 2):
        d = adaptive.step(d.state, obs(2 * i, scanned=i * 1000, full_scans=i, cpu=0.01 * i), CFG)
    assert d.state.phase is Phase.IDLE
    return d.state


def test_nothing_to_merge_goes_idle_after_two_scans() -> None:
    assert _idle_state().low_yield_scans >= 2


def test_idle_wakes_when_memory_drops() -> None:
    state = _idle_state()
    d = adaptive.step(state, obs(10, scanned=2100, full_scans=2, cpu=0.02,
                                 available=9 * GIB), CFG)
    assert d.state.phase is Phase.PROBE
    assert "MemAvailable fell" in d.state.reason


def test_idle_stays_idle_without_signal_and_reprobes_later() -> None:
    state = _idle_state()
    d = adaptive.step(state, obs(60, scanned=2200, full_scans=2, cpu=0.02), CFG)
    assert d.state.phase is Phase.IDLE
    d = adaptive.step(d.state, obs(4 + adaptive.REPROBE_IDLE_S, scanned=2300, full_scans=2,
                                   cpu=0.02), CFG)
    assert d.state.phase is Phase.PROBE


def test_pressure_reprobes_sooner() -> None:
    """Pressure is the ladder's judgement, not the lever's own reading of MemAvailable."""
    state = _idle_state()
    later = obs(4 + adaptive.REPROBE_PRESSURE_S, scanned=2200, full_scans=2, cpu=0.02)
    assert adaptive.step(state, later, CFG).state.phase is Phase.IDLE  # Clear: no pressure
    for ladder in (State.SOFT, State.HARD, State.CRITICAL):
        d = adaptive.step(state, later, CFG, ladder)
        assert d.state.phase is Phase.PROBE
        assert d.state.reason == f"re-probing after 60s idle (ladder {ladder.value})"


def test_plenty_keeps_ksmd_at_its_idle_trickle() -> None:
    trickle = (CFG.min_pages_to_scan, CFG.idle_sleep_millisecs)
    first = adaptive.step(None, obs(0), CFG, State.PLENTY)
    assert first.state.phase is Phase.IDLE and (first.pages_to_scan, first.sleep_ms) == trickle
    assert first.state.reason == adaptive.PLENTY_REASON
    # A boosting tuner drops to the trickle as soon as the node has plenty.
    d = adaptive.step(None, obs(0), CFG)
    d = adaptive.step(d.state, obs(2, scanned=100_000, full_scans=1, cpu=0.1), CFG)
    d = adaptive.step(d.state, obs(4, scanned=200_000, full_scans=2, sharing=60_000, cpu=0.6),
                      CFG)
    assert d.state.phase is Phase.BOOST
    d = adaptive.step(d.state, obs(6, scanned=300_000, full_scans=2, sharing=90_000, cpu=0.8),
                      CFG, State.PLENTY)
    assert d.state.phase is Phase.IDLE and (d.pages_to_scan, d.sleep_ms) == trickle
    # Nothing wakes it while the node has plenty: not a memory drop, not the re-probe timer.
    woken = obs(6 + adaptive.REPROBE_IDLE_S, scanned=300_100, full_scans=2, sharing=90_000,
                cpu=0.8, available=4 * GIB)
    assert adaptive.step(d.state, woken, CFG, State.PLENTY).state.phase is Phase.IDLE
    assert adaptive.step(d.state, woken, CFG, State.CLEAR).state.phase is Phase.PROBE


def test_cpu_over_budget_cuts_the_rate_in_proportion() -> None:
    d = adaptive.step(None, obs(0), CFG)
    start = d.pages_to_scan
    # ksmd used 1.6 s of CPU in 2 s = 80 %, four times the 20 % budget
    d = adaptive.step(d.state, obs(2, scanned=50_000, cpu=1.6), CFG)
    assert d.pages_to_scan <= max(CFG.min_pages_to_scan, start * CFG.cpu_budget_percent // 80)


def test_cheap_scanning_raises_the_rate_but_not_past_the_maximum() -> None:
    d = adaptive.step(None, obs(0), CFG)
    rates = [d.pages_to_scan]
    scanned, cpu = 0, 0.0
    for t in range(1, 12):
        scanned += 1_000_000
        cpu += 0.1  # 0.1 us per page: very cheap
        d = adaptive.step(d.state, obs(2 * t, scanned=scanned, cpu=cpu), CFG)
        rates.append(d.pages_to_scan)
    assert rates[-1] > rates[0]
    assert max(rates) <= CFG.max_pages_to_scan
    assert all(b <= 2 * a for a, b in itertools.pairwise(rates))


def test_budget_pages_respects_bounds() -> None:
    assert adaptive.budget_pages(CFG, 1.0) == CFG.min_pages_to_scan
    assert adaptive.budget_pages(CFG, 1e-12) == CFG.max_pages_to_scan


def obs_v(t: float, *, sharing: int, scanned: int, full_scans: int, cpu: float,
          volatile: int, unshared: int = 1000, shared: int = 1000) -> Observation:
    ksm = SourceReading("ksm", True, {}, {
        "pages_sharing": sharing, "pages_scanned": scanned, "full_scans": full_scans,
        "ksm_zero_pages": 0, "pages_volatile": volatile, "pages_unshared": unshared,
        "pages_shared": shared})
    mem = SourceReading("meminfo", True, {}, {"MemTotal": 16 * GIB, "MemAvailable": 10 * GIB})
    return Observation(time=t, readings={"ksm": ksm, "meminfo": mem}, ksmd_cpu_seconds=cpu)


def test_idles_as_soon_as_nothing_volatile_is_left_to_merge() -> None:
    d = adaptive.step(None, obs_v(0, sharing=0, scanned=0, full_scans=0, cpu=0, volatile=0),
                      CFG)
    # a full scan, merging in progress: keep going
    d = adaptive.step(d.state, obs_v(2, sharing=5000, scanned=50_000, full_scans=1, cpu=0.2,
                                     volatile=0), CFG)
    assert d.state.phase is not Phase.IDLE
    # merging stopped, nothing volatile: another scan cannot pay -> idle without waiting for
    # two more low-yield full scans
    d = adaptive.step(d.state, obs_v(4, sharing=5000, scanned=100_000, full_scans=2, cpu=0.3,
                                     volatile=0), CFG)
    assert d.state.phase is Phase.IDLE, d.state.reason
    assert "volatile" in d.state.reason


def test_many_volatile_pages_keep_it_scanning() -> None:
    d = adaptive.step(None, obs_v(0, sharing=0, scanned=0, full_scans=0, cpu=0, volatile=0),
                      CFG)
    d = adaptive.step(d.state, obs_v(2, sharing=5000, scanned=50_000, full_scans=1, cpu=0.2,
                                     volatile=900), CFG)
    d = adaptive.step(d.state, obs_v(4, sharing=5000, scanned=100_000, full_scans=1, cpu=0.3,
                                     volatile=900), CFG)
    assert d.state.phase is not Phase.IDLE  # a third of the tracked pages may still merge
