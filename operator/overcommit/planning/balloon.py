"""Guest ballooning: which guests, how far and why. Pure: observations and state in, plan out.

No libvirt, no clock: time comes from the observations (``GuestObservation.time`` is monotonic,
``stats["last_update"]`` stamps a statistics sample, ``stats_age_s`` is computed by the adapter).
Sizes are KiB, as libvirt reports them; the host ``Observation`` is in bytes.

oVirt's MOM and Proxmox move every guest by host memory alone and read the guest's
``MemFree``. This planner reads the guest's own ``MemAvailable`` (``usable``) and its major-fault
and swap-in rates, and in mode Auto, every cycle:

1. **Pressured guests first, whatever the host.** A guest is pressured when it faults or
   swaps above the policy's thresholds, or when its ``usable`` is below its free margin (now,
   or by the next sample if its use keeps growing as fast as since the last one). It grows at
   once by its (projected) margin deficit plus headroom, and never shrinks. The headroom is
   one step, doubled for each further cycle the guest stays pressured. A guest below its floor
   is raised to it. Judging on the trend matters most for guests without swap or file pages
   (typical of small VMs): they give no fault or swap-in warning before their kernel OOM-kills.
   A guest that took pages back from its balloon since the last decision (deflate-on-OOM:
   its kernel ran out of memory) is pressured too, and says so (``taken_back_kib``); what it
   used at that peak keeps it from being shrunk again at once (``recent_peak``), in every
   state -- the fight MOM's and Proxmox's rules lose in bench.pressure.
2. **The node's reclamation ladder** (``planning.ladder``), judged on MemAvailable after that
   growth, decides what the others do: in Plenty guests grow back toward their maximum (most
   used first, then most recently shrunk, one step each, no further than the Plenty threshold);
   in Clear all hold; in Soft idle guests give (most surplus per share first, one step each at
   most, never below the floor) only what brings the node back to Clear, cycle after cycle
   until it gets there (every idle guest one step while pressure stalls alone hold the node in
   Soft); in Hard and Critical every guest not under pressure gives, in steps of
   ``HARD_STEP_FACTOR`` times the usual, down to its floor, and nothing grows but a pressured
   guest (a guest below a policy floor waits). Before Critical a balloon is for the host's
   gain: a guest that reports its free pages (KubeVirt's default) has its free memory back on
   the host already, so it gives only what a move takes beyond that (its page cache), or
   nothing -- inflating over free memory gains nothing and takes the headroom that keeps the
   guest alive through a sudden demand. In Critical it gives to its floor like any guest.
3. **Floors are absolute** (``guest_floor``, which counts a growing guest's growth as
   used), moves under ``min_move_kib`` are dropped (no
   flapping), a guest recently under pressure is not shrunk again for a few intervals, and a
   statistics sample older than the balloon's last move is corrected for that move.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from overcommit.api.policy import (
    BalloonAuto,
    BalloonFloor,
    BalloonMode,
    BalloonSpec,
    BalloonStatic,
    PolicySpec,
    VmSelector,
)
from overcommit.api.schema import quantity_bytes
from overcommit.planning import ladder as node_ladder
from overcommit.planning.ladder import Ladder, State
from overcommit.planning.observation import Observation
from overcommit.planning.selection import selector_matches
from overcommit.virt.model import BalloonTarget, GuestDecision, GuestObservation

MIB = 1024  # KiB
PAGE_KIB = 4  # libvirt's swap_in is in KiB; the policy's thresholds are in 4 KiB pages
SHARES_ANNOTATION = "memoryovercommit.io/balloon-shares"
# Statistics older than this many stats periods are stale: the guest may have changed since.
STALE_PERIODS = 3
# A guest that was under pressure is not shrunk again for this many Auto intervals, so a guest
# held near its margin does not bounce between "give" and "grow" (the Proxmox complaint).
COOLDOWN_INTERVALS = 3
# Headroom for a pressured guest doubles for each further cycle it stays pressured (swapped-out
# memory is invisible in the stats, so one step may not be enough), up to 2**this steps.
MAX_HEADROOM_DOUBLINGS = 4
# What a guest used at its peak within this many Auto intervals still counts as what it needs:
# a guest whose process was just OOM-killed, or whose batch job paused, looks idle but will
# use that memory again (shrinking it to its momentary use is how MOM's and Proxmox's rules
# kill twice).
PEAK_WINDOW_INTERVALS = 6
MIN_MOVE_KIB = MIB
MIN_MOVE_PERCENT = 1
# In Hard and Critical a guest gives up to this many steps per cycle: the node is close to the
# kubelet's eviction threshold and the kernel's OOM killer, the guest only to its floor (which
# keeps what it uses, its expected growth and its free margin).
HARD_STEP_FACTOR = 2

Key = tuple[str, str]


# ------------------------------------------------------------------------------------------------
# State and plan


@dataclass(frozen=True)
class GuestMemory:
    """What the planner remembers of one guest between cycles."""

    uuid: str  # a new uuid under the same name is a new guest: its counters start again
    time: float  # monotonic time of the sample the counters come from
    stamp: int | None  # that sample's ``last_update`` (epoch seconds), when reported
    swap_in_kib: int | None
    major_faults: int | None
    sample_current_kib: int | None = None  # the balloon's size when that sample was first seen
    last_shrink_time: float | None = None
    last_pressure_time: float | None = None
    pressure_streak: int = 0  # consecutive cycles under pressure, up to the last one
    sample_used_kib: int | None = None  # what the guest used (current - usable) at that sample
    use_growth_kib: int = 0  # how much more it used at that sample than at the one before
    peak_used_kib: int | None = None  # the most it used within the peak window
    peak_time: float | None = None  # when it used that much
    seen_current_kib: int | None = None  # the balloon's size when the planner last decided
    target_kib: int | None = None  # the size it then asked for


@dataclass(frozen=True)
class BalloonState:
    guests: Mapping[Key, GuestMemory] = field(default_factory=dict)
    # The ladder the planner judged itself when it was not given the node's (benchmarks and
    # tests call ``plan_balloons`` alone): its hysteresis needs the last cycle's.
    ladder: Ladder | None = None
    # Auto mode decides every auto.intervalSeconds, whatever the cycle's pace: when it last
    # did, and what it decided for each guest (target KiB or None, reason), shown meanwhile.
    decided_at: float | None = None
    last_decisions: Mapping[Key, tuple[int | None, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class BalloonPlan:
    targets: tuple[BalloonTarget, ...]  # only the balloons that move this cycle
    decisions: tuple[GuestDecision, ...]  # one per observed guest, in the order observed
    state: BalloonState


# ------------------------------------------------------------------------------------------------
# Selection


def select_guests(selector: VmSelector | None, guests: Iterable[GuestObservation]
                  ) -> tuple[tuple[GuestObservation, ...], tuple[GuestDecision, ...]]:
    """The guests a ``VmSelector`` names, and a decision saying why for each one it does not.

    Every set term must hold: namespaces (the VMI's), matchLabels/matchExpressions (the VMI's
    labels, Kubernetes semantics), domainNamePattern (fnmatch, case-sensitive, on the libvirt
    domain name). Absent or empty terms (an empty ``namespaces`` list included) select all.
    """
    selected: list[GuestObservation] = []
    excluded: list[GuestDecision] = []
    for guest in guests:
        why = _not_selected_because(selector, guest)
        if why:
            excluded.append(GuestDecision(guest, None, f"not selected: {why}"))
        else:
            selected.append(guest)
    return tuple(selected), tuple(excluded)


def _not_selected_because(selector: VmSelector | None, guest: GuestObservation) -> str:
    if selector is None:
        return ""
    pattern = selector.domain_name_pattern
    if pattern and not fnmatch.fnmatchcase(guest.domain, pattern):
        return f"domain name {guest.domain!r} does not match {pattern!r}"
    wants_vmi = bool(selector.namespaces or selector.match_labels or selector.match_expressions)
    if wants_vmi and guest.vmi_namespace is None:
        # Matching a plain domain's empty labels would let NotIn/DoesNotExist select it.
        return ("no KubeVirt VMI metadata (a plain libvirt domain): a namespace or label "
                "selector never matches it")
    if selector.namespaces and guest.vmi_namespace not in selector.namespaces:
        return (f"namespace {guest.vmi_namespace} is not one of "
                f"{', '.join(selector.namespaces)}")
    if not selector_matches(selector, guest.labels):
        return "the VMI's labels do not match the selector"
    return ""


# ------------------------------------------------------------------------------------------------
# Floors and pressure


def _ceil_percent(kib: int, percent: int) -> int:
    return -(-kib * percent // 100)


def free_returned_kib(guest: GuestObservation, usable: int) -> int:
    """The guest's free memory (its MemFree, the driver's ``unused``) when it reports free pages
    (``freePageReporting``): the host has discarded those pages already, so a balloon inflating
    over them gains the host nothing; only what it takes beyond them (page cache) is a gain.
    Corrected for balloon moves since the sample as ``usable`` is; 0 without reporting."""
    if not guest.free_page_reporting or "unused" not in guest.stats:
        return 0
    moved = usable - min(guest.stats["usable"], guest.current_kib)
    return max(0, min(guest.stats["unused"] + moved, usable))


def margin_kib(floor: BalloonFloor, guest: GuestObservation) -> int:
    """The usable memory the guest must keep: guestFreeMarginPercent of its current size."""
    return _ceil_percent(guest.current_kib, floor.guest_free_margin_percent)


def usable_kib(guest: GuestObservation, memory: GuestMemory | None = None) -> int:
    """The guest's MemAvailable, clamped to its current size.

    The statistics sample can predate the balloon's last move (the stats period and the
    planner's interval are not in step). While no newer sample came, what the guest uses is
    unchanged, so every KiB the balloon moved since the sample was first seen is a KiB of
    usable memory more or less — without this a grown guest would look pressured again and be
    grown twice on the same sample.
    """
    usable = guest.stats["usable"]
    stamp = _stamp(guest)
    if memory is not None and memory.uuid == guest.uuid and stamp is not None \
            and stamp == memory.stamp and memory.sample_current_kib is not None:
        usable += guest.current_kib - memory.sample_current_kib
    return max(0, min(usable, guest.current_kib))


def guest_floor(floor: BalloonFloor, guest: GuestObservation,
                usable: int | None = None, growth: int = 0) -> tuple[int, str]:
    """The least memory (KiB) the guest may have, and which term sets it. The largest of:

    * ``minPercent`` of the guest's maximum — the policy's relative floor;
    * ``min`` — the policy's absolute floor;
    * the VMI's memory request, when known — what Kubernetes promised the guest;
    * what the guest uses now (current - usable), plus what it is likely to use more by the
      next sample (``growth``, see ``use_growth_kib``), plus its free margin — what keeps it
      out of reclaim trouble (needs the driver's ``usable``).

    Never above the guest's maximum, which is the most its balloon can be anyway. ``usable``
    defaults to the sample's (see ``usable_kib``).
    """
    used = guest.current_kib - (usable_kib(guest) if usable is None else usable)
    growing = f" + {mib(growth)} growing" if growth > 0 else ""
    return _largest(guest.max_kib, [
        *_policy_terms(floor, guest.max_kib),
        (guest.request_kib or 0, "VMI memory request"),
        (used + max(0, growth) + margin_kib(floor, guest),
         f"in use {mib(used)}{growing} + {floor.guest_free_margin_percent}% margin"),
    ])


def policy_minimum(floor: BalloonFloor, max_kib: int) -> tuple[int, str]:
    """The policy's own floor terms only (minPercent, min): the per-guest minimum the
    baselines are given, as an admin would configure MOM's guarantee or Proxmox's minimum."""
    return _largest(max_kib, _policy_terms(floor, max_kib))


def _policy_terms(floor: BalloonFloor, max_kib: int) -> list[tuple[int, str]]:
    return [(_ceil_percent(max_kib, floor.min_percent), f"{floor.min_percent}% of max"),
            (-(-quantity_bytes(floor.min) // 1024) if floor.min is not None else 0,
             f"floor.min {floor.min}")]


def _largest(max_kib: int, terms: list[tuple[int, str]]) -> tuple[int, str]:
    value, why = max(terms, key=lambda term: term[0])
    if value > max_kib:
        return max_kib, f"{why}, capped at max"
    return value, why


def min_move_kib(max_kib: int) -> int:
    """Moves smaller than this are not worth a balloon operation (and would flap)."""
    return max(MIN_MOVE_KIB, max_kib * MIN_MOVE_PERCENT // 100)


def step_kib(auto: BalloonAuto, max_kib: int) -> int:
    """The most a balloon moves in one Auto cycle (pressure growth and floors aside):
    ``maxStepPercent`` of the maximum, at least ``minStep``, at most the maximum."""
    at_least = quantity_bytes(auto.min_step) // 1024
    return max(1, min(max_kib, max(max_kib * auto.max_step_percent // 100, at_least)))


def headroom_kib(auto: BalloonAuto, max_kib: int, streak: int) -> int:
    """Growth on top of the margin deficit for a guest pressured ``streak`` cycles before."""
    return step_kib(auto, max_kib) << min(streak, MAX_HEADROOM_DOUBLINGS)


def shares_of(auto: BalloonAuto, guest: GuestObservation) -> int:
    """The guest's weight: its shares annotation when a positive integer, else the default."""
    text = guest.annotations.get(SHARES_ANNOTATION, "")
    return int(text) if text.isdigit() and int(text) > 0 else auto.default_shares


def skip_reason(spec: BalloonSpec, guest: GuestObservation) -> str:
    """Why a selected guest's balloon cannot be managed safely this cycle ("" when it can)."""
    if guest.problem:
        return f"skipped: {guest.problem}"
    if not guest.has_balloon:
        return "skipped: no balloon device"
    if guest.exclusions:
        return f"skipped: never ballooned: {'; '.join(guest.exclusions)}"
    if guest.migration:
        return f"skipped: {guest.migration}"
    if "usable" not in guest.stats or "available" not in guest.stats:
        return "skipped: balloon driver not reporting statistics (no usable/available)"
    stale_after = STALE_PERIODS * spec.stats_period_seconds
    if guest.stats_age_s is not None and guest.stats_age_s > stale_after:
        return (f"skipped: balloon statistics are {guest.stats_age_s:.0f}s old "
                f"(stale after {STALE_PERIODS} x {spec.stats_period_seconds}s stats period)")
    if guest.max_kib <= 0 or guest.current_kib <= 0:
        return "skipped: libvirt reports no memory size"
    if guest.current_kib > guest.max_kib:  # no sane target: growing it would shrink it
        return (f"skipped: balloon size {mib(guest.current_kib)} is above the maximum "
                f"{mib(guest.max_kib)}")
    return ""


@dataclass(frozen=True)
class GuestView:
    """A managed guest as judged this cycle (KiB)."""

    obs: GuestObservation
    usable: int
    growth: int  # how much more than now the guest is likely to use (see expected_growth)
    trend: int  # how much more it used at this sample than at the one before
    peak: int  # the most it used within the peak window, and when
    peak_time: float
    margin: int
    floor: int
    floor_why: str
    pressure: str  # why the guest is under pressure; "" when it is not
    cooling: bool  # under pressure within the cooldown: not idle yet
    known: bool  # an earlier sample of this guest was seen: its trend is known
    streak: int  # consecutive earlier cycles under pressure
    shares: int
    last_shrink: float | None
    free_returned: int = 0  # its free memory the host has back already (free page reporting)

    @property
    def key(self) -> Key:
        return self.obs.key

    @property
    def current(self) -> int:
        return self.obs.current_kib

    @property
    def surplus(self) -> int:
        """What the guest could give without crossing its floor."""
        return max(0, self.current - self.floor)

    @property
    def projected(self) -> int:
        """``usable`` at the next sample if the guest's use grows as it did since the last one
        (negative when it would run out)."""
        return self.usable - self.growth

    @property
    def deficit(self) -> int:
        """How far the projected ``usable`` is below the free margin."""
        return max(0, self.margin - self.projected)


def _stamp(guest: GuestObservation) -> int | None:
    stamp = guest.stats.get("last_update")
    return stamp if stamp else None


def _rates(guest: GuestObservation, memory: GuestMemory | None
           ) -> tuple[float | None, float | None]:
    """(major faults/s, swap-in pages/s) since the remembered sample; None when unknown."""
    if memory is None or memory.uuid != guest.uuid:
        return None, None
    stamp = _stamp(guest)
    # Counters change only with a new sample: time them by the samples' stamps when known.
    if stamp is not None and memory.stamp is not None:
        elapsed = float(stamp - memory.stamp)
    else:
        elapsed = guest.time - memory.time
    if elapsed <= 0:
        return None, None
    swap_in = guest.stats.get("swap_in")
    return (_rate(guest.stats.get("major_fault"), memory.major_faults, elapsed),
            _rate(None if swap_in is None else swap_in // PAGE_KIB,
                  None if memory.swap_in_kib is None else memory.swap_in_kib // PAGE_KIB,
                  elapsed))


def _rate(now: int | None, before: int | None, elapsed: float) -> float | None:
    if now is None or before is None or now < before:  # a reboot resets the counters
        return None
    return (now - before) / elapsed


def use_growth_kib(guest: GuestObservation, memory: GuestMemory | None, usable: int) -> int:
    """How much more the guest uses (current - usable) than at the sample before (0 when it
    uses less, or when there is no earlier sample). A cycle that sees the same sample as the
    last one keeps the last growth: the trend is still the best guess for what comes next."""
    if memory is None or memory.uuid != guest.uuid or memory.sample_used_kib is None:
        return 0
    stamp = _stamp(guest)
    if stamp is not None and stamp == memory.stamp:
        return memory.use_growth_kib
    return max(0, guest.current_kib - usable - memory.sample_used_kib)


def recent_peak(auto: BalloonAuto, guest: GuestObservation, memory: GuestMemory | None,
                used: int) -> tuple[int, float]:
    """The most the guest used within the last ``PEAK_WINDOW_INTERVALS`` intervals, this
    sample included, and when."""
    window = PEAK_WINDOW_INTERVALS * auto.interval_seconds
    if memory is None or memory.uuid != guest.uuid or memory.peak_used_kib is None \
            or memory.peak_time is None or guest.time - memory.peak_time > window \
            or used >= memory.peak_used_kib:
        return used, guest.time
    return memory.peak_used_kib, memory.peak_time


def expected_growth(auto: BalloonAuto, trend: int, used: int, peak: int) -> tuple[int, str]:
    """How much more than now the guest is likely to use by the next sample, and why: its
    growth since the last sample again, or back up to its recent peak, whichever is more."""
    if peak - used > trend:
        return peak - used, (f"it used {mib(peak)} within the last "
                             f"{PEAK_WINDOW_INTERVALS * auto.interval_seconds}s")
    if trend > 0:
        return trend, f"use grew {mib(trend)} since the last sample"
    return 0, ""


def taken_back_kib(guest: GuestObservation, memory: GuestMemory | None, usable: int,
                   margin: int) -> int:
    """How much the guest took back from its balloon since the planner last decided.

    It grew by itself when it is above both the size it had then and the size the planner
    asked for. It is also when it is above the size asked while short of memory (``usable``
    below its margin): a guest whose kernel ran out of memory takes pages back from a balloon
    that deflates on OOM -- and a balloon still inflating toward a smaller target (the other
    way to be above it) into a guest that short must stop anyway. Someone else setting the
    size counts too: either way the planner must not take the pages again at once. Moves
    under ``min_move_kib`` are noise."""
    if memory is None or memory.uuid != guest.uuid or memory.seen_current_kib is None \
            or memory.target_kib is None:
        return 0
    grew = guest.current_kib - max(memory.seen_current_kib, memory.target_kib)
    if usable < margin:
        grew = max(grew, guest.current_kib - memory.target_kib)
    return grew if grew >= min_move_kib(guest.max_kib) else 0


def _pressure(auto: BalloonAuto, guest: GuestObservation, memory: GuestMemory | None,
              usable: int, growth: tuple[int, str], margin: int, taken: int) -> str:
    faults, swap_in = _rates(guest, memory)
    signs = []
    if taken and guest.autodeflate:
        signs.append(f"took {mib(taken)} back from its balloon since the last decision "
                     f"(deflate-on-OOM: its kernel ran out of memory)")
    elif taken:
        signs.append(f"{mib(taken)} above the size asked at the last decision (its balloon "
                     f"could not take that much, or someone else set its size)")
    if faults is not None and faults > auto.pressure_major_faults_per_second:
        signs.append(f"{faults:.0f} major faults/s > {auto.pressure_major_faults_per_second}")
    if swap_in is not None and swap_in > auto.pressure_swap_in_pages_per_second:
        signs.append(f"swap-in {swap_in:.0f} pages/s > "
                     f"{auto.pressure_swap_in_pages_per_second}")
    cgroup = (guest.cgroup_pressure or {}).get("some_avg10")
    if cgroup is not None and cgroup > auto.pressure_cgroup_percent * 100:
        signs.append(f"its cgroup's memory PSI some avg10 {cgroup / 100:.2f}% > "
                     f"{auto.pressure_cgroup_percent}%")
    if usable < margin:
        signs.append(f"usable {mib(usable)} < margin {mib(margin)}")
    elif usable - growth[0] < margin:
        signs.append(f"{growth[1]}: usable {mib(usable)} would fall to "
                     f"{mib(usable - growth[0])} < margin {mib(margin)}")
    return ", ".join(signs)


def assess(spec: BalloonSpec, guest: GuestObservation, memory: GuestMemory | None) -> GuestView:
    """Judge a guest that ``skip_reason`` let through."""
    auto, floor = spec.auto or BalloonAuto(), spec.floor or BalloonFloor()
    mem = memory if memory is not None and memory.uuid == guest.uuid else None
    usable, margin = usable_kib(guest, mem), margin_kib(floor, guest)
    trend, used = use_growth_kib(guest, mem, usable), guest.current_kib - usable
    peak, peak_time = recent_peak(auto, guest, mem, used)
    growth = expected_growth(auto, trend, used, peak)
    floor_kib, floor_why = guest_floor(floor, guest, usable, growth[0])
    taken = taken_back_kib(guest, mem, usable, margin)
    pressure = _pressure(auto, guest, mem, usable, growth, margin, taken)
    cooldown = COOLDOWN_INTERVALS * auto.interval_seconds
    cooling = bool(mem and mem.last_pressure_time is not None
                   and guest.time - mem.last_pressure_time < cooldown)
    return GuestView(obs=guest, usable=usable, growth=growth[0], trend=trend, peak=peak,
                     peak_time=peak_time, margin=margin, floor=floor_kib,
                     known=mem is not None and mem.sample_used_kib is not None,
                     floor_why=floor_why, pressure=pressure, cooling=cooling,
                     streak=mem.pressure_streak if mem else 0, shares=shares_of(auto, guest),
                     last_shrink=mem.last_shrink_time if mem else None,
                     free_returned=free_returned_kib(guest, usable))


# ------------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Choice:
    """The planner's answer for one managed guest: its target (== current to hold) and why."""

    target: int
    reason: str


def plan_balloons(spec: BalloonSpec, guests: Sequence[GuestObservation], host: Observation,
                  prev: BalloonState | None, ladder: Ladder | None = None) -> BalloonPlan:
    """One balloon cycle under ``spec``. ``prev`` is None on the first cycle. ``ladder`` is
    the node's reclamation ladder this cycle (the balloon lever always passes it); without
    one the planner judges the ladder itself from ``host`` and a policy of only ``spec``,
    remembering it in the state (benchmarks and tests)."""
    if spec.mode is BalloonMode.OFF:
        return BalloonPlan((), tuple(GuestDecision(g, None, "balloon mode Off: left alone")
                                     for g in guests), BalloonState())
    managed = managed_guests(spec, guests, prev)
    if spec.mode is BalloonMode.STATIC:
        return assemble(guests, managed, _plan_static(spec, managed.views), prev)
    own = None
    if ladder is None:
        ladder = own = node_ladder.step(prev.ladder if prev is not None else None, host,
                                        PolicySpec(balloon=spec))
    choices = _plan_auto(spec.auto or BalloonAuto(), managed.views, ladder)
    return assemble(guests, managed, choices, prev, ladder=own)


@dataclass(frozen=True)
class Managed:
    views: tuple[GuestView, ...]  # selected and manageable this cycle
    skipped: tuple[GuestDecision, ...]  # selected, but left alone this cycle (why)
    excluded: tuple[GuestDecision, ...]  # not selected (why)


def managed_guests(spec: BalloonSpec, guests: Sequence[GuestObservation],
                   prev: BalloonState | None) -> Managed:
    """The selected guests that can be managed, and a decision for every other one."""
    memory = prev.guests if prev is not None else {}
    selected, excluded = select_guests(spec.vm_selector, guests)
    views, skipped = [], []
    for guest in selected:
        why = skip_reason(spec, guest)
        if why:
            skipped.append(GuestDecision(guest, None, why))
        else:
            views.append(assess(spec, guest, memory.get(guest.key)))
    return Managed(tuple(views), tuple(skipped), excluded)


def assemble(guests: Sequence[GuestObservation], managed: Managed,
             choices: Mapping[Key, Choice], prev: BalloonState | None,
             ladder: Ladder | None = None) -> BalloonPlan:
    """Targets, decisions in the order observed, and the state for the next cycle."""
    by_key = {d.guest.key: d for d in managed.skipped + managed.excluded}
    targets = []
    for view in managed.views:
        choice = choices[view.key]
        by_key[view.key] = GuestDecision(view.obs, choice.target, choice.reason, view.usable,
                                         view.floor, bool(view.pressure), view.growth)
        if choice.target != view.current:
            targets.append(BalloonTarget(view.obs.endpoint, view.obs.domain, view.current,
                                         choice.target, choice.reason))
    decisions = tuple(by_key[g.key] for g in guests)
    return BalloonPlan(tuple(targets), decisions,
                       _remember(managed, choices, prev, ladder))


def _remember(managed: Managed, choices: Mapping[Key, Choice], prev: BalloonState | None,
              ladder: Ladder | None) -> BalloonState:
    old = prev.guests if prev is not None else {}
    # A guest skipped for a cycle (stale stats, a transient problem) keeps its history.
    kept = {d.guest.key: old[d.guest.key] for d in managed.skipped if d.guest.key in old}
    for view in managed.views:
        kept[view.key] = _memory(view, choices[view.key], old.get(view.key))
    return BalloonState(kept, ladder)


def _memory(view: GuestView, choice: Choice, old: GuestMemory | None) -> GuestMemory:
    guest, stamp = view.obs, _stamp(view.obs)
    memory = old if old is not None and old.uuid == guest.uuid else GuestMemory(
        uuid=guest.uuid, time=guest.time, stamp=None, swap_in_kib=None, major_faults=None)
    memory = replace(memory, peak_used_kib=view.peak, peak_time=view.peak_time,
                     seen_current_kib=guest.current_kib, target_kib=choice.target)
    # A new sample's counters become the base of the next rates; the same sample as last
    # cycle keeps the older ones, so the next rate spans a real interval.
    if stamp is None or stamp != memory.stamp:
        memory = replace(memory, time=guest.time, stamp=stamp,
                         swap_in_kib=guest.stats.get("swap_in"),
                         major_faults=guest.stats.get("major_fault"),
                         sample_current_kib=guest.current_kib,
                         sample_used_kib=guest.current_kib - view.usable,
                         use_growth_kib=view.trend)
    if choice.target < view.current:
        memory = replace(memory, last_shrink_time=guest.time)
    if view.pressure:
        return replace(memory, last_pressure_time=guest.time, pressure_streak=view.streak + 1)
    return replace(memory, pressure_streak=0)


# ------------------------------------------------------------------------------------------------
# Static


def static_target_kib(static: BalloonStatic, max_kib: int) -> int:
    if static.target is not None:
        return min(max_kib, quantity_bytes(static.target) // 1024)
    return max_kib * (static.target_percent or 100) // 100


def _plan_static(spec: BalloonSpec, views: Sequence[GuestView]) -> dict[Key, Choice]:
    """Straight to the static target — no step limit, the target is the user's explicit
    choice — but never below the floor, and a pressured guest is never shrunk."""
    static = spec.static or BalloonStatic(target_percent=100)
    return {view.key: _static_choice(view, static_target_kib(static, view.obs.max_kib))
            for view in views}


def _static_choice(view: GuestView, target: int) -> Choice:
    desired = max(target, view.floor)
    at = f"static target {mib(target)}"
    if desired > target:
        at = f"held at floor ({mib(view.floor)}: {view.floor_why}) above the {at}"
    if view.current < view.floor:
        return Choice(desired, f"{at}: raised from {mib(view.current)}")
    if view.pressure and desired < view.current:
        return _hold(view, f"under pressure ({view.pressure}): not shrunk toward the {at}")
    if abs(desired - view.current) < min_move_kib(view.obs.max_kib):
        return _hold(view, f"at the {at}" if desired == target else at)
    return Choice(desired, f"{at}: moved from {mib(view.current)}")


def _hold(view: GuestView, why: str) -> Choice:
    return Choice(view.current, f"{why}; held at {mib(view.current)}")


# ------------------------------------------------------------------------------------------------
# Auto


@dataclass(frozen=True)
class HostBand:
    """What the ladder lets idle guests do this cycle, after pressured growth."""

    state: State  # the ladder's, or worse once pressured guests grew
    amount: int | None  # KiB to reclaim (Soft and worse: None for one step from each guest)
    #                     or to give back (Plenty); 0 otherwise
    summary: str

    @property
    def reclaims(self) -> bool:
        return self.state.at_least(State.SOFT)

    @property
    def hard(self) -> bool:
        return self.state.at_least(State.HARD)

    @property
    def critical(self) -> bool:
        return self.state.at_least(State.CRITICAL)


def host_band(ladder: Ladder, growth_kib: int) -> HostBand:
    """The ladder's state once pressured guests grew by ``growth_kib``, and how much memory
    that state asks of (or offers to) the other guests: in Soft and worse, what brings
    MemAvailable back above Soft's exit threshold (Clear), so reclaim goes on, cycle after
    cycle, until the node is back in Clear and does not hover at the edge; in Plenty, what
    MemAvailable has above the Plenty threshold."""
    state = ladder.after_growth(growth_kib * 1024)
    available = ladder.reading.available
    if available is None:
        return HostBand(state, 0, f"ladder {state.value} (host MemAvailable unknown)")
    projected = available - growth_kib * 1024  # bytes, as the ladder judges
    text = f"ladder {state.value}, MemAvailable {mib(available // 1024)}"
    if growth_kib > 0:
        text += f" ({mib(projected // 1024)} after growing pressured guests)"
    th = ladder.thresholds
    if state.at_least(State.SOFT):
        leave = th.leave_above(State.SOFT)
        if projected <= leave:  # just above it, or the ladder holds the node in Soft
            return HostBand(state, (leave - projected) // 1024 + 1,
                            f"{text} < {mib(leave // 1024)} (back to Clear)")
        return HostBand(state, None, f"{text}, held by memory pressure")
    if state is State.PLENTY:
        return HostBand(state, max(0, projected - th.below[State.CLEAR]) // 1024,
                        f"{text} > {mib(th.below[State.CLEAR] // 1024)}")
    return HostBand(state, 0, text)


def _plan_auto(auto: BalloonAuto, views: Sequence[GuestView],
               ladder: Ladder) -> dict[Key, Choice]:
    band = host_band(ladder, 0)
    choices = {v.key: c for v in views if (c := _urgent(auto, v, band)) is not None}
    growth = sum(c.target - v.current for v in views if (c := choices.get(v.key)) is not None)
    band = host_band(ladder, max(0, growth))
    rest = [v for v in views if v.key not in choices]
    if band.reclaims:
        choices.update(_reclaim(auto, band, rest))
    elif band.state is State.PLENTY:
        choices.update(_give_back(auto, band, rest))
    else:
        choices.update({v.key: _hold(v, f"{band.summary}: hold") for v in rest})
    return choices


def _urgent(auto: BalloonAuto, view: GuestView, band: HostBand) -> Choice | None:
    """Moves that do not wait for the host: pressured guests, and guests below their floor
    (in Hard and Critical only the pressured: a guest below a policy floor is not short of
    memory, and nothing else may grow while the node is)."""
    if view.pressure:
        return _grow_pressured(auto, view)
    if view.current < view.floor:
        if band.hard:
            return _hold(view, f"below its floor {mib(view.floor)} ({view.floor_why}), but "
                               f"{band.summary}: only guests under pressure grow")
        return Choice(view.floor, f"below its floor {mib(view.floor)} ({view.floor_why}): "
                                  f"raised by {mib(view.floor - view.current)}")
    return None


def _grow_pressured(auto: BalloonAuto, view: GuestView) -> Choice:
    max_kib = view.obs.max_kib
    headroom = headroom_kib(auto, max_kib, view.streak)
    target = min(max_kib, max(view.floor, view.current + view.deficit + headroom))
    if target - view.current < min_move_kib(max_kib) and view.current >= view.floor:
        return _hold(view, f"under pressure ({view.pressure}) but no worthwhile growth is left "
                           f"below its maximum {mib(max_kib)}")
    return Choice(target, f"under pressure ({view.pressure}): grown by "
                          f"{mib(target - view.current)} (margin deficit {mib(view.deficit)}"
                          f" + headroom {mib(headroom)}, max {mib(max_kib)})")


def _reclaim(auto: BalloonAuto, band: HostBand, views: Sequence[GuestView]) -> dict[Key, Choice]:
    """Guests give, most surplus per share first, until the node is back in Clear: in Soft
    the idle ones, one step each; in Hard and Critical every one not under pressure, up to
    ``HARD_STEP_FACTOR`` steps each, down to its floor. Before Critical, a guest that reports
    its free pages counts only what a move takes beyond its free memory, and gives nothing
    when that is not worth a move (``free_returned_kib``)."""
    need = band.amount
    choices = {}
    factor = HARD_STEP_FACTOR if band.hard else 1
    for view in sorted(views, key=lambda v: -v.surplus * auto.default_shares / v.shares):
        most = min(factor * step_kib(auto, view.obs.max_kib), view.surplus)
        # Before Critical a balloon is for the host's gain, and over memory the host has back
        # already (free page reporting) it gains nothing: it only takes the guest's headroom.
        # In Critical every guest gives to its floor: there it caps what guests may still use.
        free_back = 0 if band.critical else view.free_returned
        give = min(most, most if need is None else need + free_back)
        why_not = (("" if band.hard else _why_not_idle(view))
                   or _no_gain(view, give, free_back) or _too_small(view, give - free_back, need))
        if why_not:
            choices[view.key] = _hold(view, f"{band.summary}: {why_not}")
            continue
        if need is not None:
            need -= give - free_back
        who = "guest" if band.hard else "idle guest"
        gained = (f" ({mib(give - free_back)} of it gained: the rest is free memory the host "
                  f"has back already, free page reporting)" if free_back else "")
        choices[view.key] = Choice(
            view.current - give, f"{band.summary}: {who} (usable {mib(view.usable)}, "
                                 f"floor {mib(view.floor)}) gives {mib(give)}{gained}")
    return choices


def _why_not_idle(view: GuestView) -> str:
    if not view.known:
        # After an agent restart (or for a new guest) one sample says nothing of where its use
        # is heading; shrinking a guest that is filling up is how OOM kills happen.
        return "first sample: its trend is not known yet, not shrunk before the next one"
    if view.cooling:
        return "was under pressure recently, not shrunk yet"
    if view.projected < view.margin + min_move_kib(view.obs.max_kib):
        growing = f" (its use grew {mib(view.growth)})" if view.growth else ""
        return (f"usable {mib(view.usable)}{growing} is not well above its margin "
                f"{mib(view.margin)}")
    return ""


def _no_gain(view: GuestView, give: int, free_back: int) -> str:
    if not free_back or give - free_back >= min_move_kib(view.obs.max_kib):
        return ""
    return (f"reports its free pages: its {mib(free_back)} free are back on the host already, "
            f"and {mib(give)} would take no more than that")


def _too_small(view: GuestView, give: int, need: int | None) -> str:
    if give >= min_move_kib(view.obs.max_kib):
        return ""
    if need is not None and need < min_move_kib(view.obs.max_kib):
        return "other guests already give what the host needs"
    return f"at its floor {mib(view.floor)} ({view.floor_why})"


def _give_back(auto: BalloonAuto, band: HostBand,
               views: Sequence[GuestView]) -> dict[Key, Choice]:
    """Grow guests toward their maximum, most used first, then most recently shrunk, no
    further than the Plenty threshold (a guest grown does not use its new memory at once, so
    the host's MemAvailable only falls later; the next cycles keep the budget honest)."""
    budget = band.amount or 0
    choices = {}
    order = sorted(views, key=lambda v: ((v.usable - v.margin) / v.obs.max_kib,
                                         -(v.last_shrink or float("-inf"))))
    for view in order:
        grow = min(step_kib(auto, view.obs.max_kib), view.obs.max_kib - view.current, budget)
        if grow < min_move_kib(view.obs.max_kib):
            near_max = view.obs.max_kib - view.current < min_move_kib(view.obs.max_kib)
            why = "at its maximum" if near_max else "nothing left to give"
            choices[view.key] = _hold(view, f"{band.summary}: {why}")
            continue
        budget -= grow
        choices[view.key] = Choice(view.current + grow,
                                   f"{band.summary}: grown by {mib(grow)} toward its maximum "
                                   f"{mib(view.obs.max_kib)}")
    return choices


# ------------------------------------------------------------------------------------------------
# Release


def release_targets(guests: Iterable[GuestObservation],
                    restore_on_release: bool) -> tuple[BalloonTarget, ...]:
    """When a policy stops applying: every balloon back to its guest's maximum (growing is
    always safe for a guest), skipping guests without a balloon, and guests migrating (they
    stay owed, and are given back once the migration is over).

    Also for a guest that looks at its maximum already: a target set just before (the last
    cycle's shrink) may not have moved the balloon yet, and ``current`` is where the balloon
    *is*, not where it is going. Setting the maximum again is harmless and wins that race."""
    if not restore_on_release:
        return ()
    return tuple(BalloonTarget(g.endpoint, g.domain, g.current_kib, g.max_kib,
                               "policy released: balloon restored to the guest's maximum")
                 for g in guests if g.has_balloon and g.max_kib > 0 and not g.migration)


def mib(kib: int) -> str:
    return f"{kib / MIB:.0f} MiB"
