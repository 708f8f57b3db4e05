"""KSM efficiency: the same real merge workloads under every strategy, one after another, each
over the same fixed window.

    python -m bench.ksm_efficiency [--quick] [--repeat N] [--strategies a,b]
                                   [--workloads static,churn,guests]
                                   [--pressure real|simulated]
                                   [--frontier] [--verbose]

For each strategy and workload: saved memory integrated over the window (byte-seconds) per
ksmd CPU second (the headline), time to 90% of the achievable ``pages_sharing`` (t90), ksmd's
CPU time and the strategy's own controller CPU over the window. By default the host is really
under memory pressure (a memory rig holds MemAvailable at the chosen share; it rises as merging
frees memory); ``--pressure simulated`` shows every strategy a constant view instead. Needs
root. The KSM settings found at start are restored at the end. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from bench import ksm_host
from bench.common import log as _log
from bench.common import quiet as _quiet
from bench.common import raise_interrupt as _raise_interrupt
from bench.ksm_churn import ChurnWorkload
from bench.ksm_guests import GuestWorkload
from bench.ksm_metrics import compare_all, integrate, median_or_none, per_cpu, spread
from bench.ksm_pressure import Pressure
from bench.strategies import (
    BASELINES,
    STRATEGY_NAMES,
    KernelAdvisor,
    Strategy,
    factory,
    static_name,
)
from overcommit.demo.workload import MergeWorkload
from testkit.memrig import RigTripped

TARGET_SHARE = 0.9
ATTEMPTS = 3  # per trial, when someone else disturbs KSM during the measurement
QUIET_WAIT_S = 300.0  # how long to wait for other KSM users to finish before a trial
QUIET_HOLD_S = 30.0  # ... and for how long they must have been gone (they come in bursts)
PAGE = mmap.PAGESIZE
WORKLOADS = ("static", "churn", "guests")
DEFAULT_WORKLOADS = ("static", "churn")  # guests boot TCG VMs per trial: asked for by name
GIB = float(1 << 30)


@dataclass(frozen=True)
class Settings:
    workers: int = 4
    size_mib: int = 1024  # 4 x 1 GiB = 4 GiB of mergeable memory
    shared_fraction: float = 0.75
    window_s: float = 300.0  # the same for every strategy: includes Adaptive's 60 s re-probes
    poll_s: float = 0.25
    available_percent: float = 10.0
    churn_percent: float = 1.0  # of each worker's pages rewritten per second (churn workload)


QUICK = Settings(size_mib=32, window_s=20.0)
# Fixed scan rates for the frontier: pages_to_scan x sleep_millisecs.
FRONTIER_PAGES = (100, 300, 1000, 3000)
FRONTIER_SLEEP_MS = (10, 20, 50)


def frontier_names(grid: str | None = None) -> list[str]:
    """The fixed rates: the full grid, or ``grid`` as "PAGESxSLEEP_MS,..." (a reduced one)."""
    if grid:
        pairs = [item.lower().split("x") for item in grid.split(",") if item.strip()]
        return [static_name(int(p), int(s)) for p, s in pairs]
    return [static_name(p, s) for p in FRONTIER_PAGES for s in FRONTIER_SLEEP_MS]


@dataclass(frozen=True)
class Trial:
    """One strategy, one workload, one repeat, over the fixed window. CPU in seconds."""

    t90_s: float | None
    cpu_to_t90_s: float | None
    cpu_steady_s: float | None  # ksmd CPU from t90 to the end of the window
    ksmd_cpu_s: float  # over the whole window
    controller_cpu_s: float  # this process's CPU inside the strategy's control cycles
    saved_byte_seconds: float  # pages_sharing x page size, integrated over the window
    pages_sharing: int  # at the end of the window
    achievable: int
    window_s: float
    mem_available_start_mib: int | None = None
    mem_available_end_mib: int | None = None
    pages_to_scan_end: int | None = None  # where the strategy (or the kernel's advisor) left it
    disturbed: str | None = None

    @property
    def total_cpu_s(self) -> float:
        return self.ksmd_cpu_s + self.controller_cpu_s


class Guard:
    """Notices anyone else touching KSM during a trial, which would corrupt the measurement:
    settings changed behind the strategy's back, or other processes giving ksmd work."""

    def __init__(self, own_pids: set[int], self_tuning: bool) -> None:
        self.own = own_pids | {os.getpid()}
        self.self_tuning = self_tuning  # the kernel's advisor moves pages_to_scan itself
        self.expected: tuple[str, ...] = ()
        self.polls = 0

    def _rate(self) -> tuple[str, ...]:
        run, pages, sleep = ksm_host.rate_settings()
        return (run, sleep) if self.self_tuning else (run, pages, sleep)

    def at_start(self) -> str | None:
        """Right before t=0 KSM must still be as reset: stopped, at the default rate."""
        now = ksm_host.rate_settings()
        if now != ksm_host.RESET_RATE:
            return f"KSM changed by someone else before the start: {now}"
        others = ksm_host.foreign_ksm_users(self.own)
        return f"other processes use KSM: pids {others}" if others else None

    def after_act(self) -> None:
        self.expected = self._rate()

    def check(self, sharing: int, cap: int) -> str | None:
        self.polls += 1
        now = self._rate()
        if self.expected and now != self.expected:
            return f"KSM rate settings changed by someone else: {self.expected} -> {now}"
        if sharing > 1.02 * cap:
            return f"pages_sharing {sharing} exceeds what the workload can share ({cap})"
        others = ksm_host.foreign_ksm_users(self.own) if self.polls % 8 == 0 else []
        return f"other processes use KSM: pids {others}" if others else None


