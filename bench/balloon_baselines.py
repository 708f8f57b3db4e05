"""The balloon policies users compare us with, RE-IMPLEMENTED from their documented algorithms.

Neither is the original program: oVirt MOM's balloon policy (``doc/balloon.rules``, a Lisp-like
DSL) and Proxmox VE's auto-ballooning (``PVE/AutoBalloon.pm`` ``compute_alg1``, called from
``pvestatd`` every 10 s) were re-written here, as pure functions with ``plan_balloons``'s
signature, so a benchmark can run all three on the same guests (see
/work/shared/reference/anchors.md). Guest selection and the skip rules (no balloon, no stats)
are the project's, so the comparison is about the algorithms alone. Known simplifications:

* MOM averages samples (``StatAvg``); this uses the latest sample. MOM's guest ``balloon_min``
  (the oVirt guarantee) and Proxmox's ``balloon`` minimum are the policy's own floor terms
  (``floor.minPercent``, ``floor.min``: ``balloon.policy_minimum``), not the VMI request.
* Both read the guest's ``MemFree`` (libvirt ``unused``), never ``usable``; a guest without
  ``unused`` is left out, as they do.
* MOM may compute a grow target above the maximum (libvirt rejects it); it is capped here.
* Proxmox works in bytes; this works in KiB (rounding differs by under 1 KiB).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from overcommit.api.policy import BalloonAuto, BalloonFloor, BalloonSpec
from overcommit.planning.balloon import (
    MIB,
    BalloonPlan,
    BalloonState,
    Choice,
    GuestView,
    Key,
    assemble,
    managed_guests,
    mib,
    policy_minimum,
    shares_of,
)
from overcommit.planning.observation import Observation
from overcommit.virt.model import GuestObservation

# MOM doc/balloon.rules constants.
MOM_PRESSURE_THRESHOLD = 0.20  # host free below this: shrink every guest
MOM_PRESSURE_CRITICAL = 0.05  # at or below: squeeze guests below what they use (they swap)
MOM_MIN_GUEST_FREE = 0.20  # free memory an unconstrained guest keeps
MOM_MAX_CHANGE = 0.05  # per cycle, of the current size
MOM_MIN_CHANGE = 0.0025  # smaller changes are skipped

# Proxmox pvestatd / AutoBalloon constants.
PVE_TARGET_PERCENT = 80  # keep host memory use at this share ("ballooning-target")
PVE_MAX_CHANGE_KIB = 100 * MIB  # per guest per cycle
PVE_DEADBAND_KIB = 10 * MIB  # |goal| at or below this: do nothing
PVE_MAX_ROUNDS = 1000  # the Perl loop ends by itself; a bound keeps a port bug from hanging


def _baseline(spec: BalloonSpec, guests: Sequence[GuestObservation], prev: BalloonState | None,
              decide: Callable[[list[GuestView]], dict[Key, Choice]]) -> BalloonPlan:
    """Our selection and skip rules, then ``decide`` on the guests that report ``unused``."""
    managed = managed_guests(spec, guests, prev)
    usable = [v for v in managed.views if "unused" in v.obs.stats]
    choices = {v.key: Choice(v.current, "no unused (MemFree) statistic: left out; held")
               for v in managed.views}
    choices.update(decide(usable))
    return assemble(guests, managed, choices, prev)


# ------------------------------------------------------------------------------------------------
# oVirt MOM


def mom_host_free(host: Observation) -> float | None:
    """MOM's host "free": (MemFree + Buffers + Cached) / MemTotal."""
    total = host.mem_total
    if total <= 0:
        return None
    free = sum(host.counter("meminfo", name) for name in ("MemFree", "Buffers", "Cached"))
    return free / total


def mom_targets(spec: BalloonSpec, guests: Sequence[GuestObservation], host: Observation,
                prev: BalloonState | None) -> BalloonPlan:
    """MOM's balloon policy: host free below 20% shrinks every guest by at most 5% per cycle
    (to no less than its guarantee and what it uses plus a free share scaled by host
    pressure); otherwise every guest grows by at least 5% (more if it needs it) up to max."""
    floor = spec.floor or BalloonFloor()
    free = mom_host_free(host)

    def decide(views: list[GuestView]) -> dict[Key, Choice]:
        if free is None:
            return {v.key: Choice(v.current, "MOM: host memory unknown; held") for v in views}
        act = _mom_shrink if free < MOM_PRESSURE_THRESHOLD else _mom_grow
        return {v.key: act(v, free, floor) for v in views}

    return _baseline(spec, guests, prev, decide)


def _mom_used(view: GuestView) -> int:
    return view.current - view.obs.stats["unused"]  # MOM: balloon_cur - mem_unused


def _mom_shrink(view: GuestView, free: float, floor: BalloonFloor) -> Choice:
    if free <= MOM_PRESSURE_CRITICAL:
        guest_free = free - 0.05  # negative: force the guest to swap
    else:
        guest_free = MOM_MIN_GUEST_FREE * free / MOM_PRESSURE_THRESHOLD
    minimum = policy_minimum(floor, view.obs.max_kib)[0]
    balloon_min = max(minimum, _mom_used(view) + guest_free * view.current)
    size = max(view.current * (1 - MOM_MAX_CHANGE), balloon_min)
    why = f"MOM: host free {100 * free:.0f}% < {100 * MOM_PRESSURE_THRESHOLD:.0f}%: shrink"
    if size <= view.current and _mom_big_enough(view, size):
        return Choice(int(size), f"{why} to {mib(int(size))}")
    return Choice(view.current, f"{why}: no change worth making; held")


