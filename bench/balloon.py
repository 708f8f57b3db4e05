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
from typing import TYPE_CHECKING, Any

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
    policy_minimum,
    skip_reason,
)
from overcommit.planning.observation import Observation
from overcommit.virt.model import BalloonTarget, GuestObservation
from testkit import guests, libvirtd

if TYPE_CHECKING:
    from overcommit.virt.libvirt_source import LibvirtEndpoint

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


# The scenarios. reclaim and relieve are the ones the planner was tuned on (README-balloon.md,
# "What changed since the first measurement"); cache and bursty were added afterwards and the
# planner was not changed after seeing their results: held out.
SCENARIOS = ("reclaim", "relieve", "cache", "bursty")
HELD_OUT = ("cache", "bursty")
RECLAIMING = ("reclaim", "cache")  # reclaim from idle guests (cache: page-cache-heavy ones)
RELIEVING = ("relieve", "bursty")  # one guest's demand grows (bursty: in jumps, with a drop)
STOP = -1  # a demand step: the eater frees everything it holds


@dataclass(frozen=True)
class Settings:
    guests: int = 3
    max_mib: int = 1024
    stats_period_s: int = 2
    interval_s: int = 3  # the policy's auto.intervalSeconds, and the pace of every strategy
    reclaim_cycles: int = 6
    reclaim_available_percent: float = 10.0
    relieve_available_percent: float | None = None  # None: the middle of the policy's band
    shrunk_percent: int = 60  # where every guest starts the relieve phase
    eat_step_mib: int = 96  # the eater's demand grows this much per cycle ...
    relieve_cap: int = 10  # ... and the phase ends after this many cycles at the latest
    cache_percent: int = 50  # cache: every guest reads this share of its maximum into its cache
    repeat: int = 3  # every verdict is on the median of this many runs
    autodeflate: bool = False  # the guests' balloons deflate on OOM (bench.pressure --autodeflate)
    free_page_reporting: bool = False  # ... report free pages (--free-page-reporting)


# --quick fits in a few minutes per repeat: two guests of 512 MiB (not 1-2 GiB: labelled as such
# in the output), fewer cycles, and a faster pace (stats every second, a cycle every 2 s) so
# that waiting for fresh statistics costs less; one run unless --repeat says otherwise.
QUICK = Settings(guests=2, max_mib=512, stats_period_s=1, interval_s=2, reclaim_cycles=3,
                 relieve_cap=8, repeat=1)


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


def _endpoint() -> LibvirtEndpoint:
    # Imported here: libvirt-python is only needed for the root runs, not for the pure parts
    # (tests/unit/bench).
    from overcommit.virt.libvirt_source import LibvirtEndpoint

    return LibvirtEndpoint(libvirtd.URI)


class Fleet:
    """Our guests, observed and moved through one ``LibvirtEndpoint`` as the agent does."""

    def __init__(self, domains: Sequence[guests.Domain], stats_period: int) -> None:
        self.domains = {d.name(): d for d in domains}
        self.names = sorted(self.domains)
        self.stats_period = stats_period
        self.endpoint = _endpoint()
        self.demand: dict[str, list[int]] = {}  # the eater's chunks per scenario, once sized
        self.disturbances: list[str] = []

    def guard_period(self) -> None:
        """Put our guests' statistics period back if someone else changed it.

        Any process that runs the engine against this libvirtd sets its policy's period on
        every guest it sees, selected or not (reconcile/guests.py ``GuestManager.apply``); seen
        during development: 2 s became 10 s and every cycle waited 10 s for fresh statistics.
        A fresh endpoint, because ours caches each domain's period for as long as it runs and
        would not notice the change."""
        fresh = _endpoint()
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

    def drop_caches(self) -> None:
        """Every guest drops its page cache (left by the cache scenario): each phase starts
        from the same guests whichever strategy ran before."""
        for domain in self.domains.values():
            guests.guest_run(domain, "echo 3 > /proc/sys/vm/drop_caches")

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
                share_pages=False,  # out of the host's KSM: we must not disturb it
                autodeflate=settings.autodeflate,
                free_page_reporting=settings.free_page_reporting))
        for domain in domains:
            guests.wait_booted(domain, timeout=180)
    except BaseException:
        guests.destroy_guests(domains)
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


