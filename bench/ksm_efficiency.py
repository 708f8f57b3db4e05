"""KSM efficiency: the same real merge workload under four strategies, one after another.

    python -m bench.ksm_efficiency [--quick] [--repeat N] [--strategies a,b] [--verbose]

For each strategy: time to 90% of the achievable ``pages_sharing`` (t90), ksmd's CPU time to get
there and over a steady window after it. The host is shown to every strategy as being under
memory pressure (simulated MemAvailable); the workload, the sysfs writes, the merging and
ksmd's CPU time are real. Needs root. The KSM settings found at start are restored at the end.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench import ksm_host
from bench.baselines import MemoryView, simulated_pressure
from bench.common import log as _log
from bench.common import quiet as _quiet
from bench.common import raise_interrupt as _raise_interrupt
from bench.strategies import BASELINES, STRATEGY_NAMES, Strategy, factory
from overcommit.demo.workload import MergeWorkload

TARGET_SHARE = 0.9
ATTEMPTS = 8  # per trial, when someone else disturbs KSM during the measurement
QUIET_WAIT_S = 600.0  # how long to wait for other KSM users to finish before a trial
QUIET_HOLD_S = 30.0  # ... and for how long they must have been gone (they come in bursts)


@dataclass(frozen=True)
class Settings:
    workers: int = 4
    size_mib: int = 128
    shared_fraction: float = 0.75
    steady_s: float = 60.0
    timeout_s: float = 240.0
    poll_s: float = 0.25
    available_percent: float = 10.0


# --quick must fit in about a minute: a smaller workload, and by default only the fastest
# baseline (ksmtuned) against adaptive; kernel-default and kubevirt need minutes to reach t90.
QUICK = Settings(size_mib=32, steady_s=20.0, timeout_s=20.0)
QUICK_STRATEGIES = ("ksmtuned", "adaptive")


@dataclass(frozen=True)
class Trial:
    """One strategy, one repeat. CPU figures are ksmd's CPU seconds."""

    t90_s: float | None
    cpu_to_t90_s: float | None
    cpu_steady_s: float | None
    ksmd_cpu_s: float
    pages_sharing: int
    achievable: int
    disturbed: str | None = None


class Guard:
    """Notices anyone else touching KSM during a trial, which would corrupt the measurement:
    settings changed behind the strategy's back, or other processes giving ksmd work."""

    def __init__(self, own_pids: set[int]) -> None:
        self.own = own_pids | {os.getpid()}
        self.expected: tuple[str, ...] = ()
        self.polls = 0

    def at_start(self) -> str | None:
        """Right before t=0 KSM must still be as reset: stopped, at the default rate."""
        now = ksm_host.rate_settings()
        if now != ksm_host.RESET_RATE:
            return f"KSM changed by someone else before the start: {now}"
        others = ksm_host.foreign_ksm_users(self.own)
        return f"other processes use KSM: pids {others}" if others else None

    def after_act(self) -> None:
        self.expected = ksm_host.rate_settings()

    def check(self, sharing: int, achievable: int) -> str | None:
        self.polls += 1
        now = ksm_host.rate_settings()
        if self.expected and now != self.expected:
            return f"run/pages_to_scan/sleep_millisecs changed by someone else: " \
                   f"{self.expected} -> {now}"
        if sharing > 1.02 * achievable:
            return f"pages_sharing {sharing} exceeds what the workload can share ({achievable})"
        others = ksm_host.foreign_ksm_users(self.own) if self.polls % 8 == 0 else []
        return f"other processes use KSM: pids {others}" if others else None


# ------------------------------------------------------------------------------------------------
# Measuring one strategy


