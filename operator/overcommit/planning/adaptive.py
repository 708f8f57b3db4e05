"""Adaptive KSM: scan hard while merging pays, idle when it does not, never exceed a CPU budget.

ksmtuned, oVirt's MOM, KubeVirt and Harvester add 300 pages per minute under pressure and
never ask whether scanning still finds anything. This controller looks at three signals:

* **merge yield** — pages newly shared per page scanned, judged over whole full scans (KSM needs
  two passes over a page before it can merge it, so a single pass says little);
* **ksmd's own CPU time** (``/proc/<ksmd>/stat``) against ``cpuBudgetPercent``, which sets the
  scan rate: rate = budget / measured CPU cost per scanned page;
* **the node's reclamation ladder** (``planning.ladder``): in Plenty the node needs no merging
  and ksmd stays at its idle trickle; in Soft or worse (short of memory) an idle controller
  looks again every minute instead of every five; a drop of MemAvailable (a new workload) wakes
  it in any state but Plenty;
* **volatile pages** (``pages_volatile``): pages whose content changed since ksmd last saw them.
  Once a full scan has compared every page with every other, only they (and pages written from
  now on) can still merge, so they bound what another full scan can yield.

Phases: ``probe`` (scan at the budget until two full scans are done), ``boost`` (keep scanning
at the budget while each full scan yields at least ``minYieldPercent``), ``idle`` (the trickle:
``minPagesToScan`` every ``idleSleepMillisecs``) until new merges show up, memory drops, or the
re-probe timer fires. An active phase idles as soon as another full scan cannot pay: after a full
scan, fewer than ``minYieldPercent`` of the tracked pages are volatile and merging has stopped;
otherwise after ``LOW_YIELD_SCANS_TO_IDLE`` full scans in a row that yielded too little.

Everything here is pure: state in, observation in, (settings, state) out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from overcommit.api.policy import KsmAdaptive
from overcommit.planning.ladder import State
from overcommit.planning.observation import Observation

# A prior for ksmd's CPU cost per scanned page before it has been measured (seconds). Measured
# here at ~1.2 us; start cautiously high so the first cycle stays inside the budget.
PRIOR_COST_PER_PAGE_S = 2e-6
# Re-probe an idle node this often (seconds): new guests must get merged eventually even if
# nothing else signals them. Under memory pressure look much more often.
REPROBE_IDLE_S = 300.0
REPROBE_PRESSURE_S = 60.0
# A drop of MemAvailable by this share of MemTotal while idle means new memory to look at.
MEMORY_DROP_PERCENT = 2.0
# Full scans with a low yield in a row before the controller gives up and idles.
LOW_YIELD_SCANS_TO_IDLE = 2
# The smallest ksmd CPU delta (seconds) trusted for a cost estimate (clock ticks are 10 ms).
MIN_CPU_SAMPLE_S = 0.05


class Phase(StrEnum):
    PROBE = "probe"
    BOOST = "boost"
    IDLE = "idle"


@dataclass(frozen=True)
class AdaptiveState:
    """What the controller remembers between cycles."""

    phase: Phase
    since: float  # when the phase began
    last_time: float
    last_cpu: float | None
    last_scanned: int
    last_full_scans: int
    scan_start_sharing: int  # pages saved when the current full scan began
    scan_start_scanned: int
    low_yield_scans: int
    full_scans_in_phase: int
    cost_per_page_s: float
    idle_available: int  # MemAvailable when idling began
    pages_to_scan: int
    sleep_ms: int
    last_yield_percent: float | None = None
    last_cpu_percent: float | None = None
    reason: str = ""
    last_saved: int = 0
    interval_yield_percent: float | None = None  # over the last control interval


@dataclass(frozen=True)
class AdaptiveDecision:
    pages_to_scan: int
    sleep_ms: int
    state: AdaptiveState


def saved_pages(obs: Observation) -> int:
    return obs.counter("ksm", "pages_sharing") + obs.counter("ksm", "ksm_zero_pages")


def scanned_pages(obs: Observation) -> int:
    """Pages ksmd scanned so far. Old kernels lack ``pages_scanned``: estimate from rmap items."""
    if "pages_scanned" in obs.readings["ksm"].counters:
        return obs.counter("ksm", "pages_scanned")
    tracked = sum(obs.counter("ksm", n) for n in
                  ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile"))
    return obs.counter("ksm", "full_scans") * max(tracked, 1)


def volatile_percent(obs: Observation) -> float | None:
    """Share of the pages KSM tracks whose content changed since ksmd last looked at them;
    None when unknown (no such counter, nothing tracked): then only full-scan yields count."""
    reading = obs.readings.get("ksm")
    if reading is None or "pages_volatile" not in reading.counters:
        return None
    tracked = sum(obs.counter("ksm", n) for n in
                  ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile"))
    return 100.0 * obs.counter("ksm", "pages_volatile") / tracked if tracked > 0 else None


def budget_pages(cfg: KsmAdaptive, cost_per_page_s: float) -> int:
    """pages_to_scan that keeps ksmd at the CPU budget at the active sleep interval."""
    pages_per_second = (cfg.cpu_budget_percent / 100.0) / max(cost_per_page_s, 1e-9)
    pages = int(pages_per_second * cfg.sleep_millisecs / 1000.0)
    return max(cfg.min_pages_to_scan, min(cfg.max_pages_to_scan, pages))


def start(obs: Observation, cfg: KsmAdaptive) -> AdaptiveDecision:
    """The first decision on a node: probe at the budget with the prior cost estimate."""
    pages = budget_pages(cfg, PRIOR_COST_PER_PAGE_S)
    state = AdaptiveState(
        phase=Phase.PROBE, since=obs.time, last_time=obs.time, last_cpu=obs.ksmd_cpu_seconds,
        last_scanned=scanned_pages(obs), last_full_scans=obs.counter("ksm", "full_scans"),
        scan_start_sharing=saved_pages(obs), scan_start_scanned=scanned_pages(obs),
        low_yield_scans=0, full_scans_in_phase=0, cost_per_page_s=PRIOR_COST_PER_PAGE_S,
        idle_available=obs.mem_available, pages_to_scan=pages, sleep_ms=cfg.sleep_millisecs,
        reason="probing: no merge yield measured yet", last_saved=saved_pages(obs))
    return AdaptiveDecision(pages, cfg.sleep_millisecs, state)


PLENTY_REASON = "the node has plenty of memory (ladder Plenty): idle trickle"


def step(prev: AdaptiveState | None, obs: Observation, cfg: KsmAdaptive,
         ladder: State = State.CLEAR) -> AdaptiveDecision:
    """One control step. ``prev`` is None on the first cycle or after a policy change;
    ``ladder`` is the node's state this cycle (``planning.ladder``), which gates the phases."""
    if prev is None or obs.time <= prev.last_time:
        decision = start(obs, cfg)
        if ladder is not State.PLENTY:
            return decision
        prev = decision.state
        state = _enter(prev, obs, Phase.IDLE, PLENTY_REASON)
    else:
        state = _measure(prev, obs)
        state = _account_full_scans(state, obs, cfg)
        state = _next_phase(state, obs, cfg, ladder)
    if state.phase is Phase.IDLE:
        pages, sleep = cfg.min_pages_to_scan, cfg.idle_sleep_millisecs
    else:
        pages = _toward(prev.pages_to_scan, budget_pages(cfg, state.cost_per_page_s))
        pages, sleep = _respect_budget(pages, state, cfg), cfg.sleep_millisecs
    state = replace(state, pages_to_scan=pages, sleep_ms=sleep)
    return AdaptiveDecision(pages, sleep, state)