# ------------------------------------------------------------------------------------------------
# Judging a guest with our definitions


def floor_kib(spec: BalloonSpec, strategy: str, guest: GuestObservation) -> int:
    """A strategy's own floor for the guest: ours is ``guest_floor`` (what the guest uses plus
    its margin, or the policy's terms); MOM's guarantee (``balloon_min``) and Proxmox's
    ``balloon:`` minimum are the policy's floor terms (``policy_minimum``), which is what the
    ports are given (balloon_baselines)."""
    floor = spec.floor or BalloonFloor()
    if strategy == "ours":
        return guest_floor(floor, guest)[0]
    return policy_minimum(floor, guest.max_kib)[0]


def below_floor(spec: BalloonSpec, mine: Mapping[str, GuestObservation],
                strategy: str = "ours") -> list[str]:
    """Guests whose balloon is below ``strategy``'s floor (fresh statistics only, see
    wait_fresh); "ours" judges every strategy by our floor."""
    return [f"{g.domain} {g.current_kib // MIB} < {strategy} floor "
            f"{floor_kib(spec, strategy, g) // MIB} MiB"
            for g in mine.values()
            if "usable" in g.stats and g.current_kib < floor_kib(spec, strategy, g)]


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
    floor_violations: int  # judged by our floor (guest_floor), for every strategy
    oom_kills: int
    own_floor_violations: int = 0  # judged by the strategy's own floor (floor_kib)
    cache_mib: float = 0.0  # cache: the guests' page cache (Buffers + Cached) at the start ...
    cache_left_mib: float = 0.0  # ... and after the last cycle


def fill_caches(fleet: Fleet, settings: Settings, log: Callable[[str], None]) -> float:
    """cache: every guest reads ``cache_percent`` of its maximum into its page cache (dropped
    first: every strategy starts from the same caches); their total cache in MiB."""
    mib = settings.max_mib * settings.cache_percent // 100
    for domain in fleet.domains.values():
        guests.fill_page_cache(domain, mib)
    log(f"  page cache filled: {mib} MiB per guest")
    return guest_cache_mib(fleet)


def guest_cache_mib(fleet: Fleet) -> float:
    """The guests' own Buffers + Cached (kB in /proc/meminfo, read now), in MiB."""
    total = 0
    for domain in fleet.domains.values():
        _, out = guests.guest_run(domain, "grep -E '^(Buffers|Cached):' /proc/meminfo")
        total += sum(int(m) for m in re.findall(r"^(?:Buffers|Cached):\s+(\d+)", out, re.M))
    return round(total / 1024, 1)


def reclaim_phase(driver: Driver, settings: Settings, cache: bool = False) -> Reclaim:
    """Idle guests at their maximum, a host that looks short: K cycles. With ``cache`` every
    guest first fills its page cache (clean, reclaimable; ``fill_caches``)."""
    fleet, host = driver.fleet, HostView(settings.reclaim_available_percent)
    fleet.drop_caches()
    mine = fleet.move_all({n: g.max_kib for n, g in fleet.mine().items()})
    cache_mib = 0.0
    if cache:
        cache_mib = fill_caches(fleet, settings, driver.log)
        mine = fleet.wait_fresh(time.time())
    ooms, totals = fleet.oom_counts(), [total_kib(mine)]
    violations = own = 0
    driver.warm_up(host, settings.interval_s)
    for k in range(settings.reclaim_cycles):
        fleet.guard_period()
        start = time.monotonic()
        seen = fleet.observe(start)
        found = note_violations(driver, fleet.mine(seen), f"reclaim cycle {k + 1}")
        violations, own = violations + found[0], own + found[1]
        driver.log(f"  [{driver.name} reclaim {k + 1} at {_clock()}] host {host.percent:g}%")
        driver.cycle(seen, host(start))
        mine = fleet.wait_fresh(time.time())
        totals.append(total_kib(mine))
        pace(start, settings.interval_s)
    found = note_violations(driver, fleet.mine(), "after the last reclaim cycle")
    violations, own = violations + found[0], own + found[1]
    by_cycle = [(a - b) / MIB for a, b in pairwise(totals)]
    kills = sum(fleet.oom_counts().values()) - sum(ooms.values())
    left = guest_cache_mib(fleet) if cache else 0.0
    return Reclaim(by_cycle, violations, kills, own, cache_mib, left)