class Run:
    """The polling loop of one trial: drive the strategy on its schedule, sample every poll."""

    def __init__(self, strategy: Strategy, settings: Settings, workload: MergeWorkload,
                 clock: ksm_host.KsmdClock, log: Callable[[str], None]) -> None:
        self.strategy, self.settings, self.clock, self.log = strategy, settings, clock, log
        self.achievable = workload.achievable_sharing
        self.guard = Guard({p.pid for p in workload.processes})
        self.disturbed = self.guard.at_start()
        self.target = math.ceil(TARGET_SHARE * self.achievable)
        self.t0 = time.monotonic()
        self.cpu0 = clock.seconds()
        self.next_act = self.t0
        self.next_poll = self.t0
        self.end = self.t0 + settings.timeout_s
        self.t90: float | None = None
        self.cpu_t90: float | None = None
        self.sharing = 0

    def measure(self) -> Trial:
        while not self.disturbed:
            now = time.monotonic()
            if now >= self.next_act:
                self._act()
            if now >= self.next_poll:
                self._poll(now)
            if time.monotonic() >= self.end:
                break
            wake = min(self.next_act, self.next_poll, self.end)
            time.sleep(max(0.0, wake - time.monotonic()))
        return self._result()

    def _act(self) -> None:
        started = time.monotonic() - self.t0
        text = self.strategy.act()
        self.guard.after_act()
        self.log(f"  [{started:7.2f}s] {self.strategy.name}: {text}")
        # Like `overcommit run`: wait the interval after the cycle has finished.
        self.next_act = time.monotonic() + self.strategy.interval_s

    def _poll(self, now: float) -> None:
        self.sharing = ksm_host.read_int("pages_sharing")
        self.disturbed = self.guard.check(self.sharing, self.achievable)
        if self.t90 is None and self.sharing >= self.target:
            self.t90 = now - self.t0
            self.cpu_t90 = self.clock.seconds() - self.cpu0
            self.end = now + self.settings.steady_s
            self.log(f"  [{self.t90:7.2f}s] t90 reached: pages_sharing={self.sharing}, "
                     f"ksmd cpu {self.cpu_t90:.2f}s")
        self.next_poll += self.settings.poll_s

    def _result(self) -> Trial:
        total = self.clock.seconds() - self.cpu0
        steady = None if self.cpu_t90 is None else total - self.cpu_t90
        return Trial(self.t90, self.cpu_t90, steady, total,
                     ksm_host.read_int("pages_sharing"), self.achievable, self.disturbed)


def run_trial(make: Callable[[], Strategy], settings: Settings, clock: ksm_host.KsmdClock,
              log: Callable[[str], None]) -> Trial:
    """Measure once; if someone else disturbed KSM meanwhile, wait for quiet and measure again."""
    for attempt in range(1, ATTEMPTS + 1):
        wait_for_quiet(QUIET_HOLD_S if attempt > 1 else 0.0)
        trial = measure_once(make, settings, clock, log)
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


def measure_once(make: Callable[[], Strategy], settings: Settings, clock: ksm_host.KsmdClock,
                 log: Callable[[str], None]) -> Trial:
    """Fresh start (unmerged, default rate, stopped), fresh workload, measure, clean up."""
    ksm_host.reset_to_defaults()
    workload = MergeWorkload(settings.workers, settings.size_mib, settings.shared_fraction)
    workload.start()
    try:
        strategy = make()
        try:
            return Run(strategy, settings, workload, clock, log).measure()
        finally:
            strategy.close()
    finally:
        workload.stop()
        ksm_host.unmerge_all()


# ------------------------------------------------------------------------------------------------
# Aggregating and reporting