# ------------------------------------------------------------------------------------------------
# Measuring one strategy

Workload = MergeWorkload | ChurnWorkload | GuestWorkload


def sharing_cap(workload: Workload) -> int:
    """The most ``pages_sharing`` the workload can reach: its design for processes, all of
    its memory for guests (their kernels' own identical pages merge too)."""
    if isinstance(workload, GuestWorkload):
        return workload.sharing_cap
    return workload.achievable_sharing


class Run:
    """The polling loop of one trial: drive the strategy on its schedule, sample every poll,
    stop at the end of the fixed window whatever happened."""

    def __init__(self, strategy: Strategy, settings: Settings, workload: Workload,
                 pressure: Pressure, clock: ksm_host.KsmdClock,
                 log: Callable[[str], None]) -> None:
        self.strategy, self.settings, self.clock, self.log = strategy, settings, clock, log
        self.pressure = pressure
        self.achievable = workload.achievable_sharing
        self.cap = sharing_cap(workload)
        self.guard = Guard({p.pid for p in workload.processes}, strategy.self_tuning)
        self.disturbed = self.guard.at_start()
        self.target = math.ceil(TARGET_SHARE * self.achievable)
        self.available_start = _available_mib()
        self.t0 = time.monotonic()
        if isinstance(workload, ChurnWorkload):
            workload.go(time.time())
        self.cpu0 = clock.seconds()
        self.controller_cpu = 0.0
        self.next_act = self.t0
        self.next_poll = self.t0
        self.end = self.t0 + settings.window_s
        self.t90: float | None = None
        self.cpu_t90: float | None = None
        self.sharing = 0
        self.samples: list[tuple[float, float]] = []

    def measure(self) -> Trial:
        while not self.disturbed:
            now = time.monotonic()
            if now >= self.end:
                break
            if now >= self.next_act:
                self._act()
            if now >= self.next_poll:
                self._poll(now)
            wake = min(self.next_act, self.next_poll, self.end)
            time.sleep(max(0.0, wake - time.monotonic()))
        return self._result()

    def _act(self) -> None:
        started = time.monotonic() - self.t0
        cpu = time.thread_time()
        text = self.strategy.act()
        self.controller_cpu += time.thread_time() - cpu
        self.guard.after_act()
        self.log(f"  [{started:7.2f}s] {self.strategy.name}: {text}")
        # Like `overcommit run`: wait the interval after the cycle has finished.
        self.next_act = time.monotonic() + self.strategy.interval_s

    def _poll(self, now: float) -> None:
        self.sharing = ksm_host.read_int("pages_sharing")
        self.samples.append((now - self.t0, float(self.sharing * PAGE)))
        self.disturbed = self.guard.check(self.sharing, self.cap)
        rig = self.pressure.rig
        if rig is not None and rig.tripped:
            self.disturbed = f"memory rig tripped: {rig.tripped}"
        if self.t90 is None and self.sharing >= self.target:
            self.t90 = now - self.t0
            self.cpu_t90 = self.clock.seconds() - self.cpu0
            self.log(f"  [{self.t90:7.2f}s] t90 reached: pages_sharing={self.sharing}, "
                     f"ksmd cpu {self.cpu_t90:.2f}s")
        self.next_poll += self.settings.poll_s

    def _result(self) -> Trial:
        total = self.clock.seconds() - self.cpu0
        steady = None if self.cpu_t90 is None else total - self.cpu_t90
        window = self.settings.window_s
        return Trial(self.t90, self.cpu_t90, steady, total, self.controller_cpu,
                     integrate(self.samples, window), ksm_host.read_int("pages_sharing"),
                     self.achievable, window, self.available_start, _available_mib(),
                     ksm_host.read_int("pages_to_scan"), self.disturbed)