def note_violations(driver: Driver, mine: Mapping[str, GuestObservation],
                    when: str) -> tuple[int, int]:
    """(below our floor, below the strategy's own floor)."""
    found = below_floor(driver.spec, mine)
    for line in found:
        driver.log(f"  floor violation ({driver.name}, {when}): {line}")
    own = found if driver.name == "ours" else below_floor(driver.spec, mine, driver.name)
    if driver.name != "ours":
        for line in own:
            driver.log(f"  own-floor violation ({driver.name}, {when}): {line}")
    return len(found), len(own)


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

    @classmethod
    def bursty(cls, usable_kib: int, step_mib: int) -> Ramp:
        """Jumps instead of a ramp: half the usable memory at once, held two cycles, all freed
        (``STOP``) and one quiet cycle; then, in two cycles, the usable memory plus one step
        (more than the guest had at the start), held two cycles. Not used while tuning."""
        usable = usable_kib // MIB
        second = usable + step_mib
        return cls([usable // 2, 0, 0, STOP, 0, second // 2, second - second // 2, 0, 0])

    @staticmethod
    def for_scenario(scenario: str, usable_kib: int, step_mib: int) -> list[int]:
        ramp = Ramp.bursty if scenario == "bursty" else Ramp.past
        return ramp(usable_kib, step_mib).chunks

    def feed(self, domain: guests.Domain, log: Callable[[str], None]) -> None:
        if not self.chunks:
            return
        mib = self.chunks.pop(0)
        if mib == STOP:
            guests.stop_eating(domain)
            log("  the eater frees all it holds")
            return
        if mib == 0:
            return
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


def relieve_phase(driver: Driver, settings: Settings, eater: str,
                  scenario: str = "relieve") -> Relieve:
    """Every guest shrunk to the same size, a host in the middle of the band, then one guest
    eats a chunk per cycle past what it had (bursty: in jumps, see ``Ramp.bursty``). The phase
    ends when the eater, having eaten it all, is no longer under pressure, or after
    ``relieve_cap`` cycles (bursty: the cap is raised to cover its whole demand)."""
    fleet = driver.fleet
    percent = settings.relieve_available_percent
    host = HostView(middle_of_band(driver.spec) if percent is None else percent)
    fleet.drop_caches()
    start_mine = fleet.move_all({n: g.max_kib * settings.shrunk_percent // 100
                                 for n, g in fleet.mine().items()})
    ooms, domain = fleet.oom_counts(), fleet.domains[eater]
    # Sized once, from the first strategy's start, so every strategy meets the same demand.
    if scenario not in fleet.demand:
        fleet.demand[scenario] = Ramp.for_scenario(scenario, start_mine[eater].stats["usable"],
                                                   settings.eat_step_mib)
    ramp = Ramp(list(fleet.demand[scenario]))
    settings = replace(settings, relieve_cap=max(settings.relieve_cap, len(ramp.chunks) + 1))
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
    """One strategy, one repeat: each scenario's result and wall time (set-up included)."""

    phases: dict[str, Reclaim | Relieve]
    seconds: dict[str, float]
    # Changes by other processes, put right at once: they cost time, never cycles (every
    # cycle waits for fresh statistics), so the trial still counts; reported in the JSON.
    disturbances: list[str]

    @property
    def oom_kills(self) -> int:
        return sum(phase_ooms(p) for p in self.phases.values())


def phase_ooms(phase: Reclaim | Relieve) -> int:
    if isinstance(phase, Reclaim):
        return phase.oom_kills
    return phase.oom_kills_eater + phase.oom_kills_others


def run_strategy(name: str, spec: BalloonSpec, fleet: Fleet, settings: Settings,
                 scenarios: Sequence[str], log: Callable[[str], None]) -> Trial:
    driver = Driver(name, PLANNERS[name], spec, fleet, log)
    seen_before = len(fleet.disturbances)
    phases: dict[str, Reclaim | Relieve] = {}
    seconds: dict[str, float] = {}
    for scenario in scenarios:
        started = time.monotonic()
        if scenario in RECLAIMING:
            phases[scenario] = reclaim_phase(driver, settings, cache=scenario == "cache")
        else:
            phases[scenario] = relieve_phase(driver, settings, fleet.names[0], scenario)
        seconds[scenario] = round(time.monotonic() - started, 1)
    return Trial(phases, seconds, fleet.disturbances[seen_before:])


# ------------------------------------------------------------------------------------------------
# Aggregating and judging (pure: tests/unit/bench/test_balloon_verdicts.py)


def _median(values: Sequence[float]) -> float:
    return round(float(statistics.median(values)), 1)


def spread(values: Sequence[float]) -> list[float]:
    """[lowest, highest] over the runs: the spread printed beside each median."""
    return [round(float(min(values)), 1), round(float(max(values)), 1)]


def median_cycles(values: Sequence[int | None]) -> int | float | None:
    """Median; not relieved within the cap counts as infinitely slow."""
    result = statistics.median([math.inf if v is None else v for v in values])
    return None if math.isinf(result) else result


def summarise_reclaim(runs: Sequence[Reclaim]) -> dict[str, Any]:
    per_cycle = [sum(r.by_cycle_mib) / len(r.by_cycle_mib) for r in runs]
    totals = [sum(r.by_cycle_mib) for r in runs]
    return {
        "reclaimed_mib_per_cycle": _median(per_cycle),
        "reclaimed_mib_per_cycle_range": spread(per_cycle),
        "reclaimed_mib_by_cycle": [_median(col) for col in
                                   zip(*(r.by_cycle_mib for r in runs), strict=True)],
        "reclaimed_mib_total": _median(totals),
        "floor_violations": _median([r.floor_violations for r in runs]),
        "own_floor_violations": _median([r.own_floor_violations for r in runs]),
        "oom_kills": _median([r.oom_kills for r in runs]),
        # Safety is judged on the worst run: a median would hide one OOM kill in three runs.
        "floor_violations_worst": max(r.floor_violations for r in runs),
        "own_floor_violations_worst": max(r.own_floor_violations for r in runs),
        "oom_kills_worst": max(r.oom_kills for r in runs),
        "cache_mib": _median([r.cache_mib for r in runs]),
        "cache_left_mib": _median([r.cache_left_mib for r in runs]),
    }


def summarise_relieve(runs: Sequence[Relieve]) -> dict[str, Any]:
    ooms = [r.oom_kills_eater + r.oom_kills_others for r in runs]
    return {
        "cycles_to_relieve": median_cycles([r.cycles_to_relieve for r in runs]),
        "cycles_to_relieve_runs": [r.cycles_to_relieve for r in runs],
        "pressured_cycles": _median([r.pressured_cycles for r in runs]),
        "pressured_cycles_range": spread([r.pressured_cycles for r in runs]),
        "oom_kills": _median(ooms),
        "oom_kills_worst": max(ooms),
        "eater_grown_mib": _median([r.eater_grown_mib for r in runs]),
        "others_grown_mib": _median([r.others_grown_mib for r in runs]),
        "eaten_mib": runs[0].eaten_mib,
    }


def summarise(trials: Sequence[Trial]) -> dict[str, Any]:
    summary: dict[str, Any] = {"repeats": len(trials)}
    for scenario in trials[0].phases:
        runs = [t.phases[scenario] for t in trials]
        summary[scenario] = summarise_reclaim([r for r in runs if isinstance(r, Reclaim)]) \
            if scenario in RECLAIMING else \
            summarise_relieve([r for r in runs if isinstance(r, Relieve)])
    summary["oom_kills_worst"] = max(t.oom_kills for t in trials)
    disturbances = [d for t in trials for d in t.disturbances]
    if disturbances:
        summary["disturbed"] = disturbances
    if len(trials) > 1:
        summary["runs"] = [asdict(t) for t in trials]
    return summary


def verdict(ours: float | None, theirs: float | None, higher_is_better: bool) -> str:
    """PASS when ours is strictly better, TIE when equal, MISS when worse. None (not relieved
    within the cap) is the worst value of a lower-is-better figure."""
    a = math.inf if ours is None else float(ours)
    b = math.inf if theirs is None else float(theirs)
    if a == b:
        return "TIE"
    return "PASS" if (a > b) == higher_is_better else "MISS"


# What each scenario compares: (figure, higher is better, unit).
FIGURES: dict[str, tuple[tuple[str, bool, str], ...]] = {
    "reclaim": (("reclaimed_mib_per_cycle", True, "MiB/cycle"),),
    "cache": (("reclaimed_mib_per_cycle", True, "MiB/cycle"), ("oom_kills", False, "OOM kills")),
    "relieve": (("cycles_to_relieve", False, "cycles to relieve"),
                ("oom_kills", False, "OOM kills")),
    "bursty": (("pressured_cycles", False, "pressured cycles"),
               ("cycles_to_relieve", False, "cycles to relieve"),
               ("oom_kills", False, "OOM kills")),
}


def safety(result: Mapping[str, Any]) -> tuple[int, int]:
    """(floor violations by our floor, OOM kills), worst run of any scenario."""
    floors = max((result[s]["floor_violations_worst"] for s in RECLAIMING if s in result),
                 default=0)
    return floors, result["oom_kills_worst"]


def compare(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Ours against each baseline, scenario by scenario, on the medians; ours' safety."""
    if "ours" not in results:
        return {"skipped": "needs ours"}
    ours = results["ours"]
    out: dict[str, Any] = {"safety": "PASS" if safety(ours) == (0, 0) else "MISS",
                           "repeats": ours["repeats"]}
    if ours["repeats"] < 3:
        out["note"] = f"median of {ours['repeats']} run(s): a verdict needs at least 3"
    for name in (b for b in BASELINES if b in results):
        theirs, verdicts = results[name], {}
        for scenario in (s for s in SCENARIOS if s in ours and s in theirs):
            for figure, higher, _unit in FIGURES[scenario]:
                verdicts[f"{scenario}/{figure}"] = verdict(
                    ours[scenario][figure], theirs[scenario][figure], higher)
        out[name] = verdicts
    return out


def tally(cmp: Mapping[str, Any]) -> dict[str, int]:
    """How many PASS, TIE and MISS over every baseline and figure."""
    words = [w for name in BASELINES if name in cmp for w in cmp[name].values()]
    return {w: words.count(w) for w in ("PASS", "TIE", "MISS")}


def _cycles_text(value: int | float | None, cap: int) -> str:
    return f">{cap}" if value is None else f"{value:g}"


def _range_text(r: Sequence[float]) -> str:
    return f"{r[0]:g}" if r[0] == r[1] else f"{r[0]:g}-{r[1]:g}"


def table(results: Mapping[str, Mapping[str, Any]], cap: int) -> str:
    lines: list[str] = []
    for scenario in SCENARIOS:
        rows = {n: r[scenario] for n, r in results.items() if scenario in r}
        if not rows:
            continue
        held = " (held out: not used while tuning)" if scenario in HELD_OUT else ""
        lines.append(f"{scenario}{held}")
        if scenario in RECLAIMING:
            head = (f"{'strategy':<9}{'reclaimed MiB by cycle':<34}{'MiB/cycle':>10}"
                    f"{'(range)':>14}{'total':>8}{'floor viol ours/own':>21}{'OOM kills':>10}"
                    f"{'cache MiB start->end':>22}")
            lines += [head, "-" * len(head)]
            for name, r in rows.items():
                cycles = " ".join(f"{v:.0f}" for v in r["reclaimed_mib_by_cycle"])
                lines.append(
                    f"{name:<9}{cycles:<34}{r['reclaimed_mib_per_cycle']:>10.1f}"
                    f"{_range_text(r['reclaimed_mib_per_cycle_range']):>14}"
                    f"{r['reclaimed_mib_total']:>8.0f}"
                    f"{r['floor_violations']:>12g}/{r['own_floor_violations']:<8g}"
                    f"{r['oom_kills']:>10g}"
                    f"{r['cache_mib']:>13.0f}->{r['cache_left_mib']:<7.0f}")
        else:
            head = (f"{'strategy':<9}{'to relieve':>11}{'(runs)':>16}{'pressured':>10}"
                    f"{'(range)':>9}{'eater +MiB':>11}{'others +MiB':>12}{'OOM kills':>10}")
            lines += [head, "-" * len(head)]
            for name, r in rows.items():
                runs = ",".join(_cycles_text(v, cap) for v in r["cycles_to_relieve_runs"])
                lines.append(
                    f"{name:<9}{_cycles_text(r['cycles_to_relieve'], cap):>11}{runs:>16}"
                    f"{r['pressured_cycles']:>10g}{_range_text(r['pressured_cycles_range']):>9}"
                    f"{r['eater_grown_mib']:>11.0f}{r['others_grown_mib']:>12.0f}"
                    f"{r['oom_kills']:>10g}")
        lines.append("")
    return "\n".join(lines).rstrip()


def _figure_text(value: Any, figure: str, cap: int) -> str:
    if figure == "cycles_to_relieve":
        return _cycles_text(value, cap)
    return f"{value:.1f}" if isinstance(value, float) else f"{value}"


def verdict_lines(results: Mapping[str, Mapping[str, Any]], cmp: Mapping[str, Any],
                  cap: int) -> list[str]:
    if "skipped" in cmp:
        return [f"comparison skipped: {cmp['skipped']}"]
    ours, lines = results["ours"], []
    for name in (b for b in BASELINES if b in cmp):
        for key, word in cmp[name].items():
            scenario, figure = key.split("/")
            unit = next(u for f, _h, u in FIGURES[scenario] if f == figure)
            held = " (held out)" if scenario in HELD_OUT else ""
            lines.append(f"{word} {scenario}{held}, {unit}: ours "
                         f"{_figure_text(ours[scenario][figure], figure, cap)} vs {name} "
                         f"{_figure_text(results[name][scenario][figure], figure, cap)}")
    floors, kills = safety(ours)
    lines.append(f"{cmp['safety']} safety: ours {floors} floor violations, {kills} OOM kills "
                 f"in its worst run (both must be 0)")
    for name in (b for b in BASELINES if b in results):
        own = max((results[name][s]["own_floor_violations_worst"] for s in RECLAIMING
                   if s in results[name]), default=0)
        theirs_floors, theirs_kills = safety(results[name])
        lines.append(f"     {name}: {theirs_floors} below our floor, {own} below its own floor "
                     f"(the policy minimum it is given), {theirs_kills} OOM kills in its worst "
                     f"run")
    counts = tally(cmp)
    lines.append(f"tally: {counts['PASS']} PASS, {counts['TIE']} TIE, {counts['MISS']} MISS"
                 + (f" ({cmp['note']})" if "note" in cmp else ""))
    return lines


# ------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.balloon",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 guests of 512 MiB, 3 reclaim cycles, stats every 1 s, a cycle "
                             "every 2 s, one run")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="run every strategy N times; verdicts on the medians (default 3; "
                             "quick 1)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)} (held out: "
                             f"{','.join(HELD_OUT)})")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"comma-separated subset of {','.join(STRATEGIES)}")
    parser.add_argument("--max-mib", type=int, default=None,
                        help="each guest's maximum memory (default 1024; quick 512)")
    parser.add_argument("--relieve-available-percent", type=float, default=None,
                        help="simulated MemAvailable in the relieve phase (default: the middle "
                             "of the policy's band, 30)")
    parser.add_argument("--verbose", action="store_true",
                        help="print every cycle: each guest's size and the strategy's reason")
    args = parser.parse_args(argv)
    args.strategy_list = [s.strip() for s in args.strategies.split(",") if s.strip()]
    args.scenario_list = [s for s in SCENARIOS if s in
                          {x.strip() for x in args.scenarios.split(",")}]
    unknown = sorted(set(args.strategy_list) - set(STRATEGIES))
    unknown += sorted({x.strip() for x in args.scenarios.split(",")} - set(SCENARIOS))
    if unknown or not args.strategy_list or not args.scenario_list or (
            args.repeat is not None and args.repeat < 1):
        parser.error(f"unknown strategies or scenarios {unknown}" if unknown
                     else "nothing to run")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    settings = QUICK if args.quick else Settings()
    if args.max_mib is not None:
        settings = replace(settings, max_mib=args.max_mib)
    if args.repeat is not None:
        settings = replace(settings, repeat=args.repeat)
    return replace(settings, relieve_available_percent=args.relieve_available_percent)