def median_or_none(values: Iterable[float | None], none_is_inf: bool = False) -> float | None:
    """Median; with ``none_is_inf`` a missing value (timed out) counts as infinitely slow."""
    if none_is_inf:
        finite = [math.inf if v is None else v for v in values]
        result = statistics.median(finite) if finite else math.inf
        return None if math.isinf(result) else result
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(trials: Sequence[Trial]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "t90_s": _round(median_or_none((t.t90_s for t in trials), none_is_inf=True)),
        "cpu_to_t90_s": _round(median_or_none(t.cpu_to_t90_s for t in trials)),
        "cpu_steady_s": _round(median_or_none(t.cpu_steady_s for t in trials)),
        "ksmd_cpu_s": _round(median_or_none(t.ksmd_cpu_s for t in trials)),
        "pages_sharing": int(statistics.median(t.pages_sharing for t in trials)),
        "achievable": trials[0].achievable,
    }
    disturbed = [t.disturbed for t in trials if t.disturbed]
    if disturbed:
        summary["disturbed"] = disturbed
    if len(trials) > 1:
        summary["runs"] = [{k: round(v, 3) if isinstance(v, float) else v
                            for k, v in asdict(t).items()} for t in trials]
    return summary


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Adaptive against the baseline with the smallest t90 (a timeout counts as infinite)."""
    baselines = [name for name in BASELINES if name in results]
    if "adaptive" not in results or not baselines:
        return {"skipped": "needs adaptive and at least one baseline"}
    best = min(baselines, key=lambda n: _t90_key(results[n]))
    ours, theirs = results["adaptive"], results[best]
    t90_pass = _t90_key(ours) <= _t90_key(theirs) and ours["t90_s"] is not None
    cpu_limit = 0.5 * theirs["ksmd_cpu_s"]
    return {
        "best_baseline": best,
        "adaptive_t90_s": ours["t90_s"], "baseline_t90_s": theirs["t90_s"],
        "t90_pass": t90_pass,
        "adaptive_ksmd_cpu_s": ours["ksmd_cpu_s"], "baseline_ksmd_cpu_s": theirs["ksmd_cpu_s"],
        "cpu_limit_s": round(cpu_limit, 3),
        "cpu_ratio": round(ours["ksmd_cpu_s"] / theirs["ksmd_cpu_s"], 3)
        if theirs["ksmd_cpu_s"] else None,
        "cpu_pass": ours["ksmd_cpu_s"] <= cpu_limit,
    }


def _t90_key(result: dict[str, Any]) -> float:
    return math.inf if result["t90_s"] is None else float(result["t90_s"])


def _fmt(value: float | None, width: int) -> str:
    return f"{'null' if value is None else f'{value:.2f}':>{width}}"


def table(results: dict[str, dict[str, Any]]) -> str:
    head = (f"{'strategy':<15}{'t90_s':>9}{'cpu_to_t90_s':>14}{'cpu_steady_s':>14}"
            f"{'ksmd_cpu_s':>12}  pages_sharing / achievable")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        share = 100.0 * r["pages_sharing"] / r["achievable"] if r["achievable"] else 0.0
        lines.append(f"{name:<15}{_fmt(r['t90_s'], 9)}{_fmt(r['cpu_to_t90_s'], 14)}"
                     f"{_fmt(r['cpu_steady_s'], 14)}{_fmt(r['ksmd_cpu_s'], 12)}  "
                     f"{r['pages_sharing']} / {r['achievable']} ({share:.0f}%)")
    return "\n".join(lines)


def verdict_lines(cmp: dict[str, Any]) -> list[str]:
    if "skipped" in cmp:
        return [f"comparison skipped: {cmp['skipped']}"]
    best = cmp["best_baseline"]
    return [
        f"{'PASS' if cmp['t90_pass'] else 'MISS'} t90: adaptive {_fmt(cmp['adaptive_t90_s'], 0)}"
        f" s <= {best} {_fmt(cmp['baseline_t90_s'], 0)} s",
        f"{'PASS' if cmp['cpu_pass'] else 'MISS'} ksmd cpu: adaptive "
        f"{cmp['adaptive_ksmd_cpu_s']:.2f} s <= 0.5 x {best} {cmp['baseline_ksmd_cpu_s']:.2f} s"
        f" = {cmp['cpu_limit_s']:.2f} s (ratio {cmp['cpu_ratio']})",
    ]


# ------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ksm_efficiency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="4 x 32 MiB, 20 s steady window, 20 s timeout, and only "
                             "ksmtuned and adaptive unless --strategies says otherwise")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run every strategy N times; report medians (default 1)")
    parser.add_argument("--strategies", default=None,
                        help=f"comma-separated subset of {','.join(STRATEGY_NAMES)}")
    parser.add_argument("--available-percent", type=float, default=10.0,
                        help="simulated MemAvailable in percent of MemTotal (default 10)")
    parser.add_argument("--verbose", action="store_true",
                        help="print every control cycle (adaptive: phase, pages, sleep, ...)")
    args = parser.parse_args(argv)
    if args.strategies is None:
        args.strategies = ",".join(QUICK_STRATEGIES if args.quick else STRATEGY_NAMES)
    args.strategy_list = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = sorted(set(args.strategy_list) - set(STRATEGY_NAMES))
    if unknown or not args.strategy_list or args.repeat < 1:
        parser.error(f"unknown strategies {unknown}" if unknown else "nothing to run")
    return args


def mem_total_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    raise RuntimeError("no MemTotal in /proc/meminfo")


def header(settings: Settings, view: MemoryView, args: argparse.Namespace) -> str:
    return (
        f"KSM efficiency: {settings.workers} workers x {settings.size_mib} MiB "
        f"(shared fraction {settings.shared_fraction}), steady window {settings.steady_s:.0f} s, "
        f"timeout {settings.timeout_s:.0f} s, {args.repeat} repeat(s)\n"
        f"SIMULATED MEMORY PRESSURE: every strategy is told MemAvailable = "
        f"{settings.available_percent:g}% of MemTotal ({view.available_kib >> 10} of "
        f"{view.total_kib >> 10} MiB); the real host is not short of memory. The workload, "
        f"sysfs writes, merging and ksmd CPU are real."
    )


def run_all(args: argparse.Namespace, settings: Settings) -> dict[str, dict[str, Any]]:
    view = simulated_pressure(mem_total_kib(), settings.available_percent)
    print(header(settings, view, args), flush=True)
    clock = ksm_host.KsmdClock()
    trials: dict[str, list[Trial]] = {name: [] for name in args.strategy_list}
    for repeat in range(args.repeat):
        # Rotate the order per repeat so no strategy always runs first (or last).
        order = args.strategy_list[repeat % len(args.strategy_list):] + \
            args.strategy_list[:repeat % len(args.strategy_list)]
        for name in order:
            print(f"[repeat {repeat + 1}/{args.repeat}] {name} ...", flush=True)
            make = factory(name, view, settings.available_percent)
            trial = run_trial(make, settings, clock, _log if args.verbose else _quiet)
            trials[name].append(trial)
            print(f"  t90={_fmt(trial.t90_s, 0)} s, ksmd cpu {trial.ksmd_cpu_s:.2f} s", flush=True)
    return {name: summarise(found) for name, found in trials.items()}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not ksm_host.is_root():
        print("bench.ksm_efficiency needs root: it writes /sys/kernel/mm/ksm and reads ksmd's "
              "CPU time. Run it with sudo.", file=sys.stderr)
        return 2
    settings = QUICK if args.quick else Settings()
    settings = Settings(**{**asdict(settings), "available_percent": args.available_percent})
    signal.signal(signal.SIGTERM, _raise_interrupt)  # so `finally` restores KSM on kill too
    original = ksm_host.snapshot()
    started = time.monotonic()
    try:
        results = run_all(args, settings)
    finally:
        left = ksm_host.restore(original)
        print("KSM settings restored" if not left else f"WARNING: not restored: {left}",
              file=sys.stderr if left else sys.stdout, flush=True)
    cmp = compare(results)
    print()
    print(table(results))
    elapsed = time.monotonic() - started
    print(f"(simulated MemAvailable = {settings.available_percent:g}% of MemTotal for every "
          f"strategy; median of {args.repeat} run(s); whole run {elapsed:.0f} s)")
    for line in verdict_lines(cmp):
        print(line)
    for name in STRATEGY_NAMES:  # the JSON always names every strategy
        results.setdefault(name, {"t90_s": None, "ksmd_cpu_s": None, "not_run": True})
    print(json.dumps({**results, "comparison": cmp}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
