"""Guest ballooning: our Auto mode against MOM's and Proxmox's rules, on the same real guests.

    python -m bench.balloon [--quick] [--repeat N] [--verbose] [--strategies a,b]

Boots N small TCG guests under the real libvirtd, then runs every strategy on them in turn
(guests reset to their maximum in between), each fed the same ``LibvirtEndpoint.observe``
readings and the same SIMULATED host memory view:

1. reclaim: the host looks short of memory, the guests are idle; K cycles; how much each
   strategy takes back per cycle, and whether it ever pushes a guest below our floor or gets a
   process OOM-killed;
2. relieve: the guests start shrunk, the host looks neither short nor plentiful to our policy,
   one guest's demand grows a chunk per cycle past what it had; how many cycles it stays under
   pressure, and whether its kernel OOM-kills the eater.

The guests, the balloon moves, the guests' statistics and their OOM kills are real; the host
view is not (the benchmark host has plenty of memory). Needs root. Every guest is destroyed at
the end, also on Ctrl-C or SIGTERM. See bench/README-balloon.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from typing import Any

from bench.balloon_baselines import mom_targets, proxmox_targets
from bench.common import log as _log
from bench.common import quiet as _quiet
from bench.common import raise_interrupt as _raise_interrupt
from overcommit.api.model import policy_from_object
from overcommit.api.policy import (
    GROUP,
    POLICY_KIND,
    VERSION,
    BalloonAuto,
    BalloonFloor,
    BalloonSpec,
)
from overcommit.host.base import HostFS
from overcommit.host.meminfo import MeminfoSource
from overcommit.planning.balloon import (
    BalloonPlan,
    BalloonState,
    GuestMemory,
    assess,
    guest_floor,
    plan_balloons,
    skip_reason,
)
from overcommit.planning.observation import Observation
from overcommit.virt.libvirt_source import LibvirtEndpoint
from overcommit.virt.model import BalloonTarget, GuestObservation
from testkit import guests, libvirtd

MIB = 1024  # KiB
PAGE_KIB = 4  # a balloon moves in 4 KiB pages: a target is reached within one
PREFIX = "oc-bench-balloon-"
POLL_S = 0.1
STALL_S = 1.5  # a balloon that has not moved for this long has gone as far as the guest lets it
SETTLE_TIMEOUT_S = 30.0
FRESH_TIMEOUT_S = 20.0  # a guest short of memory answers the statistics request late
READ_TIMEOUT_S = 60.0  # libvirtd restarted by someone else: the endpoint reconnects by itself

Planner = Callable[[BalloonSpec, Sequence[GuestObservation], Observation, BalloonState | None],
                   BalloonPlan]
PLANNERS: dict[str, Planner] = {"ours": plan_balloons, "mom": mom_targets,
                                "proxmox": proxmox_targets}
STRATEGIES = tuple(PLANNERS)
BASELINES = ("mom", "proxmox")


@dataclass(frozen=True)
class Settings:
    guests: int = 3
    max_mib: int = 512
    stats_period_s: int = 2
    interval_s: int = 3  # the policy's auto.intervalSeconds, and the pace of every strategy
    reclaim_cycles: int = 6
    reclaim_available_percent: float = 10.0
    relieve_available_percent: float | None = None  # None: the middle of the policy's band
    shrunk_percent: int = 60  # where every guest starts the relieve phase
    eat_step_mib: int = 96  # the eater's demand grows this much per cycle ...
    relieve_cap: int = 10  # ... and the phase ends after this many cycles at the latest


# --quick fits in about a minute and a half: two guests, fewer cycles, and a faster pace (stats
# every second, a cycle every 2 s) so that waiting for fresh statistics costs less.
QUICK = Settings(guests=2, stats_period_s=1, interval_s=2, reclaim_cycles=3, relieve_cap=8)


# ------------------------------------------------------------------------------------------------
# The policy and the simulated host


def policy_spec(settings: Settings, pattern: str) -> BalloonSpec:
    """balloon.mode Auto, validated like any policy; only the pace and the guests are set."""
    policy = policy_from_object({
        "apiVersion": f"{GROUP}/{VERSION}", "kind": POLICY_KIND,
        "metadata": {"name": "bench-balloon", "uid": "bench-balloon", "generation": 1},
        "spec": {"balloon": {
            "mode": "Auto", "statsPeriodSeconds": settings.stats_period_s,
            # Only our guests: other jobs may run test guests on the same libvirtd.
            "vmSelector": {"domainNamePattern": pattern},
            "auto": {"intervalSeconds": settings.interval_s},
        }},
    })
    spec = policy.spec.balloon
    assert spec is not None
    return spec


def middle_of_band(spec: BalloonSpec) -> float:
    auto = spec.auto or BalloonAuto()
    return (auto.host_available_low_percent + auto.host_available_high_percent) / 2


class HostView:
    """The real /proc/meminfo with MemAvailable = MemFree = ``percent`` of MemTotal and
    Buffers = Cached = 0, so every rule reads the same share: ours and Proxmox's read
    MemAvailable, MOM's reads MemFree + Buffers + Cached."""

    def __init__(self, percent: float) -> None:
        self.percent = percent
        self.source = MeminfoSource(HostFS("/"))

    def __call__(self, now: float) -> Observation:
        reading = self.source.read()
        counters = dict(reading.counters)
        simulated = int(counters["MemTotal"] * self.percent / 100)
        counters.update(MemAvailable=simulated, MemFree=simulated, Buffers=0, Cached=0)
        return Observation(time=now, readings={"meminfo": replace(reading, counters=counters)})