def _mom_grow(view: GuestView, free: float, floor: BalloonFloor) -> Choice:
    why = f"MOM: host free {100 * free:.0f}% >= {100 * MOM_PRESSURE_THRESHOLD:.0f}%: grow"
    max_kib = view.obs.max_kib
    if view.current >= max_kib:
        return Choice(view.current, f"{why}: at max; held")
    balloon_min = _mom_used(view) + MOM_MIN_GUEST_FREE * max_kib
    size = min(view.current * (1 + MOM_MAX_CHANGE), max_kib)
    size = min(max(size, balloon_min), max_kib)
    if _mom_big_enough(view, size):
        return Choice(int(size), f"{why} to {mib(int(size))}")
    return Choice(view.current, f"{why}: no change worth making; held")


def _mom_big_enough(view: GuestView, size: float) -> bool:
    return abs(size - view.current) > MOM_MIN_CHANGE * view.current


# ------------------------------------------------------------------------------------------------
# Proxmox VE


@dataclass
class PveVm:
    """compute_alg1's view of one VM (KiB)."""

    balloon: int  # current size
    balloon_min: int
    maxmem: int
    shares: int
    freemem: int  # guest MemFree


def proxmox_goal_kib(host: Observation) -> int | None:
    """pvestatd: goal = MemTotal x 80% - used, used = MemTotal - MemAvailable (+ grow)."""
    total = host.mem_total // 1024
    if total <= 0:
        return None
    used = total - host.mem_available // 1024
    return int(total * PVE_TARGET_PERCENT / 100 - used)


def proxmox_targets(spec: BalloonSpec, guests: Sequence[GuestObservation], host: Observation,
                    prev: BalloonState | None) -> BalloonPlan:
    """Proxmox's auto-ballooning: move guests toward a host at 80% use, 100 MiB per guest per
    cycle, share-proportionally; grow guests short of free memory first, shrink guests with
    enough free memory first."""
    floor, auto = spec.floor or BalloonFloor(), spec.auto or BalloonAuto()
    goal = proxmox_goal_kib(host)

    def decide(views: list[GuestView]) -> dict[Key, Choice]:
        vms = {v.key: PveVm(v.current, policy_minimum(floor, v.obs.max_kib)[0], v.obs.max_kib,
                            shares_of(auto, v.obs), v.obs.stats["unused"]) for v in views}
        result = compute_alg1(vms, goal or 0)
        why = f"Proxmox: goal {mib(goal)}" if goal is not None else "Proxmox: host unknown"
        return {v.key: Choice(result.get(v.key, v.current) or v.current,
                              f"{why}: {_pve_verb(v.current, result.get(v.key))}")
                for v in views}

    return _baseline(spec, guests, prev, decide)


def _pve_verb(current: int, target: int | None) -> str:
    if not target or target == current:
        return f"held at {mib(current)}"
    return f"{'grow' if target > current else 'shrink'} to {mib(target)}"


def compute_alg1(vms: Mapping[Key, PveVm], goal: int, maxchange: int = PVE_MAX_CHANGE_KIB,
                 deadband: int = PVE_DEADBAND_KIB) -> dict[Key, int]:
    """PVE::AutoBalloon::compute_alg1: new balloon sizes for the VMs that change. Units are
    the caller's (KiB here; Proxmox's own tests use bytes with a byte deadband)."""
    eligible = [k for k, d in vms.items() if d.balloon and d.balloon_min and d.shares]
    comfortable = [k for k in eligible if vms[k].freemem
                   and vms[k].freemem > vms[k].balloon_min * 0.25
                   and vms[k].balloon >= vms[k].balloon_min]
    pressured = [k for k in eligible if k not in comfortable]
    res: dict[Key, int] = {}
    if goal > deadband:
        rest = _pve_change(vms, res, pressured, goal, maxchange)  # pressured VMs first
        if rest >= goal:  # no progress: consider all VMs
            _pve_change(vms, res, eligible, rest, maxchange)
    elif goal < -deadband:
        rest = _pve_change(vms, res, comfortable, goal, maxchange)  # VMs with free memory first
        if rest <= goal:
            _pve_change(vms, res, eligible, rest, maxchange)
    return res


def _pve_change(vms: Mapping[Key, PveVm], res: dict[Key, int], ids: list[Key], amount: int,
                maxchange: int) -> int:
    """The Perl ``$change_func``: share out ``amount`` over ``ids``; returns what is left."""
    rest, repeat, progress, done, rounds = amount, True, 1, set(), 0
    while rest and repeat and progress and rounds < PVE_MAX_ROUNDS:
        rounds, repeat, progress = rounds + 1, False, 0
        live = [k for k in ids if k not in done]
        if not live:
            break
        shares_total = sum(vms[k].shares for k in live)
        alloc_new = sum(res.get(k, vms[k].balloon) - vms[k].balloon_min for k in live) + rest
        changes = 0
        for key in live:
            vm = vms[key]
            desired = vm.balloon_min + int(alloc_new / shares_total * vm.shares)
            if desired > vm.maxmem or desired < vm.balloon_min:
                desired, repeat = min(max(desired, vm.balloon_min), vm.maxmem), True
            if amount > 0 and desired > vm.balloon:
                balloon = min(vm.balloon + maxchange, desired)
            elif desired < vm.balloon:
                balloon = max(vm.balloon - maxchange, desired)
            else:
                done.add(key)
                continue
            if balloon == vm.balloon:
                continue
            change = balloon - res.get(key, vm.balloon)
            res[key] = balloon
            if change:
                changes += change
                progress += abs(balloon - vm.balloon)
                repeat = True
        rest -= changes
    return rest
