"""The MOM and Proxmox re-implementations follow their sources.

Proxmox's cases are its own (pve-manager's AutoBalloon test script: ``abtest`` runs one
``compute_alg1``, ``absim`` repeats it, applying each result, until nothing changes), in bytes
with decimal MB/GB as there. MOM's are computed by hand from ``doc/balloon.rules``.
"""

from __future__ import annotations

import copy

import pytest

from bench.balloon_baselines import (
    PveVm,
    compute_alg1,
    mom_host_free,
    mom_targets,
    proxmox_goal_kib,
    proxmox_targets,
)
from overcommit.planning.balloon import Key
from tests.unit.planning.test_balloon import GIB, MIB, balloon, host, target_of, vm

MB, GB = 1000**2, 1000**3
PVE_DEADBAND_BYTES = 10 * 1024 * 1024


def _vms(*rows: tuple[int, int, int, int, int, int]) -> dict[Key, PveVm]:
    """(vmid, maxmem, shares, balloon, balloon_min, freemem) rows."""
    return {("pve", str(vmid)): PveVm(balloon=b, balloon_min=bmin, maxmem=maxmem, shares=shares,
                                      freemem=free)
            for vmid, maxmem, shares, b, bmin, free in rows}


STATUS1 = _vms((100, 2 * GB, 2000, GB, GB, 0), (101, 2 * GB, 1000, GB, GB, 0))
STATUS2 = _vms((100, 2 * GB, 2000, 2 * GB, 2 * GB, 0), (101, 2 * GB, 1000, GB, GB, 0))
STATUS3 = _vms((100, 2 * GB, 2000, 2 * GB, 2 * GB, 0),
               (101, 2 * GB, 1000, GB + 7 * MB, GB, 0),
               (102, 2 * GB, 1000, GB, GB, 512 * MB))


def _alg1(vms: dict[Key, PveVm], goal: int) -> dict[str, int]:
    res = compute_alg1(vms, goal, 100 * MB, PVE_DEADBAND_BYTES)
    return {vmid: size for (_, vmid), size in res.items()}


def _absim(vms: dict[Key, PveVm], goal: int) -> tuple[dict[str, int], dict[Key, PveVm]]:
    """The Perl ``absim``/``abapply``: apply results until a round changes nothing."""
    vms, total = copy.deepcopy(vms), {}
    moved = True
    while moved:
        changes, moved = 0, False
        for key, size in compute_alg1(vms, goal, 100 * MB, PVE_DEADBAND_BYTES).items():
            diff = size - vms[key].balloon
            if diff:
                vms[key].freemem = max(0, vms[key].freemem + diff)
                vms[key].balloon = total[key[1]] = size
                changes, moved = changes + diff, True
        goal -= changes
    return total, vms


@pytest.mark.parametrize(("status", "goal", "expected"), [
    (STATUS1, 0, {}),
    (STATUS1, 90 * MB, {"100": 1060 * MB, "101": 1030 * MB}),
    (STATUS1, 150 * MB, {"100": 1100 * MB, "101": 1050 * MB}),
    (STATUS1, 270 * MB, {"100": 1100 * MB, "101": 1090 * MB}),
    (STATUS2, 0, {}),
    (STATUS2, 18 * MB, {"101": 1018 * MB}),
    (STATUS2, 500 * MB, {"101": 1100 * MB}),
    (STATUS3, 0, {}),
    (STATUS3, 11 * MB, {"101": 1018 * MB}),
    (STATUS3, 80 * MB, {"101": 1087 * MB}),
    (STATUS3, 200 * MB, {"101": 1107 * MB}),
])
def test_proxmox_abtest_cases(status: dict[Key, PveVm], goal: int,
                              expected: dict[str, int]) -> None:
    assert _alg1(status, goal) == expected


@pytest.mark.parametrize(("goal", "expected"), [
    (180 * MB, {"100": 1120 * MB, "101": 1060 * MB}),
    (270 * MB, {"100": 1180 * MB, "101": 1090 * MB}),
    (600 * MB, {"100": 1300 * MB, "101": 1300 * MB}),
    (900 * MB, {"100": 1600 * MB, "101": 1300 * MB}),
])
def test_proxmox_absim_cases(goal: int, expected: dict[str, int]) -> None:
    assert _absim(STATUS1, goal)[0] == expected


def test_proxmox_absim_grow_then_shrink() -> None:
    total, grown = _absim(STATUS3, 593 * MB)
    assert total == {"101": 1300 * MB, "102": 1300 * MB}
    assert _absim(grown, -200 * MB)[0] == {"101": 1200 * MB, "102": 1200 * MB}
    assert _absim(grown, -400 * MB)[0] == {"101": 1200 * MB, "102": GB}
    assert _absim(grown, -593 * MB)[0] == {"101": 1007 * MB, "102": GB}


def test_proxmox_goal_is_80_percent_of_total_minus_used() -> None:
    goal = proxmox_goal_kib(host(30, total_gib=16))
    assert goal == pytest.approx(16 * GIB * (0.8 - 0.7), abs=2)


def test_proxmox_moves_100_mib_per_guest_and_cycle() -> None:
    guests = [vm("a", unused_mib=3000), vm("b", unused_mib=3000)]
    plan = proxmox_targets(balloon(), guests, host(5), None)
    assert [4096 * MIB - t.to_kib for t in plan.targets] == [100 * MIB, 100 * MIB]
    assert plan.targets[0].reason.startswith("Proxmox: goal")


def test_mom_host_free_counts_free_buffers_and_cached() -> None:
    obs = host(10)
    counters = dict(obs.readings["meminfo"].counters, Buffers=GIB * 1024, Cached=GIB * 1024)
    obs = type(obs)(time=0.0, readings={"meminfo": type(obs.readings["meminfo"])(
        "meminfo", True, {}, counters)})
    assert mom_host_free(obs) == pytest.approx(0.1 + 2 / 16)


def test_mom_shrinks_5_percent_of_current_under_host_pressure() -> None:
    g = vm(unused_mib=2000)  # MOM's used: 4096 - 2000; its minimum 2096 + 10% x 4096
    plan = mom_targets(balloon(), [g], host(10), None)
    assert target_of(plan, g) == int(4096 * MIB * 0.95)
    assert "MOM: host free 10% < 20%: shrink" in plan.targets[0].reason


def test_mom_keeps_used_memory_plus_a_free_share_scaled_by_host_pressure() -> None:
    g = vm(current_mib=2600, unused_mib=200)  # used 2400 + 10% x 2600 = 2660 > 2600
    assert mom_targets(balloon(), [g], host(10), None).targets == ()
    # Critical (host free <= 5%): the guest's minimum drops below what it uses (2400 - 1% x
    # 2600), so the full 5% step applies and leaves it under 10% free.
    critical = mom_targets(balloon(), [g], host(4), None)
    assert target_of(critical, g) == int(2600 * MIB * 0.95) < 2400 * MIB + 2600 * MIB // 10


def test_mom_grows_by_5_percent_or_to_used_plus_20_percent_of_max() -> None:
    light = vm("light", current_mib=2048, unused_mib=1500)
    heavy = vm("heavy", current_mib=2048, unused_mib=100)
    plan = mom_targets(balloon(), [light, heavy], host(50), None)
    assert target_of(plan, light) == int(2048 * MIB * 1.05)
    assert target_of(plan, heavy) == int(1948 * MIB + 0.2 * 4096 * MIB)
    assert mom_targets(balloon(), [vm(unused_mib=100)], host(50), None).targets == ()