# ------------------------------------------------------------------------------------------------
# The guests


class Fleet:
    """Our guests, observed and moved through one ``LibvirtEndpoint`` as the agent does."""

    def __init__(self, domains: Sequence[guests.Domain], stats_period: int) -> None:
        self.domains = {d.name(): d for d in domains}
        self.names = sorted(self.domains)
        self.stats_period = stats_period
        self.endpoint = LibvirtEndpoint(libvirtd.URI)
        self.demand: list[int] = []  # the eater's chunks in the relieve phase, once sized
        self.disturbances: list[str] = []

    def guard_period(self) -> None:
        """Put our guests' statistics period back if someone else changed it.

        Any process that runs the engine against this libvirtd sets its policy's period on
        every guest it sees, selected or not (reconcile/guests.py ``GuestManager.apply``); seen
        during development: 2 s became 10 s and every cycle waited 10 s for fresh statistics.
        A fresh endpoint, because ours caches each domain's period for as long as it runs and
        would not notice the change."""
        fresh = LibvirtEndpoint(libvirtd.URI)
        try:
            for g in fresh.observe(time.monotonic()).guests:
                if g.domain in self.domains and g.stats_period_s != self.stats_period:
                    self.disturbances.append(f"{g.domain}: statistics period changed to "
                                             f"{g.stats_period_s} s by another process")
                    warn(f"{self.disturbances[-1]}; set back to {self.stats_period} s")
                    fresh.ensure_stats_period(g.domain, self.stats_period)
        finally:
            fresh.close()

    def observe(self, now: float | None = None) -> list[GuestObservation]:
        """Every guest on the endpoint (the planners select ours by name, as a policy would)."""
        deadline = time.monotonic() + READ_TIMEOUT_S
        while True:
            reading = self.endpoint.observe(time.monotonic() if now is None else now)
            if reading.ok and set(self.names) <= {g.domain for g in reading.guests}:
                return reading.guests
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot observe the guests: {reading.error or 'missing'}")
            time.sleep(POLL_S)

    def mine(self, seen: Sequence[GuestObservation] | None = None) -> dict[str, GuestObservation]:
        return {g.domain: g for g in (self.observe() if seen is None else seen)
                if g.domain in self.domains}

    def apply(self, targets: Sequence[BalloonTarget]) -> list[str]:
        """Set each target; libvirt's refusals come back as text."""
        return [e for t in targets if (e := self.endpoint.set_target(t.domain, t.to_kib))]

    def settle(self, targets: Mapping[str, int]) -> dict[str, GuestObservation]:
        """Until every moved balloon is at its target, or has stopped short of it."""
        deadline, still_since = time.monotonic() + SETTLE_TIMEOUT_S, time.monotonic()
        last: dict[str, int] = {}
        while True:
            mine = self.mine()
            pending = {d: mine[d].current_kib for d, kib in targets.items()
                       if abs(mine[d].current_kib - kib) > PAGE_KIB}
            if pending != last:
                last, still_since = pending, time.monotonic()
            if not pending or time.monotonic() - still_since >= STALL_S:
                return mine
            if time.monotonic() > deadline:
                warn(f"balloons still moving after {SETTLE_TIMEOUT_S:.0f} s: {pending}")
                return mine
            time.sleep(POLL_S)

    def wait_fresh(self, since_wall: float) -> dict[str, GuestObservation]:
        """Until every guest's statistics come from a sample taken after ``since_wall``, so
        the next cycle judges the guests as they are now, not as they were before the last
        balloon move or eat: every strategy sees the same, current picture.

        QEMU stamps a sample with the whole second it arrived, hence the ceiling."""
        stamp = math.ceil(since_wall)
        deadline = time.monotonic() + FRESH_TIMEOUT_S
        while True:
            mine = self.mine()
            old = [n for n, g in mine.items() if g.stats.get("last_update", 0) < stamp]
            if not old:
                return mine
            if time.monotonic() > deadline:
                warn(f"no fresh statistics after {FRESH_TIMEOUT_S:.0f} s from {old}")
                return mine
            time.sleep(POLL_S)

    def move_all(self, kib: Mapping[str, int]) -> dict[str, GuestObservation]:
        """Set balloons directly (not a strategy's move): phase set-up and reset."""
        self.guard_period()
        for name, target in kib.items():
            error = self.endpoint.set_target(name, target)
            if error:
                raise RuntimeError(error)
        self.settle(kib)
        return self.wait_fresh(time.time())

    def oom_counts(self) -> dict[str, int]:
        return {name: len(guests.oom_kills(d)) for name, d in self.domains.items()}

    def close(self) -> None:
        self.endpoint.close()