def header(settings: Settings, spec: BalloonSpec, args: argparse.Namespace) -> str:
    relieve = settings.relieve_available_percent
    relieve = middle_of_band(spec) if relieve is None else relieve
    small = " (QUICK: smaller than the 1-2 GiB of a full run)" if settings.max_mib < 1024 else ""
    return (
        f"Ballooning: {settings.guests} TCG guests x {settings.max_mib} MiB max{small} (virtio "
        f"balloon, stats every {settings.stats_period_s} s), strategies "
        f"{','.join(args.strategy_list)}, scenarios {','.join(args.scenario_list)} (held out: "
        f"{','.join(s for s in args.scenario_list if s in HELD_OUT) or 'none'}), "
        f"{settings.repeat} repeat(s); one cycle every {settings.interval_s} s for every strategy"
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
        guests.destroy_stale(conn, PREFIX)  # an earlier run killed before its clean-up
        domains = boot(conn, settings, log)
        fleet = Fleet(domains, settings.stats_period_s)
        wait_reporting(fleet, spec)
        yield fleet
    finally:
        if fleet is not None:
            fleet.close()
        guests.destroy_guests(domains)
        with suppress(libvirt.libvirtError):
            conn.close()
        print(f"{len(domains)} guests destroyed", flush=True)


def run_all(args: argparse.Namespace, settings: Settings, spec: BalloonSpec
            ) -> dict[str, dict[str, Any]]:
    log = _log if args.verbose else _quiet
    trials: dict[str, list[Trial]] = {name: [] for name in args.strategy_list}
    with fleet_of(settings, spec, _log) as fleet:
        for repeat in range(settings.repeat):
            # Rotate the order per repeat so no strategy always runs first (or last).
            shift = repeat % len(args.strategy_list)
            for name in args.strategy_list[shift:] + args.strategy_list[:shift]:
                print(f"[repeat {repeat + 1}/{settings.repeat}] {name} ...", flush=True)
                trial = run_strategy(name, spec, fleet, settings, args.scenario_list, log)
                trials[name].append(trial)
                print("  " + trial_line(trial, settings.relieve_cap), flush=True)
    return {name: summarise(found) for name, found in trials.items()}


def trial_line(trial: Trial, cap: int) -> str:
    parts = []
    for scenario, phase in trial.phases.items():
        if isinstance(phase, Reclaim):
            parts.append(f"{scenario}: {sum(phase.by_cycle_mib):.0f} MiB in "
                         f"{len(phase.by_cycle_mib)} cycles")
        else:
            parts.append(f"{scenario}: relieved after "
                         f"{_cycles_text(phase.cycles_to_relieve, cap)} cycles, "
                         f"{phase.pressured_cycles} pressured")
        parts[-1] += f" ({trial.seconds[scenario]:.0f} s)"
    return "; ".join(parts) + f"; {trial.oom_kills} OOM kills"


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
    print(f"(reclaim and cache: {settings.reclaim_cycles} cycles, cache {settings.cache_percent}"
          f"% of max read into every guest's page cache first; relieve: eater starts at "
          f"{settings.shrunk_percent}% of max, demand +{settings.eat_step_mib} MiB per cycle, "
          f"cap {settings.relieve_cap} cycles; bursty: see Ramp.bursty; median of "
          f"{settings.repeat} run(s), range in brackets; whole run "
          f"{time.monotonic() - started:.0f} s)")
    for line in verdict_lines(results, cmp, settings.relieve_cap):
        print(line)
    print(json.dumps({**results, "comparison": cmp}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
