"""Our ladder against MOM's and Proxmox's ballooning rules under REAL host memory pressure.

    python -m bench.pressure [--quick] [--repeat N] [--scenarios a,b] [--strategies a,b]

Boots small TCG guests under the real libvirtd and holds real host memory with the test
memory rig (testkit.memrig: unmergeable pages, a safety floor), then runs three scenarios the
planner was not tuned on -- a step load, a burst, a slow leak (bench.pressure_model.scenario)
-- once per strategy on the same guests:

* ladder: our Auto ballooning (planning.balloon.plan_balloons) driven by the node's ladder
  (planning.ladder.step) and our relief decision (planning.relief.decide: recorded, not acted
  on: there is no cluster here);
* mom, proxmox: the re-implementations in bench/balloon_baselines.py.

Every strategy reads the real /proc/meminfo (and the ladder the real /proc/pressure/memory);
for every strategy the ladder's state is computed each cycle from the same real figures, so the
seconds in each state compare. Guest OOM kills come from the guests' kernels, host OOM kills
from /proc/vmstat. Needs root. Guests, rig children, the rig's cgroup and file are removed at
the end, also on Ctrl-C or SIGTERM. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any

from bench import balloon as bb
from bench.balloon_baselines import mom_targets, proxmox_targets
from bench.common import log as _log
from bench.common import quiet as _quiet
from bench.common import raise_interrupt as _raise_interrupt
from bench.pressure_model import (
    BASELINES,
    GIB,
    MIB,
    SCENARIOS,
    STRATEGIES,
    Event,
    Levels,
    Record,
    Scenario,
    aggregate,
    bench_policy,
    levels_for,
    must_show,
    node_view,
    pressured_seconds,
    scenario,
    versus,
)
from overcommit.api.policy import BalloonSpec, LadderRelief, LadderSpec, PolicySpec
from overcommit.host.base import HostFS
from overcommit.host.pressure import PressureSource
from overcommit.planning import ladder as node_ladder
from overcommit.planning import relief
from overcommit.planning.balloon import BalloonPlan, BalloonState, plan_balloons
from overcommit.planning.ladder import Ladder, State, Thresholds
from overcommit.planning.observation import Observation
from overcommit.virt.model import GuestObservation
from testkit import guests, memrig

PREFIX = bb.PREFIX  # oc-bench-balloon-<pid>-<i>: bench.balloon's clean-up of leftovers applies


@dataclass(frozen=True)
class Settings:
    guests: int = 2
    max_mib: int = 512
    stats_period_s: int = 1
    interval_s: int = 2  # one cycle every interval for every strategy
    cycles: int = 12
    repeat: int = 3
    reserve: int = 4 * GIB  # MemAvailable always left to others: the rig's floor
    prewarm_percent: int = 70  # each guest touches this share of its maximum before a trial
    autodeflate: bool = False  # every guest's balloon deflates on OOM (--autodeflate)
    # Every guest reports its free pages: KubeVirt's default for every VM with a balloon, unless
    # the cluster or the VM opts out; it turns reporting off itself only for high-performance
    # VMs, which the agent never balloons. --no-free-page-reporting: plain libvirt's default.
    free_page_reporting: bool = True


QUICK = Settings(cycles=8, repeat=1)


# ------------------------------------------------------------------------------------------------
# The real host


class NodeHost(bb.HostView):
    """The real /proc/meminfo, read as the agent reads it, with the reserve taken out
    (pressure_model.node_view), and the real /proc/pressure/memory."""

    def __init__(self, reserve: int) -> None:
        super().__init__(0.0)
        self.reserve = reserve
        self.psi = PressureSource(HostFS("/"))

    def __call__(self, now: float) -> Observation:
        reading = self.source.read()
        reading = replace(reading, counters=node_view(reading.counters, self.reserve))
        return Observation(time=now, readings={"meminfo": reading, "psi": self.psi.read()},
                           wall_time=time.time())


def vmstat(*names: str) -> dict[str, int]:
    out = dict.fromkeys(names, 0)
    with open("/proc/vmstat") as f:
        for line in f:
            key, _, value = line.partition(" ")
            if key in out:
                out[key] = int(value)
    return out


# ------------------------------------------------------------------------------------------------
# The strategies


@dataclass
class LadderPlanner:
    """Our Auto ballooning on the node's ladder of this cycle (set before each plan)."""

    ladder: Ladder | None = None

    def __call__(self, spec: BalloonSpec, seen: Sequence[GuestObservation], host: Observation,
                 prev: BalloonState | None) -> BalloonPlan:
        return plan_balloons(spec, seen, host, prev, ladder=self.ladder)