def _measure(prev: AdaptiveState, obs: Observation) -> AdaptiveState:
    """Update the CPU-cost estimate from ksmd's CPU time and the pages it scanned."""
    elapsed = obs.time - prev.last_time
    scanned = scanned_pages(obs)
    pages = scanned - prev.last_scanned
    cost, cpu_percent = prev.cost_per_page_s, prev.last_cpu_percent
    if obs.ksmd_cpu_seconds is not None and prev.last_cpu is not None:
        cpu = max(0.0, obs.ksmd_cpu_seconds - prev.last_cpu)
        cpu_percent = 100.0 * cpu / elapsed
        if cpu >= MIN_CPU_SAMPLE_S and pages > 0:
            cost = _new_cost(cost, cpu / pages)
    saved = saved_pages(obs)
    interval_yield = 100.0 * max(saved - prev.last_saved, 0) / pages if pages > 0 else None
    return replace(prev, last_time=obs.time, last_cpu=obs.ksmd_cpu_seconds,
                   last_scanned=scanned, cost_per_page_s=cost, last_cpu_percent=cpu_percent,
                   last_saved=saved, interval_yield_percent=interval_yield)


def _new_cost(estimate: float, sample: float) -> float:
    """Rise at once, fall gradually. The cost per page changes between passes (the merging pass
    costs several times the checksum-only first one): a costlier pass must slow the scan at
    once, while one cheap sample (a stretch of already-merged pages) must not speed it up much."""
    return sample if sample > estimate else 0.5 * estimate + 0.5 * sample