def warn(text: str) -> None:
    print(f"  WARNING: {text}", flush=True)


def boot(conn: Any, settings: Settings, log: Callable[[str], None]) -> list[guests.Domain]:
    """Start every guest at once (TCG boots in parallel), then wait for their statistics."""
    started, domains = time.monotonic(), []
    try:
        for i in range(settings.guests):
            domains.append(guests.define_guest(
                conn, f"{PREFIX}{os.getpid()}-{i}", settings.max_mib, settings.max_mib,
                with_balloon=True, balloon_driver=True, stats_period=settings.stats_period_s,
                share_pages=False))  # out of the host's KSM: we must not disturb it
        for domain in domains:
            guests.wait_booted(domain, timeout=180)
    except BaseException:
        destroy(domains)
        raise
    log(f"{len(domains)} guests booted in {time.monotonic() - started:.1f} s")
    return domains


def wait_reporting(fleet: Fleet, spec: BalloonSpec) -> None:
    """Until every guest's driver reports statistics (it loads after boot)."""
    for name in fleet.names:
        error = fleet.endpoint.ensure_stats_period(name, spec.stats_period_seconds)
        if error:
            raise RuntimeError(error)
    deadline = time.monotonic() + 60
    while any(g.problem or "usable" not in g.stats for g in fleet.mine().values()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"guests not reporting statistics: {fleet.mine()}")
        time.sleep(POLL_S)


def destroy(domains: Sequence[guests.Domain]) -> None:
    for domain in domains:
        with suppress(Exception):  # one guest's failure must not leave the others running
            guests.destroy_guest(domain)


def destroy_leftovers(conn: Any) -> None:
    """Guests of an earlier run that was killed before its cleanup (its pid is gone)."""
    for domain in conn.listAllDomains(0):
        m = re.fullmatch(rf"{PREFIX}(\d+)-\d+", domain.name())
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            destroy([domain])


# ------------------------------------------------------------------------------------------------
# Judging a guest with our definitions


def below_floor(spec: BalloonSpec, mine: Mapping[str, GuestObservation]) -> list[str]:
    """Guests whose balloon is below ``guest_floor`` (fresh statistics only, see wait_fresh)."""
    floor = spec.floor or BalloonFloor()
    return [f"{g.domain} {g.current_kib // MIB} < floor {guest_floor(floor, g)[0] // MIB} MiB"
            for g in mine.values()
            if "usable" in g.stats and g.current_kib < guest_floor(floor, g)[0]]