def _available_mib() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) >> 10
    except OSError:
        pass
    return None


def run_trial(make: Callable[[], Strategy], workload: str, settings: Settings,
              pressure: Pressure, clock: ksm_host.KsmdClock,
              log: Callable[[str], None]) -> Trial:
    """Measure once; if someone else disturbed KSM meanwhile, wait for quiet and measure again."""
    for attempt in range(1, ATTEMPTS + 1):
        wait_for_quiet(QUIET_HOLD_S if attempt > 1 else 0.0)
        trial = measure_once(make, workload, settings, pressure, clock, log)
        if trial.disturbed is None:
            return trial
        print(f"  WARNING: measurement disturbed ({trial.disturbed}); "
              f"attempt {attempt}/{ATTEMPTS}", flush=True)
    return trial


def wait_for_quiet(hold_s: float) -> None:
    """Until no other process has had KSM-mergeable memory for ``hold_s`` (at least
    QUIET_HOLD_S once some were seen: they come in bursts), or QUIET_WAIT_S has passed."""
    deadline = time.monotonic() + QUIET_WAIT_S
    quiet_since = time.monotonic()
    told = False
    while time.monotonic() < deadline:
        others = ksm_host.foreign_ksm_users(set())
        if others:
            quiet_since, hold_s = time.monotonic(), max(hold_s, QUIET_HOLD_S)
            if not told:
                print(f"  waiting for other KSM users to finish (pids {others}) ...", flush=True)
                told = True
        elif time.monotonic() - quiet_since >= hold_s:
            return
        time.sleep(2.0)


def make_workload(kind: str, settings: Settings) -> Workload:
    if kind == "churn":
        return ChurnWorkload(settings.workers, settings.size_mib, settings.shared_fraction,
                             churn_percent=settings.churn_percent)
    if kind == "guests":
        return GuestWorkload(settings.workers, settings.size_mib, settings.shared_fraction)
    return MergeWorkload(settings.workers, settings.size_mib, settings.shared_fraction)