def planner_of(name: str) -> bb.Planner:
    if name == "ladder":
        return LadderPlanner()
    return {"mom": mom_targets, "proxmox": proxmox_targets}[name]


def candidates(mine: Mapping[str, GuestObservation]) -> list[relief.Candidate]:
    """Our guests as relief would see them on a node (every one migratable, none migrating):
    freed = its balloon size, copied = what it uses."""
    out = []
    for g in mine.values():
        current = g.current_kib * 1024
        usable = g.stats.get("usable", 0) * 1024
        out.append(relief.Candidate("local", g.domain, current, max(0, current - usable),
                                    migratable=True, migrating=False))
    return out


# ------------------------------------------------------------------------------------------------
# One trial


@dataclass
class Bench:
    settings: Settings
    policy: PolicySpec
    fleet: bb.Fleet
    rig: memrig.MemoryRig
    levels: Levels
    thresholds: Thresholds
    log: Callable[[str], None]
    host: NodeHost

    @property
    def spec(self) -> BalloonSpec:
        assert self.policy.balloon is not None
        return self.policy.balloon

    @property
    def busy(self) -> guests.Domain:
        return self.fleet.domains[self.fleet.names[0]]

    def reset(self, sc: Scenario) -> None:
        """Every guest back to its maximum with its memory resident on the host (touched, then
        freed inside), the busy guest at its base load, the host at the scenario's start
        level. The rig first gives back what the guests may take again, so resetting them can
        never bring the host near the floor."""
        for domain in self.fleet.domains.values():
            with suppress(guests.GuestError):
                guests.stop_eating(domain)
        room = sum(g.max_kib - g.current_kib for g in self.fleet.mine().values()) * 1024
        room += self.settings.guests * self.settings.max_mib * MIB  # prewarm touches
        self.rig.fill_to(memrig.mem_available() + room, tolerance=memrig.CHUNK)
        self.fleet.move_all({n: g.max_kib for n, g in self.fleet.mine().items()})
        touch = self.settings.max_mib * self.settings.prewarm_percent // 100
        for domain in self.fleet.domains.values():
            eat_counted(domain, touch, self.log)
            guests.stop_eating(domain)
        eat_counted(self.busy, sc.base_mib, self.log)
        self.rig.fill_to(self.levels.of(sc.start) + self.settings.reserve,
                         tolerance=memrig.CHUNK)
        self.fleet.wait_fresh(time.time())

    def take(self, amount: int) -> int:
        """The rig holds ``amount`` bytes more (less, negative), in whole chunks and whatever
        the guests' balloons do meanwhile, so every strategy meets the same host; never closer
        to the rig's floor than two chunks (the fillers stop at the floor themselves). What it
        did."""
        if amount > 0:
            amount = min(amount, memrig.mem_available() - self.rig.floor - 2 * memrig.CHUNK)
        return self.rig.adjust(amount) if amount else 0

    def trial(self, name: str, sc: Scenario) -> Record:
        fleet, record = self.fleet, Record()
        driver = bb.Driver(name, planner_of(name), self.spec, fleet, self.log)
        relief_spec = (self.policy.ladder or LadderSpec()).relief or LadderRelief()
        self.reset(sc)
        ooms, before = fleet.oom_counts(), vmstat("oom_kill", "pswpin")
        stats0 = {n: dict(g.stats) for n, g in fleet.mine().items()}
        ladder: Ladder | None = None
        memory = relief.Memory()
        settled: dict[str, int] = {}  # each guest's balloon at the end of the last cycle, KiB
        with ExitStack() as thrash:
            # Warm-up: one observation a cycle before cycle 1, planned but not applied (a
            # running agent has seen its guests before; see bench/README-balloon.md).
            start = time.monotonic()
            obs = self.host(start)
            ladder = node_ladder.step(None, obs, self.policy)
            if isinstance(driver.planner, LadderPlanner):
                driver.planner.ladder = ladder
            driver.state = driver.planner(self.spec, fleet.observe(start), obs, None).state
            bb.pace(start, self.settings.interval_s)
            for k, event in enumerate(sc.events):
                start = time.monotonic()
                self.apply(event, thrash)
                fleet.guard_period()
                fleet.wait_fresh(time.time())
                seen = fleet.observe(time.monotonic())
                obs = self.host(time.monotonic())
                ladder = node_ladder.step(ladder, obs, self.policy)
                record.states.append((obs.time, ladder.state))
                available = ladder.reading.available
                if available is not None:
                    record.lowest_available = min(record.lowest_available or available,
                                                  available)
                mine = fleet.mine(seen)
                for n, g in mine.items():  # grown since the last cycle settled: the guest's doing
                    if n in settled:
                        record.taken_back_kib += max(0, g.current_kib - settled[n])
                if name == "ladder":
                    decision = relief.decide(ladder, relief_spec, candidates(mine),
                                             relief.InFlight(), memory, time.monotonic())
                    memory = decision.memory
                    if decision.ask is not None:
                        record.relief_at.append(k)
                    if decision.status:
                        self.log(f"    relief: {decision.status}")
                    assert isinstance(driver.planner, LadderPlanner)
                    driver.planner.ladder = ladder
                self.log(f"  [{name} {sc.name} {k + 1}/{sc.cycles} {bb._clock()}] "
                         f"{ladder.state.value}: MemAvailable "
                         f"{(available or 0) >> 20} MiB, PSI some "
                         f"{ladder.reading.psi_some} full {ladder.reading.psi_full} "
                         f"(1/100 %); guests {[g.current_kib >> 10 for g in mine.values()]} MiB")
                driver.cycle(seen, obs)
                after = fleet.mine()
                settled = {n: g.current_kib for n, g in after.items()}
                for n, g in after.items():
                    moved = g.current_kib - mine[n].current_kib
                    if moved < 0:
                        record.reclaimed_kib -= moved
                    else:
                        record.returned_kib += moved
                if self.rig.tripped:  # others took memory: the host no longer follows the plan
                    raise memrig.RigTripped(self.rig.tripped)
                bb.pace(start, self.settings.interval_s)
            record.end = time.monotonic()
        for domain in fleet.domains.values():
            with suppress(guests.GuestError):
                guests.stop_eating(domain)
        end = vmstat("oom_kill", "pswpin")
        record.guest_oom_kills = sum(fleet.oom_counts().values()) - sum(ooms.values())
        record.host_oom_kills = end["oom_kill"] - before["oom_kill"]
        record.host_swap_in_pages = end["pswpin"] - before["pswpin"]
        stats1 = {n: g.stats for n, g in fleet.mine().items()}
        for n, s in stats1.items():
            record.guest_swap_in_kib += max(0, s.get("swap_in", 0) - stats0[n].get("swap_in", 0))
            record.guest_major_faults += max(0, s.get("major_fault", 0)
                                             - stats0[n].get("major_fault", 0))
        record.disturbed = list(fleet.disturbances)
        fleet.disturbances.clear()
        return record

    def apply(self, event: Event, thrash: ExitStack) -> None:
        if event.empty:
            return
        if event.take:
            took = self.take(event.take)
            self.log(f"    host: the rig took {took >> 20} MiB (asked {event.take >> 20} MiB)")
        if event.thrash is True:
            thrash.enter_context(self.rig.thrash(workers=1))
            self.log("    host: memory stalls (PSI) started")
        elif event.thrash is False:
            thrash.close()
            self.log("    host: memory stalls stopped")
        if event.stop:
            guests.stop_eating(self.busy)
        if event.eat_mib:
            eat_counted(self.busy, event.eat_mib, self.log)