def pressure(spec: BalloonSpec, before: GuestObservation | None, now: GuestObservation) -> str:
    """Why the guest is under pressure by the policy's own rules ("" when it is not): usable
    below the free margin, or major faults / swap-in since ``before`` above the thresholds."""
    why = skip_reason(spec, now)
    if why:
        return f"not judged: {why}"  # no statistics from a guest short of memory is no relief
    memory = None if before is None else GuestMemory(
        uuid=before.uuid, time=before.time, stamp=before.stats.get("last_update") or None,
        swap_in_kib=before.stats.get("swap_in"), major_faults=before.stats.get("major_fault"),
        sample_current_kib=before.current_kib)
    return assess(spec, now, memory).pressure


# ------------------------------------------------------------------------------------------------
# One strategy's cycles


@dataclass
class Driver:
    """One strategy: observe -> plan -> set targets -> wait until the balloons settled."""

    name: str
    planner: Planner
    spec: BalloonSpec
    fleet: Fleet
    log: Callable[[str], None]
    state: BalloonState | None = None

    def warm_up(self, host: HostView, interval_s: float) -> None:
        """One observation a cycle before the phase, planned but not applied: a running agent
        has seen its guests before (ours shrinks no guest on its first sample; the baselines
        keep no history, so this changes nothing for them)."""
        start = time.monotonic()
        self.state = None
        self.state = self.planner(self.spec, self.fleet.observe(start), host(start), None).state
        self.fleet.wait_fresh(time.time())
        pace(start, interval_s)

    def cycle(self, seen: list[GuestObservation], host: Observation) -> None:
        plan = self.planner(self.spec, seen, host, self.state)
        self.state = plan.state
        errors = self.fleet.apply(plan.targets)
        for decision in plan.decisions:
            if decision.guest.domain in self.fleet.domains:
                self.log(f"    {decision.guest.domain}: {decision.guest.current_kib // MIB} MiB"
                         f" -> {decision.reason}")
        for error in errors:
            warn(f"{self.name}: {error}")
        self.fleet.settle({t.domain: t.to_kib for t in plan.targets})


def pace(start: float, interval: float) -> None:
    """The cycle itself: the next one starts one interval after this one started (at once when
    settling and waiting for fresh statistics took longer)."""
    time.sleep(max(0.0, start + interval - time.monotonic()))


def total_kib(mine: Mapping[str, GuestObservation]) -> int:
    return sum(g.current_kib for g in mine.values())


@dataclass(frozen=True)
class Reclaim:
    by_cycle_mib: list[float]
    floor_violations: int
    oom_kills: int


def reclaim_phase(driver: Driver, settings: Settings) -> Reclaim:
    """Idle guests at their maximum, a host that looks short: K cycles."""
    fleet, host = driver.fleet, HostView(settings.reclaim_available_percent)
    mine = fleet.move_all({n: g.max_kib for n, g in fleet.mine().items()})
    ooms, totals, violations = fleet.oom_counts(), [total_kib(mine)], 0
    driver.warm_up(host, settings.interval_s)
    for k in range(settings.reclaim_cycles):
        fleet.guard_period()
        start = time.monotonic()
        seen = fleet.observe(start)
        violations += note_violations(driver, fleet.mine(seen), f"reclaim cycle {k + 1}")
        driver.log(f"  [{driver.name} reclaim {k + 1} at {_clock()}] host {host.percent:g}%")
        driver.cycle(seen, host(start))
        mine = fleet.wait_fresh(time.time())
        totals.append(total_kib(mine))
        pace(start, settings.interval_s)
    violations += note_violations(driver, fleet.mine(), "after the last reclaim cycle")
    by_cycle = [(a - b) / MIB for a, b in pairwise(totals)]
    kills = sum(fleet.oom_counts().values()) - sum(ooms.values())
    return Reclaim(by_cycle, violations, kills)


def note_violations(driver: Driver, mine: Mapping[str, GuestObservation], when: str) -> int:
    found = below_floor(driver.spec, mine)
    for line in found:
        driver.log(f"  floor violation ({driver.name}, {when}): {line}")
    return len(found)


@dataclass(frozen=True)
class Relieve:
    cycles_to_relieve: int | None  # None: not relieved within the cap
    pressured_cycles: int
    eaten_mib: int
    oom_kills_eater: int
    oom_kills_others: int
    eater_grown_mib: float
    others_grown_mib: float