def _account_full_scans(state: AdaptiveState, obs: Observation,
                        cfg: KsmAdaptive) -> AdaptiveState:
    full_scans = obs.counter("ksm", "full_scans")
    if full_scans <= state.last_full_scans:
        return state
    gained = saved_pages(obs) - state.scan_start_sharing
    scanned = max(1, scanned_pages(obs) - state.scan_start_scanned)
    yield_percent = 100.0 * max(gained, 0) / scanned
    low = yield_percent < cfg.min_yield_percent or gained <= 0
    return replace(state, last_full_scans=full_scans, scan_start_sharing=saved_pages(obs),
                   scan_start_scanned=scanned_pages(obs),
                   full_scans_in_phase=state.full_scans_in_phase + (full_scans -
                                                                    state.last_full_scans),
                   low_yield_scans=state.low_yield_scans + 1 if low else 0,
                   last_yield_percent=yield_percent)


def _next_phase(state: AdaptiveState, obs: Observation, cfg: KsmAdaptive,
                ladder: State) -> AdaptiveState:
    if ladder is State.PLENTY:  # nothing to gain from merging: no probes, no boost
        return state if state.phase is Phase.IDLE else _enter(state, obs, Phase.IDLE,
                                                              PLENTY_REASON)
    if state.phase is Phase.IDLE:
        wake = _wake_reason(state, obs, ladder)
        if wake:
            return _enter(state, obs, Phase.PROBE, wake)
        return state
    settled = _settled(state, obs, cfg)
    if settled:
        return _enter(state, obs, Phase.IDLE, settled)
    if state.phase is Phase.PROBE and state.full_scans_in_phase >= LOW_YIELD_SCANS_TO_IDLE \
            and state.low_yield_scans == 0:
        return _enter(state, obs, Phase.BOOST,
                      f"merging pays: {state.last_yield_percent:.1f}% yield per full scan")
    if state.low_yield_scans >= LOW_YIELD_SCANS_TO_IDLE:
        return _enter(state, obs, Phase.IDLE,
                      f"{state.low_yield_scans} full scans found little new to merge "
                      f"({state.last_yield_percent or 0:.2f}% yield)")
    return state


def _settled(state: AdaptiveState, obs: Observation, cfg: KsmAdaptive) -> str:
    """Why another full scan cannot pay, or "" while it still might.

    After a full scan in this phase (so every page, new ones included, has been seen), only
    volatile pages can still merge: if they are fewer than ``minYieldPercent`` of the tracked
    pages and the last interval merged (almost) nothing, the next scan's yield is bounded below
    the threshold, and waiting for it to prove that would only burn CPU.
    """
    volatile = volatile_percent(obs)
    merging = state.interval_yield_percent
    seen_all = state.phase is Phase.BOOST or state.full_scans_in_phase >= 1  # boost: after 2
    if not seen_all or volatile is None or merging is None:
        return ""
    if volatile >= cfg.min_yield_percent or merging >= cfg.min_yield_percent:
        return ""
    return (f"merging stopped ({merging:.2f}% yield in the last interval) and only "
            f"{volatile:.2f}% of pages are volatile after a full scan: another scan cannot pay")


def _wake_reason(state: AdaptiveState, obs: Observation, ladder: State) -> str:
    if state.low_yield_scans == 0 and state.full_scans_in_phase > 0:
        return f"a full scan while idle yielded {state.last_yield_percent:.1f}%"
    drop = state.idle_available - obs.mem_available
    if obs.mem_total and 100.0 * drop / obs.mem_total >= MEMORY_DROP_PERCENT:
        return f"MemAvailable fell by {drop >> 20} MiB since idling began"
    pressed = ladder.at_least(State.SOFT)
    reprobe = REPROBE_PRESSURE_S if pressed else REPROBE_IDLE_S
    if obs.time - state.since >= reprobe:
        why = f" (ladder {ladder.value})" if pressed else ""
        return f"re-probing after {reprobe:.0f}s idle{why}"
    return ""


def _enter(state: AdaptiveState, obs: Observation, phase: Phase, reason: str) -> AdaptiveState:
    return replace(state, phase=phase, since=obs.time, full_scans_in_phase=0,
                   low_yield_scans=0 if phase is not Phase.IDLE else state.low_yield_scans,
                   idle_available=obs.mem_available, reason=reason)


def _toward(current: int, target: int) -> int:
    """Move at most 2x up or down per cycle so one bad estimate cannot overshoot far."""
    return max(current // 2, min(target, current * 2))


def _respect_budget(pages: int, state: AdaptiveState, cfg: KsmAdaptive) -> int:
    """If ksmd measurably ran over budget last cycle, cut the rate in proportion at once."""
    over = state.last_cpu_percent
    if over is not None and over > cfg.cpu_budget_percent:
        pages = int(state.pages_to_scan * cfg.cpu_budget_percent / over)
    return max(cfg.min_pages_to_scan, min(cfg.max_pages_to_scan, pages))