def eat_counted(domain: guests.Domain, mib: int, log: Callable[[str], None]) -> None:
    """Eat; an eater OOM-killed while filling is counted from the guest's log, not an error."""
    if mib <= 0:
        return
    try:
        guests.eat(domain, mib)
    except guests.GuestError:
        log(f"    {domain.name()}: eat {mib} MiB: an eater was OOM-killed")


# ------------------------------------------------------------------------------------------------
# Running it all


@contextmanager
def rig_of(floor: int) -> Iterator[memrig.MemoryRig]:
    rig = memrig.MemoryRig(floor=floor)
    try:
        yield rig
    finally:
        rig.close()
        print("memory rig closed (every filler and thrasher killed)", flush=True)


def run_all(args: argparse.Namespace, settings: Settings, policy: PolicySpec, total: int,
            runs: dict[str, dict[str, list[dict[str, Any]]]], voids: list[str]) -> None:
    """Every trial; ``runs`` (scenario -> strategy -> trial summaries) fills as they end, so an
    interrupted run still reports what it measured."""
    log = _log if args.verbose else _quiet
    th, lv = levels_for(policy, total - settings.reserve)
    assert policy.balloon is not None
    bset = bb.Settings(guests=settings.guests, max_mib=settings.max_mib,
                       stats_period_s=settings.stats_period_s, interval_s=settings.interval_s,
                       autodeflate=settings.autodeflate,
                       free_page_reporting=settings.free_page_reporting)
    with bb.fleet_of(bset, policy.balloon, _log) as fleet, rig_of(settings.reserve) as rig:
        if rig.leftovers:
            print(f"removed an earlier rig's leftovers: {rig.leftovers}", flush=True)
        # The guest's side too, not only the domain's XML.
        for wanted, bit, what, flag in (
                (settings.autodeflate, guests.VIRTIO_BALLOON_F_DEFLATE_ON_OOM, "deflate-on-OOM",
                 "--autodeflate"),
                (settings.free_page_reporting, guests.VIRTIO_BALLOON_F_REPORTING,
                 "free page reporting", "--free-page-reporting")):
            if wanted:
                negotiated = [guests.balloon_feature(d, bit) for d in fleet.domains.values()]
                print(f"{what} negotiated by the guests: {negotiated}", flush=True)
                if not all(negotiated):
                    raise RuntimeError(f"{flag}: a guest's balloon did not negotiate it")
        bench = Bench(settings, policy, fleet, rig, lv, th, log, NodeHost(settings.reserve))
        try:
            run_repeats(args, settings, bench, runs, voids)
        finally:
            if bench.rig is not rig:  # a replacement after a safety stop
                bench.rig.close()