@dataclass
class Ramp:
    """The eater's demand: ``step`` MiB per cycle until it exceeds its starting usable
    memory by one step (so it cannot be met without growing the guest)."""

    chunks: list[int]
    eaten: int = 0

    @classmethod
    def past(cls, usable_kib: int, step_mib: int) -> Ramp:
        total = usable_kib // MIB + step_mib
        rest = [total % step_mib] if total % step_mib else []
        return cls([step_mib] * (total // step_mib) + rest)

    def feed(self, domain: guests.Domain, log: Callable[[str], None]) -> None:
        if not self.chunks:
            return
        mib = self.chunks.pop(0)
        self.eaten += mib
        try:
            guests.eat(domain, mib)
        except guests.GuestError:  # one of its chunks was OOM-killed: counted from the log
            log(f"  eat {mib} MiB: an eater died while filling (OOM kill)")


@dataclass
class Watch:
    """The eater's pressure, cycle by cycle. An OOM kill since the last cycle counts as
    pressure: the kill frees the eater's memory, so the guest would otherwise look relieved
    by the very failure."""

    spec: BalloonSpec
    domain: guests.Domain
    last: GuestObservation
    kills: int = 0
    first_pressured: int | None = None
    pressured: int = 0

    def __post_init__(self) -> None:
        self.kills = len(guests.oom_kills(self.domain))

    def relieved(self, k: int, now: GuestObservation, done_eating: bool,
                 log: Callable[[str], None]) -> bool:
        kills = len(guests.oom_kills(self.domain))
        why = "; ".join(w for w in (pressure(self.spec, self.last, now),
                                    f"{kills - self.kills} OOM kill(s) since the last cycle"
                                    if kills > self.kills else "") if w)
        self.last, self.kills = now, kills
        log(f"  eater at cycle {k}: {now.current_kib // MIB} MiB, usable "
            f"{now.stats.get('usable', 0) // MIB} MiB: {why or 'not under pressure'}")
        if why:
            self.pressured += 1
            if self.first_pressured is None:
                self.first_pressured = k
        return not why and done_eating

    def cycles(self, relieved_at: int | None) -> int | None:
        if relieved_at is None:
            return None
        return 0 if self.first_pressured is None else relieved_at - self.first_pressured


def relieve_phase(driver: Driver, settings: Settings, eater: str) -> Relieve:
    """Every guest shrunk to the same size, a host in the middle of the band, then one guest
    eats a chunk per cycle past what it had. The phase ends when the eater, having eaten it
    all, is no longer under pressure, or after ``relieve_cap`` cycles."""
    fleet = driver.fleet
    percent = settings.relieve_available_percent
    host = HostView(middle_of_band(driver.spec) if percent is None else percent)
    start_mine = fleet.move_all({n: g.max_kib * settings.shrunk_percent // 100
                                 for n, g in fleet.mine().items()})
    ooms, domain = fleet.oom_counts(), fleet.domains[eater]
    # Sized once, from the first strategy's start, so every strategy meets the same demand.
    fleet.demand = fleet.demand or Ramp.past(start_mine[eater].stats["usable"],
                                             settings.eat_step_mib).chunks
    ramp = Ramp(list(fleet.demand))
    watch = Watch(driver.spec, domain, start_mine[eater])
    relieved_at = None
    try:
        driver.warm_up(host, settings.interval_s)
        ramp.feed(domain, driver.log)
        fleet.wait_fresh(time.time())
        relieved_at = relieve_cycles(driver, settings, host, ramp, watch, eater)
    finally:
        with suppress(guests.GuestError):
            guests.stop_eating(domain)
    return relieve_result(fleet, ooms, start_mine, eater, ramp, watch, relieved_at)


def relieve_cycles(driver: Driver, settings: Settings, host: HostView, ramp: Ramp, watch: Watch,
                   eater: str) -> int | None:
    """The cycles of the relieve phase; the cycle at whose start the eater was relieved."""
    fleet = driver.fleet
    for k in range(1, settings.relieve_cap + 2):
        fleet.guard_period()
        start = time.monotonic()
        seen = fleet.observe(start)
        if watch.relieved(k, fleet.mine(seen)[eater], not ramp.chunks, driver.log):
            return k
        if k > settings.relieve_cap:
            return None
        driver.log(f"  [{driver.name} relieve {k} at {_clock()}] host {host.percent:g}%")
        driver.cycle(seen, host(start))
        # The guest's demand grows after the strategy acted: its next cycle must catch up.
        ramp.feed(fleet.domains[eater], driver.log)
        fleet.wait_fresh(time.time())
        pace(start, settings.interval_s)
    return None


def relieve_result(fleet: Fleet, ooms: Mapping[str, int],
                   start_mine: Mapping[str, GuestObservation], eater: str, ramp: Ramp,
                   watch: Watch, relieved_at: int | None) -> Relieve:
    end_mine, after = fleet.mine(), fleet.oom_counts()
    grown = {n: (end_mine[n].current_kib - start_mine[n].current_kib) / MIB for n in end_mine}
    others = [n for n in fleet.names if n != eater]
    return Relieve(
        cycles_to_relieve=watch.cycles(relieved_at), pressured_cycles=watch.pressured,
        eaten_mib=ramp.eaten, oom_kills_eater=after[eater] - ooms[eater],
        oom_kills_others=sum(after[n] - ooms[n] for n in others),
        eater_grown_mib=grown[eater], others_grown_mib=sum(grown[n] for n in others))


@dataclass(frozen=True)
class Trial:
    """One strategy, one repeat."""

    reclaim: Reclaim
    relieve: Relieve
    reclaim_s: float  # wall time of each phase, set-up included
    relieve_s: float
    # Changes by other processes, put right at once: they cost time, never cycles (every
    # cycle waits for fresh statistics), so the trial still counts; reported in the JSON.
    disturbances: list[str]

    @property
    def oom_kills(self) -> int:
        return self.reclaim.oom_kills + self.relieve.oom_kills_eater + \
            self.relieve.oom_kills_others


def run_strategy(name: str, spec: BalloonSpec, fleet: Fleet, settings: Settings,
                 log: Callable[[str], None]) -> Trial:
    driver = Driver(name, PLANNERS[name], spec, fleet, log)
    seen_before, started = len(fleet.disturbances), time.monotonic()
    reclaim = reclaim_phase(driver, settings)
    middle = time.monotonic()
    relieve = relieve_phase(driver, settings, fleet.names[0])
    return Trial(reclaim, relieve, round(middle - started, 1),
                 round(time.monotonic() - middle, 1), fleet.disturbances[seen_before:])


# ------------------------------------------------------------------------------------------------
# Aggregating and reporting


def _median(values: Sequence[float]) -> float:
    return round(float(statistics.median(values)), 1)


def median_cycles(values: Sequence[int | None]) -> int | float | None:
    """Median; not relieved within the cap counts as infinitely slow."""
    result = statistics.median([math.inf if v is None else v for v in values])
    return None if math.isinf(result) else result


def summarise(trials: Sequence[Trial]) -> dict[str, Any]:
    by_cycle = [_median(col) for col in zip(*(t.reclaim.by_cycle_mib for t in trials),
                                             strict=True)]
    totals = [sum(t.reclaim.by_cycle_mib) for t in trials]
    summary: dict[str, Any] = {
        "reclaimed_mib_per_cycle": _median([x / len(by_cycle) for x in totals]),
        "reclaimed_mib_by_cycle": by_cycle,
        "reclaimed_mib_total": _median(totals),
        "cycles_to_relieve": median_cycles([t.relieve.cycles_to_relieve for t in trials]),
        "floor_violations": _median([t.reclaim.floor_violations for t in trials]),
        "oom_kills": _median([t.oom_kills for t in trials]),
        # Safety is judged on the worst run: a median would hide one OOM kill in three runs.
        "floor_violations_worst": max(t.reclaim.floor_violations for t in trials),
        "oom_kills_worst": max(t.oom_kills for t in trials),
        "pressured_cycles": _median([t.relieve.pressured_cycles for t in trials]),
        "eater_grown_mib": _median([t.relieve.eater_grown_mib for t in trials]),
        "others_grown_mib": _median([t.relieve.others_grown_mib for t in trials]),
        "eaten_mib": trials[0].relieve.eaten_mib,
    }
    disturbances = [d for t in trials for d in t.disturbances]
    if disturbances:
        summary["disturbed"] = disturbances
    if len(trials) > 1:
        summary["runs"] = [asdict(t) for t in trials]
    return summary


def _cycles_key(value: int | float | None) -> float:
    return math.inf if value is None else float(value)


def compare(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Ours against each baseline: reclaim rate, cycles to relieve; and ours' safety."""
    if "ours" not in results:
        return {"skipped": "needs ours"}
    ours = results["ours"]
    out: dict[str, Any] = {"safety_pass": ours["floor_violations_worst"] == 0
                           and ours["oom_kills_worst"] == 0}
    for name in (b for b in BASELINES if b in results):
        theirs = results[name]
        out[name] = {
            "reclaim_pass": ours["reclaimed_mib_per_cycle"] >= theirs["reclaimed_mib_per_cycle"],
            "relieve_pass": ours["cycles_to_relieve"] is not None and _cycles_key(
                ours["cycles_to_relieve"]) <= _cycles_key(theirs["cycles_to_relieve"]),
        }
    return out


def _cycles_text(value: int | float | None, cap: int) -> str:
    return f">{cap}" if value is None else f"{value:g}"


def table(results: Mapping[str, Mapping[str, Any]], cap: int) -> str:
    head = (f"{'strategy':<9}{'reclaimed MiB by cycle':<34}{'MiB/cycle':>10}{'total':>8}"
            f"{'floor viol':>11}{'to relieve':>11}{'pressured':>10}{'eater +MiB':>11}"
            f"{'others +MiB':>12}{'OOM kills':>10}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        cycles = " ".join(f"{v:.0f}" for v in r["reclaimed_mib_by_cycle"])
        lines.append(
            f"{name:<9}{cycles:<34}{r['reclaimed_mib_per_cycle']:>10.1f}"
            f"{r['reclaimed_mib_total']:>8.0f}{r['floor_violations']:>11g}"
            f"{_cycles_text(r['cycles_to_relieve'], cap):>11}{r['pressured_cycles']:>10g}"
            f"{r['eater_grown_mib']:>11.0f}{r['others_grown_mib']:>12.0f}{r['oom_kills']:>10}")
    return "\n".join(lines)


def verdict_lines(results: Mapping[str, Mapping[str, Any]], cmp: Mapping[str, Any],
                  cap: int) -> list[str]:
    if "skipped" in cmp:
        return [f"comparison skipped: {cmp['skipped']}"]
    ours, lines = results["ours"], []
    for name in (b for b in BASELINES if b in cmp):
        theirs, verdict = results[name], cmp[name]
        lines.append(f"{_word(verdict['reclaim_pass'])} reclaim: ours "
                     f"{ours['reclaimed_mib_per_cycle']:.1f} MiB/cycle >= {name} "
                     f"{theirs['reclaimed_mib_per_cycle']:.1f} MiB/cycle")
        lines.append(f"{_word(verdict['relieve_pass'])} relieve: ours "
                     f"{_cycles_text(ours['cycles_to_relieve'], cap)} cycles <= {name} "
                     f"{_cycles_text(theirs['cycles_to_relieve'], cap)} cycles")
    lines.append(f"{_word(cmp['safety_pass'])} safety: ours {ours['floor_violations_worst']} "
                 f"floor violations, {ours['oom_kills_worst']} OOM kills in its worst run "
                 f"(both must be 0)")
    return lines


def _word(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# ------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.balloon",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 guests, 3 reclaim cycles, stats every 1 s, a cycle every 2 s")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run every strategy N times; report medians (default 1)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"comma-separated subset of {','.join(STRATEGIES)}")
    parser.add_argument("--max-mib", type=int, default=None,
                        help="each guest's maximum memory (default 512)")
    parser.add_argument("--relieve-available-percent", type=float, default=None,
                        help="simulated MemAvailable in the relieve phase (default: the middle "
                             "of the policy's band, 30)")
    parser.add_argument("--verbose", action="store_true",
                        help="print every cycle: each guest's size and the strategy's reason")
    args = parser.parse_args(argv)
    args.strategy_list = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = sorted(set(args.strategy_list) - set(STRATEGIES))
    if unknown or not args.strategy_list or args.repeat < 1:
        parser.error(f"unknown strategies {unknown}" if unknown else "nothing to run")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    settings = QUICK if args.quick else Settings()
    if args.max_mib is not None:
        settings = replace(settings, max_mib=args.max_mib)
    return replace(settings, relieve_available_percent=args.relieve_available_percent)


def header(settings: Settings, spec: BalloonSpec, args: argparse.Namespace) -> str:
    relieve = settings.relieve_available_percent
    relieve = middle_of_band(spec) if relieve is None else relieve
    return (
        f"Ballooning: {settings.guests} TCG guests x {settings.max_mib} MiB max (virtio balloon,"
        f" stats every {settings.stats_period_s} s), strategies {','.join(args.strategy_list)},"
        f" {args.repeat} repeat(s); one cycle every {settings.interval_s} s for every strategy"
        f" (auto.intervalSeconds {settings.interval_s}, scaled down from the default 10 s)\n"
        f"SIMULATED HOST VIEW: every strategy is told MemAvailable = MemFree = "
        f"{settings.reclaim_available_percent:g}% of MemTotal (Buffers = Cached = 0) while "
        f"reclaiming and {relieve:g}% while relieving; the real host is not short of memory. "
        f"Guests, balloon moves, guest statistics and OOM kills are real.")


@contextmanager
def fleet_of(settings: Settings, spec: BalloonSpec, log: Callable[[str], None]
             ) -> Iterator[Fleet]:
    """Booted guests, destroyed on the way out whatever happens."""
    import libvirt  # type: ignore[import-untyped]  # here: the binding is only for root runs

    libvirtd.ensure_libvirtd()
    guests.guest_image()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(libvirtd.URI)
    domains: list[guests.Domain] = []
    fleet: Fleet | None = None
    try:
        destroy_leftovers(conn)
        domains = boot(conn, settings, log)
        fleet = Fleet(domains, settings.stats_period_s)
        wait_reporting(fleet, spec)
        yield fleet
    finally:
        if fleet is not None:
            fleet.close()
        destroy(domains)
        with suppress(libvirt.libvirtError):
            conn.close()
        print(f"{len(domains)} guests destroyed", flush=True)


def run_all(args: argparse.Namespace, settings: Settings, spec: BalloonSpec
            ) -> dict[str, dict[str, Any]]:
    log = _log if args.verbose else _quiet
    trials: dict[str, list[Trial]] = {name: [] for name in args.strategy_list}
    with fleet_of(settings, spec, _log) as fleet:
        for repeat in range(args.repeat):
            # Rotate the order per repeat so no strategy always runs first (or last).
            shift = repeat % len(args.strategy_list)
            for name in args.strategy_list[shift:] + args.strategy_list[:shift]:
                print(f"[repeat {repeat + 1}/{args.repeat}] {name} ...", flush=True)
                trial = run_strategy(name, spec, fleet, settings, log)
                trials[name].append(trial)
                print(f"  reclaimed {sum(trial.reclaim.by_cycle_mib):.0f} MiB in "
                      f"{settings.reclaim_cycles} cycles; relieved after "
                      f"{_cycles_text(trial.relieve.cycles_to_relieve, settings.relieve_cap)}"
                      f" cycles; {trial.oom_kills} OOM kills ({trial.reclaim_s:.0f} s + "
                      f"{trial.relieve_s:.0f} s)", flush=True)
    return {name: summarise(found) for name, found in trials.items()}


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.balloon needs root: it starts guests under qemu:///system.",
              file=sys.stderr)
        return 2
    settings = settings_from(args)
    spec = policy_spec(settings, f"{PREFIX}{os.getpid()}-*")
    # So `finally` destroys the guests on kill, and on Ctrl-C even when started from a shell
    # that had SIGINT ignored (a background job).
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(header(settings, spec, args), flush=True)
    started = time.monotonic()
    try:
        results = run_all(args, settings, spec)
    except KeyboardInterrupt:  # the guests are gone already (fleet_of's finally)
        print("interrupted", file=sys.stderr)
        return 130
    cmp = compare(results)
    print()
    print(table(results, settings.relieve_cap))
    print(f"(reclaim: {settings.reclaim_cycles} cycles; relieve: eater starts at "
          f"{settings.shrunk_percent}% of max, demand +{settings.eat_step_mib} MiB per cycle, "
          f"cap {settings.relieve_cap} cycles; median of {args.repeat} run(s); whole run "
          f"{time.monotonic() - started:.0f} s)")
    for line in verdict_lines(results, cmp, settings.relieve_cap):
        print(line)
    print(json.dumps({**results, "comparison": cmp}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