def measure_once(make: Callable[[], Strategy], kind: str, settings: Settings,
                 pressure: Pressure, clock: ksm_host.KsmdClock,
                 log: Callable[[str], None]) -> Trial:
    """Fresh start (unmerged, default rate, stopped), fresh workload, the host filled to the
    pressure target, measure, clean up."""
    ksm_host.reset_to_defaults()
    workload = make_workload(kind, settings)
    workload.start()
    try:
        try:
            reached = pressure.settle([p.pid for p in workload.processes])
        except RigTripped as exc:
            return _failed(workload, settings, f"memory rig tripped while filling: {exc}")
        if reached is not None:
            log(f"  MemAvailable {reached >> 20} MiB before t=0")
        strategy = make()
        try:
            return Run(strategy, settings, workload, pressure, clock, log).measure()
        finally:
            strategy.close()
    finally:
        workload.stop()
        ksm_host.unmerge_all()


def _failed(workload: Workload, settings: Settings, why: str) -> Trial:
    return Trial(None, None, None, 0.0, 0.0, 0.0, 0, workload.achievable_sharing,
                 settings.window_s, disturbed=why)


# ------------------------------------------------------------------------------------------------
# Aggregating and reporting

SUMMARY_FIGURES = ("cpu_to_t90_s", "cpu_steady_s", "ksmd_cpu_s", "controller_cpu_s",
                   "total_cpu_s", "saved_byte_seconds", "saved_byte_seconds_per_cpu_s",
                   "saved_byte_seconds_per_total_cpu_s", "mem_available_start_mib",
                   "mem_available_end_mib")


def figures(trial: Trial) -> dict[str, Any]:
    """A trial's figures, with the derived ones (total CPU, the per-CPU headline)."""
    row = asdict(trial)
    row["total_cpu_s"] = trial.total_cpu_s
    row["saved_byte_seconds_per_cpu_s"] = per_cpu(trial.saved_byte_seconds, trial.ksmd_cpu_s)
    row["saved_byte_seconds_per_total_cpu_s"] = per_cpu(trial.saved_byte_seconds,
                                                        trial.total_cpu_s)
    return row


def summarise(trials: Sequence[Trial]) -> dict[str, Any]:
    """Medians over the undisturbed trials (all of them, flagged, when none was)."""
    clean = [t for t in trials if t.disturbed is None]
    used = clean or list(trials)
    rows = [figures(t) for t in used]
    summary: dict[str, Any] = {
        "t90_s": _round(median_or_none((r["t90_s"] for r in rows), none_is_inf=True)),
    }
    for key in SUMMARY_FIGURES:
        summary[key] = _round(median_or_none(r[key] for r in rows))
    summary["pages_sharing"] = int(statistics.median(t.pages_sharing for t in used))
    summary["achievable"] = used[0].achievable
    summary["window_s"] = used[0].window_s
    summary["n"] = len(used)
    if not clean:
        summary["disturbed_only"] = True
    disturbed = [t.disturbed for t in trials if t.disturbed]
    if disturbed:
        summary["disturbed"] = disturbed
    if len(used) > 1:
        summary["spread"] = {key: spread(_round(r[key]) for r in rows)
                             for key in ("t90_s", "ksmd_cpu_s", "controller_cpu_s",
                                         "saved_byte_seconds", "saved_byte_seconds_per_cpu_s")}
    if len(trials) > 1:
        summary["runs"] = [{k: _round(v) if isinstance(v, float) else v
                            for k, v in figures(t).items()} for t in trials]
    return summary


def _round(value: float | None) -> float | None:
    if value is None:
        return None
    return round(value, 3) if abs(value) < 1e6 else float(round(value))


def compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Adaptive against every baseline that ran, figure by figure."""
    return compare_all(results, "adaptive", BASELINES)


def _fmt(value: float | None, width: int, digits: int = 2) -> str:
    return f"{'null' if value is None else f'{value:.{digits}f}':>{width}}"


def _gib(value: float | None) -> float | None:
    return None if value is None else value / GIB


def table(results: dict[str, dict[str, Any]]) -> str:
    head = (f"{'strategy':<22}{'t90_s':>8}{'ksmd_cpu_s':>12}{'ctl_cpu_s':>11}"
            f"{'saved_GiB_s':>13}{'GiB_s/ksmd_cpu_s':>18}  pages_sharing / achievable")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        if r.get("not_run"):
            continue
        share = 100.0 * r["pages_sharing"] / r["achievable"] if r["achievable"] else 0.0
        flag = "  (disturbed)" if r.get("disturbed_only") else ""
        lines.append(f"{name:<22}{_fmt(r['t90_s'], 8)}{_fmt(r['ksmd_cpu_s'], 12)}"
                     f"{_fmt(r['controller_cpu_s'], 11, 3)}"
                     f"{_fmt(_gib(r['saved_byte_seconds']), 13, 1)}"
                     f"{_fmt(_gib(r['saved_byte_seconds_per_cpu_s']), 18, 1)}  "
                     f"{r['pages_sharing']} / {r['achievable']} ({share:.0f}%){flag}")
    return "\n".join(lines)


SHORT = {"t90_s": "t90", "ksmd_cpu_s": "ksmd cpu", "total_cpu_s": "ksmd+controller cpu",
         "saved_byte_seconds": "saved byte-s",
         "saved_byte_seconds_per_cpu_s": "saved byte-s per ksmd cpu-s"}


def verdict_lines(cmp: dict[str, Any]) -> list[str]:
    if "skipped" in cmp:
        return [f"comparison skipped: {cmp['skipped']}"]
    lines = []
    for name, row in cmp.items():
        if name == "tally":
            continue
        for key, cell in row.items():
            ours, theirs = cell["adaptive"], cell[name]
            scale = GIB if key.startswith("saved") else 1.0
            unit = " GiB" if key.startswith("saved") else ""
            lines.append(f"{cell['verdict']:<4} {SHORT[key]}: adaptive "
                         f"{_fmt(None if ours is None else ours / scale, 0)}{unit} vs {name} "
                         f"{_fmt(None if theirs is None else theirs / scale, 0)}{unit}"
                         f" (ratio {cell['ratio']})")
    tally = cmp["tally"]
    lines.append(f"tally: {tally['PASS']} PASS, {tally['TIE']} TIE, {tally['MISS']} MISS")
    return lines


# ------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ksm_efficiency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="4 x 32 MiB and a 20 s window (default: 4 x 1 GiB, 300 s)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run every strategy N times; report medians (default 1)")
    parser.add_argument("--strategies", default=",".join(STRATEGY_NAMES),
                        help=f"comma-separated subset of {','.join(STRATEGY_NAMES)}")
    parser.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                        help="comma-separated subset of static,churn,guests (default "
                             "static,churn; guests boots real TCG VMs from one image)")
    parser.add_argument("--pressure", choices=("real", "simulated"), default="real",
                        help="real: a memory rig holds MemAvailable at the target (default); "
                             "simulated: every strategy is told a constant MemAvailable")
    parser.add_argument("--available-percent", type=float, default=10.0,
                        help="MemAvailable to hold (real) or show (simulated), in percent of "
                             "MemTotal (default 10; real pressure never goes below 4.5 GiB)")
    parser.add_argument("--window", type=float, default=None, metavar="S",
                        help="the fixed window per trial (default 300 s, --quick 20 s)")
    parser.add_argument("--size-mib", type=int, default=None,
                        help="per worker (default 1024, --quick 32)")
    parser.add_argument("--churn-percent", type=float, default=1.0,
                        help="churn workload: percent of pages rewritten per second")
    parser.add_argument("--frontier", action="store_true",
                        help="also run the grid of fixed scan rates on the first workload and "
                             "plot bench/ksm_frontier.png (the full run always does)")
    parser.add_argument("--no-frontier", action="store_true",
                        help="skip the grid of fixed rates even in the full run")
    parser.add_argument("--frontier-png", default="bench/ksm_frontier.png")
    parser.add_argument("--frontier-grid", default=None, metavar="PxS,...",
                        help="a reduced grid, e.g. 300x20,1000x20 (default: pages "
                             f"{FRONTIER_PAGES} x sleep_millisecs {FRONTIER_SLEEP_MS})")
    parser.add_argument("--frontier-repeat", type=int, default=1, metavar="N",
                        help="repeats of each fixed rate (default 1)")
    parser.add_argument("--trials-log", default=None, metavar="PATH",
                        help="append every trial's figures to PATH (JSON lines) as it ends")
    parser.add_argument("--verbose", action="store_true",
                        help="print every control cycle (adaptive: phase, pages, sleep, ...)")
    args = parser.parse_args(argv)
    args.strategy_list = [s.strip() for s in args.strategies.split(",") if s.strip()]
    args.workload_list = [s.strip() for s in args.workloads.split(",") if s.strip()]
    unknown = sorted(set(args.strategy_list) - set(STRATEGY_NAMES)) + \
        sorted(set(args.workload_list) - set(WORKLOADS))
    if unknown or not args.strategy_list or not args.workload_list or args.repeat < 1:
        parser.error(f"unknown names {unknown}" if unknown else "nothing to run")
    if not args.quick:
        args.frontier = True
    if args.no_frontier:
        args.frontier = False
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else Settings()
    return replace(base, available_percent=args.available_percent,
                   churn_percent=args.churn_percent,
                   window_s=args.window if args.window is not None else base.window_s,
                   size_mib=args.size_mib if args.size_mib is not None else base.size_mib)


def header(settings: Settings, pressure: Pressure, args: argparse.Namespace) -> str:
    mergeable = settings.workers * settings.size_mib
    return (
        f"KSM efficiency: {settings.workers} workers x {settings.size_mib} MiB = {mergeable} MiB "
        f"mergeable (shared fraction {settings.shared_fraction}), workloads "
        f"{','.join(args.workload_list)} (churn {settings.churn_percent:g}%/s), the same fixed "
        f"window of {settings.window_s:.0f} s for every strategy, {args.repeat} repeat(s)\n"
        f"{pressure.describe()}. The workload, sysfs writes, merging and ksmd CPU are real."
    )


def run_set(names: Sequence[str], kind: str, args: argparse.Namespace, settings: Settings,
            pressure: Pressure, clock: ksm_host.KsmdClock) -> dict[str, dict[str, Any]]:
    trials: dict[str, list[Trial]] = {name: [] for name in names}
    simulated = None if pressure.real else settings.available_percent
    for repeat in range(args.repeat):
        # Rotate the order per repeat so no strategy always runs first (or last).
        shift = repeat % len(names)
        for name in [*names[shift:], *names[:shift]]:
            print(f"[{kind}, repeat {repeat + 1}/{args.repeat}] {name} ...", flush=True)
            make = factory(name, pressure.view, simulated)
            trial = run_trial(make, kind, settings, pressure, clock,
                              _log if args.verbose else _quiet)
            trials[name].append(trial)
            if args.trials_log:  # every trial as it ends: a run cut short still leaves these
                with open(args.trials_log, "a") as f:
                    f.write(json.dumps({"workload": kind, "strategy": name,
                                        "repeat": repeat + 1, **figures(trial)}) + "\n")
            print(f"  t90={_fmt(trial.t90_s, 0)} s, ksmd cpu {trial.ksmd_cpu_s:.2f} s, "
                  f"controller cpu {trial.controller_cpu_s:.3f} s, saved "
                  f"{trial.saved_byte_seconds / GIB:.2f} GiB*s, MemAvailable "
                  f"{trial.mem_available_start_mib} -> {trial.mem_available_end_mib} MiB, "
                  f"pages_to_scan at the end {trial.pages_to_scan_end}",
                  flush=True)
    return {name: summarise(found) for name, found in trials.items()}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not ksm_host.is_root():
        print("bench.ksm_efficiency needs root: it writes /sys/kernel/mm/ksm and reads ksmd's "
              "CPU time. Run it with sudo.", file=sys.stderr)
        return 2
    names = list(args.strategy_list)
    if "kernel-advisor" in names and not KernelAdvisor.available():
        print("this kernel has no KSM advisor (advisor_mode): kernel-advisor not run",
              flush=True)
        names.remove("kernel-advisor")
    settings = settings_from(args)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # so `finally` restores KSM on kill too
    original = ksm_host.snapshot()
    started = time.monotonic()
    pressure = Pressure(args.pressure, settings.available_percent)
    pressure_word = "real" if pressure.real else "simulated"
    print(header(settings, pressure, args), flush=True)
    per_workload: dict[str, dict[str, Any]] = {}
    frontier: dict[str, dict[str, Any]] = {}
    try:
        clock = ksm_host.KsmdClock()
        for kind in args.workload_list:
            per_workload[kind] = run_set(names, kind, args, settings, pressure, clock)
        if args.frontier:
            frontier = run_set(frontier_names(args.frontier_grid), args.workload_list[0],
                               argparse.Namespace(**{**vars(args),
                                                     "repeat": args.frontier_repeat}),
                               settings, pressure, clock)
    finally:
        pressure.close()
        left = ksm_host.restore(original)
        print("KSM settings restored" if not left else f"WARNING: not restored: {left}",
              file=sys.stderr if left else sys.stdout, flush=True)
    elapsed = time.monotonic() - started
    report: dict[str, Any] = {}
    for kind, results in per_workload.items():
        for name in STRATEGY_NAMES:  # the JSON always names every strategy
            results.setdefault(name, {"t90_s": None, "ksmd_cpu_s": None, "not_run": True})
        cmp = compare(results)
        print(f"\n== workload {kind}")
        print(table(results))
        for line in verdict_lines(cmp):
            print(line)
        report[kind] = {**results, "comparison": cmp}
    if frontier:
        print(f"\n== frontier (fixed scan rates, workload {args.workload_list[0]})")
        print(table(frontier))
        png = plot(frontier, per_workload[args.workload_list[0]], settings, pressure,
                   args.frontier_png, quick=args.quick, reduced=bool(args.frontier_grid))
        print(f"frontier plot: {png}" if png else "frontier plot not written "
              "(matplotlib missing: pip install '.[bench]' in a venv of your own)")
    print(f"({pressure_word} memory pressure; window {settings.window_s:g} s for every "
          f"strategy; median of {args.repeat} run(s); whole run {elapsed:.0f} s)")
    first = args.workload_list[0]
    out: dict[str, Any] = {
        **report[first],  # today's layout: one key per strategy (the first workload) ...
        "workload": first,
        "workloads": report,  # ... and every workload in full
        "window_s": settings.window_s,
        "pressure": pressure_word,
        "pressure_target_mib": pressure.target >> 20 if pressure_word == "real" else None,
        "mem_total_mib": pressure.total_kib >> 10,
        "mergeable_mib": settings.workers * settings.size_mib,
        "settings": asdict(settings),
        "repeat": args.repeat,
        "elapsed_s": round(elapsed),
    }
    if frontier:
        out["frontier"] = frontier
    print(json.dumps(out))
    return 0


def plot(frontier: dict[str, dict[str, Any]], strategies: dict[str, dict[str, Any]],
         settings: Settings, pressure: Pressure, path: str, quick: bool,
         reduced: bool) -> str | None:
    from bench.ksm_plot import frontier_png

    scale = "quick scale (reduced)" if quick else "full scale"
    if reduced:
        scale += f", reduced grid ({len(frontier)} rates)"
    title = (f"KSM: {settings.workers} x {settings.size_mib} MiB, {settings.window_s:g} s "
             f"window, {pressure.mode} pressure, {scale}")
    return frontier_png(frontier, strategies, title, settings.window_s, path)


if __name__ == "__main__":
    sys.exit(main())