def run_repeats(args: argparse.Namespace, settings: Settings, bench: Bench,
                runs: dict[str, dict[str, list[dict[str, Any]]]], voids: list[str]) -> None:
    for repeat in range(settings.repeat):
        for sc_name in args.scenario_list:
            sc = scenario(sc_name, settings.cycles, bench.levels, settings.max_mib)
            shift = repeat % len(args.strategy_list)
            for name in args.strategy_list[shift:] + args.strategy_list[:shift]:
                print(f"[repeat {repeat + 1}/{settings.repeat}] {sc_name} {name} ...",
                      flush=True)
                record = run_trial(bench, name, sc)
                if record is None:
                    voids.append(f"run {repeat + 1} {sc_name} {name}")
                    continue
                summary = record.summary()
                runs[sc_name][name].append(summary)
                print(f"  {summary['guest_oom_kills']} guest / {summary['host_oom_kills']}"
                      f" host OOM kills; states {compact(summary['seconds_in_state'])}; "
                      f"reclaimed {summary['reclaimed_bytes'] >> 20} MiB; taken back by the "
                      f"guests {summary['taken_back_bytes'] >> 20} MiB; relief "
                      f"{summary['relief_requests']} (after {summary['relief_cycles']} "
                      f"cycles); lowest MemAvailable "
                      f"{(summary['lowest_available_bytes'] or 0) >> 20} MiB", flush=True)


def run_trial(bench: Bench, name: str, sc: Scenario) -> Record | None:
    """One trial; the rig's safety stop (others took memory meanwhile, or the guests did) voids
    it: it is run again once with a new rig; None when that stopped too."""
    for attempt in (1, 2):
        try:
            return bench.trial(name, sc)
        except memrig.RigTripped as e:
            bb.warn(f"{name} {sc.name}: the rig's safety stop fired ({e}); "
                    f"{'running it again' if attempt == 1 else 'trial void'}")
            bench.rig.close()
            bench.rig = memrig.MemoryRig(floor=bench.settings.reserve)
    return None


def compact(seconds: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:g}s" for k, v in seconds.items() if v)


def table(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    states = [s.value for s in node_ladder.ORDER]
    head = (f"{'scenario':<9}{'strategy':<9}{'guest OOM':>10}{'host OOM':>9}"
            + "".join(f"{s[:5] + ' s':>9}" for s in states)
            + f"{'reclaimed MiB':>14}{'returned MiB':>13}{'swap-in/s':>10}{'relief':>7}"
              f"{'relief cyc':>11}{'low MiB':>8}")
    lines = [head, "-" * len(head)]
    for sc_name, by in results.items():
        for name, r in by.items():
            if r.get("not_run"):
                continue
            relief_n = "-" if r["relief_requests"] is None else f"{r['relief_requests']:g}"
            cyc = r.get("relief_cycles")
            cyc_text = "-" if name != "ladder" else ("null" if cyc is None else f"{cyc:g}")
            low = r["lowest_available_bytes"]
            lines.append(
                f"{sc_name:<9}{name:<9}{r['guest_oom_kills']:>10g}{r['host_oom_kills']:>9g}"
                + "".join(f"{r['seconds_in_state'][s]:>9.1f}" for s in states)
                + f"{r['reclaimed_bytes'] / MIB:>14.0f}{r['returned_bytes'] / MIB:>13.0f}"
                  f"{r['host_swap_in_pages_per_s']:>10g}{relief_n:>7}{cyc_text:>11}"
                  f"{(low or 0) >> 20:>8}")
    return "\n".join(lines)


def comparisons(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sc_name, by in results.items():
        if "ladder" not in by:
            continue
        if by["ladder"].get("not_run"):
            continue
        out[sc_name] = {b: versus(by["ladder"], by[b]) for b in BASELINES
                        if b in by and not by[b].get("not_run")}
    return out


def verdict_lines(results: Mapping[str, Mapping[str, Mapping[str, Any]]],
                  cmp: Mapping[str, Any], claims: Mapping[str, Any]) -> list[str]:
    lines = []
    for sc_name, by_baseline in cmp.items():
        for b, words in by_baseline.items():
            ours, theirs = results[sc_name]["ladder"], results[sc_name][b]
            lines.append(
                f"{sc_name:<6} ladder vs {b:<8}: guest OOM kills {words['guest_oom_kills']} "
                f"({ours['guest_oom_kills']:g} vs {theirs['guest_oom_kills']:g}); host OOM "
                f"kills {words['host_oom_kills']}; s in Hard+Critical "
                f"{words['seconds_hard_or_critical']} ({pressured_seconds(ours):g} vs "
                f"{pressured_seconds(theirs):g}); reclaimed {words['reclaimed_bytes']} "
                f"({ours['reclaimed_bytes'] >> 20} vs {theirs['reclaimed_bytes'] >> 20} MiB)")
    kills = "MISS" if not claims["no_kills_where_baselines_kill"] else \
        "PASS" if claims["scenarios_where_baselines_kill"] else "VACUOUS"  # nobody killed
    lines.append(f"{kills} ladder has 0 guest and 0 host OOM kills wherever MOM or Proxmox has "
                 f"one (worst runs)")
    lines.append(f"{'PASS' if claims['relief_within_2_cycles'] else 'MISS'} ladder asks for "
                 f"relief within 2 cycles of entering Critical")
    lines += [f"  {n}" for n in claims["notes"]]
    return lines


def header(settings: Settings, th: Thresholds, lv: Levels, total: int,
           args: argparse.Namespace) -> str:
    below, r = th.below, settings.reserve
    node = total - r
    reporting = ("free page reporting (KubeVirt default) for every strategy"
                 if settings.free_page_reporting else
                 "NO free page reporting (plain libvirt default)")
    return (
        f"Pressure: {settings.guests} TCG guests x {settings.max_mib} MiB (virtio balloon, "
        f"stats every {settings.stats_period_s} s"
        f"{', DEFLATE-ON-OOM (autodeflate) for every strategy' if settings.autodeflate else ''}"
        f", {reporting}"
        f"), scenarios {','.join(args.scenario_list)}, "
        f"strategies {','.join(args.strategy_list)}, {settings.repeat} run(s) "
        f"{'(ONE run, no median)' if settings.repeat == 1 else '(medians)'}, "
        f"{settings.cycles} cycles of {settings.interval_s} s per trial\n"
        f"REAL host memory and PSI. The machine has MemTotal {total >> 20} MiB; "
        f"{r >> 20} MiB of MemAvailable are always left to others (the rig's floor), so "
        f"EVERY strategy reads the real /proc/meminfo with those {r >> 20} MiB taken out: "
        f"a node of {node >> 20} MiB. Ladder for it (defaults, M {th.minimum >> 20} MiB): "
        f"Critical < {below[State.CRITICAL] >> 20}, Hard < {below[State.HARD] >> 20}, Soft < "
        f"{below[State.SOFT] >> 20} ({th.why[State.SOFT]}), Plenty >= "
        f"{below[State.CLEAR] >> 20} MiB; MOM's and Proxmox's 20% of MemTotal: "
        f"{node // 5 >> 20} MiB. The rig aims the node's MemAvailable at Soft "
        f"{lv.soft >> 20}, Hard {lv.hard >> 20}, Critical {lv.critical >> 20} MiB (the "
        f"machine's at {(lv.soft + r) >> 20}, {(lv.hard + r) >> 20}, "
        f"{(lv.critical + r) >> 20} MiB).")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pressure",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one run of 8 cycles per trial instead of medians of 3 x 12")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="runs per strategy and scenario (default 3; --quick 1)")
    parser.add_argument("--cycles", type=int, default=None, help="cycles per trial")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"comma-separated subset of {','.join(STRATEGIES)}")
    parser.add_argument("--reserve-mib", type=int, default=None,
                        help="MemAvailable always left to others, the rig's floor (default 4096)")
    parser.add_argument("--autodeflate", action="store_true",
                        help="every guest's balloon deflates on OOM (libvirt autodeflate='on'), "
                             "for every strategy; labelled in the output")
    parser.add_argument("--free-page-reporting", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="every guest reports its free pages (libvirt freePageReporting='on', "
                             "KubeVirt's default: the default here), for every strategy; "
                             "--no-free-page-reporting for plain libvirt's default; labelled in "
                             "the output")
    parser.add_argument("--verbose", action="store_true", help="print every cycle")
    args = parser.parse_args(argv)
    args.strategy_list = [s.strip() for s in args.strategies.split(",") if s.strip()]
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(args.strategy_list) - set(STRATEGIES)) + sorted(
        set(args.scenario_list) - set(SCENARIOS))
    if unknown or not args.strategy_list or not args.scenario_list:
        parser.error(f"unknown {unknown}" if unknown else "nothing to run")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    settings = QUICK if args.quick else Settings()
    if args.repeat is not None:
        settings = replace(settings, repeat=args.repeat)
    if args.cycles is not None:
        settings = replace(settings, cycles=args.cycles)
    if args.reserve_mib is not None:
        settings = replace(settings, reserve=args.reserve_mib * MIB)
    return replace(settings, autodeflate=args.autodeflate,
                   free_page_reporting=args.free_page_reporting)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.pressure needs root: it starts guests under qemu:///system and fills host "
              "memory.", file=sys.stderr)
        return 2
    settings = settings_from(args)
    total = memrig.meminfo_bytes("MemTotal")
    policy = bench_policy(f"{PREFIX}{os.getpid()}-*", settings.stats_period_s,
                          settings.interval_s)
    th, lv = levels_for(policy, total - settings.reserve)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(header(settings, th, lv, total, args), flush=True)
    started, voids = time.monotonic(), list[str]()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        s: {n: [] for n in args.strategy_list} for s in args.scenario_list}
    interrupted = False
    try:
        run_all(args, settings, policy, total, runs, voids)
    except KeyboardInterrupt:  # guests and rig are gone already (their finally blocks)
        interrupted = True
        print("INTERRUPTED: what follows is only the trials that ended", flush=True)
    results = {sc: {name: aggregate(found, name) for name, found in by.items()}
               for sc, by in runs.items()}
    cmp, claims = comparisons(results), must_show(results)
    print()
    print(table(results))
    how = "ONE run (--quick)" if settings.repeat == 1 else f"medians of {settings.repeat} runs"
    print(f"(seconds per state: the ladder's state from the real MemAvailable and PSI each "
          f"cycle, for every strategy; {how}; swap-in/s: host pswpin; whole run "
          f"{time.monotonic() - started:.0f} s)")
    for line in verdict_lines(results, cmp, claims):
        print(line)
    print(json.dumps({"scenarios": results, "comparison": cmp, "must_show": claims,
                      "runs": settings.repeat, "quick": bool(args.quick), "void_trials": voids,
                      "thresholds_mib": {s.value: th.below[s] >> 20 for s in th.below},
                      "levels_mib": {"soft": lv.soft >> 20, "hard": lv.hard >> 20,
                                     "critical": lv.critical >> 20},
                      "reserve_mib": settings.reserve >> 20, "interrupted": interrupted,
                      "guest_autodeflate": settings.autodeflate,
                      "guest_free_page_reporting": settings.free_page_reporting,
                      "node_mem_total_mib": (total - settings.reserve) >> 20}))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
