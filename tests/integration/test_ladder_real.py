"""The reclamation ladder on the real host (root): the real /proc/meminfo and
/proc/pressure/memory, pushed by the memory rig (``testkit.memrig``), judged by the real
``NodeReconciler`` (and ``overcommit run --once``) over a fake sysfs for KSM and zswap, so the
levers' gates can be read back without touching the host's own settings.

Other work runs on this machine at the same time: every fill keeps MemAvailable at least
1 GiB above the rig's floor (1.5 GiB), lasts seconds, and is freed at once (the rig's
context); a state is asserted only for a cycle whose own MemAvailable reading lies in the
window that state is meant for.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from overcommit.api.model import Policy, policy_from_object
from overcommit.planning.ladder import State
from overcommit.planning.observation import Observation
from overcommit.reconcile.guests import GuestManager, GuestResult, VirtSettings
from overcommit.reconcile.node import CycleResult, NodeReconciler
from overcommit.virt.model import GuestObservation
from testkit.cases import policy_document
from testkit.fakes.kernel import FakeKernel
from testkit.memrig import CHUNK, GIB, MIB, MemoryRig, mem_available, memory_psi, resident
from testkit.waiting import wait_for
from tests.integration.conftest import require_root

ZSWAP = "sys/module/zswap/parameters"
REAL = ("proc/meminfo", "proc/pressure/memory")
SAFE_ABOVE_FLOOR = GIB  # no fill goes closer than this to the rig's floor


def real_memory_host(root: Path) -> FakeKernel:
    """A fake sysfs (KSM, zswap) whose /proc/meminfo and /proc/pressure/memory are the host's
    own (symbolic links to them)."""
    kernel = FakeKernel(root)
    for rel in REAL:
        path = root / rel
        path.unlink()
        path.symlink_to(Path("/") / rel)
    return kernel


@pytest.fixture
def rig() -> Iterator[MemoryRig]:
    require_root("fills real host memory and creates a memory cgroup")
    if not Path("/proc/pressure/memory").exists():
        pytest.fail("this kernel has no /proc/pressure/memory (CONFIG_PSI, psi=1)",
                    pytrace=False)
    with MemoryRig() as rig:
        yield rig
    assert rig.tripped is None, rig.tripped


def policy(spec: dict[str, Any]) -> Policy:
    return policy_from_object(policy_document("ladder", spec))


class Walk:
    """Cycles of one node under one policy, each at a MemAvailable the rig holds it at."""

    def __init__(self, rig: MemoryRig, engine: NodeReconciler, spec: dict[str, Any],
                 minimum: int) -> None:
        self.rig, self.engine, self.policies, self.m = rig, engine, [policy(spec)], minimum
        self.log: list[str] = []

    def at(self, factor: float, low: float, high: float) -> CycleResult:
        """Hold MemAvailable at ``factor`` x M and run a cycle whose reading lies in
        [``low``, ``high``] x M (other work moves MemAvailable too: adjust and look again)."""
        target = int(factor * self.m)
        assert target >= self.rig.floor + SAFE_ABOVE_FLOOR, "a fill too close to the floor"
        for _ in range(10):
            now = self.rig.fill_to(target, tolerance=min(128 * MIB, int(0.05 * self.m)))
            if low * self.m <= now <= high * self.m:
                report = self.engine.cycle(self.policies, {})
                ladder = report.plan.ladder
                assert ladder is not None and ladder.reading.available is not None
                seen = ladder.reading.available
                psi = memory_psi()
                self.log.append(f"{factor:.2f} M: MemAvailable {seen >> 20} MiB, held "
                                f"{self.rig.held >> 20} MiB, psi some {psi['some']:.2f}% full "
                                f"{psi['full']:.2f}% -> {ladder.state.value}")
                assert low * self.m <= seen <= high * self.m, \
                    f"MemAvailable moved out of the window during the cycle: {self.log}"
                return report
            time.sleep(0.2)
        pytest.fail(f"could not hold MemAvailable at {factor} x M (others use memory too): "
                    f"{self.log}", pytrace=False)


def state(report: CycleResult) -> State:
    assert report.plan.ladder is not None
    return report.plan.ladder.state


def test_the_real_node_goes_down_the_ladder_and_back_on_memavailable(
        rig: MemoryRig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = mem_available()
    # M so that the node starts in Clear (between Soft's 4 M and Plenty's 8 M) and every exit
    # is reachable once the rig lets go (Soft is left above 5 M).
    minimum = start // 6 // MIB * MIB
    critical_safe = 0.85 * minimum >= rig.floor + SAFE_ABOVE_FLOOR
    assert 1.6 * minimum >= rig.floor + SAFE_ABOVE_FLOOR, \
        f"only {start >> 20} MiB available: too little to walk the ladder safely"
    kernel = real_memory_host(tmp_path / "host")
    engine = NodeReconciler(state_dir=tmp_path / "state", fs=kernel)
    spec = {"ksm": {"mode": "Adaptive"},
            "zswap": {"onlyUnderPressure": True, "maxPoolPercent": 20},
            # PSI is the other test's: here the walk follows MemAvailable alone.
            "ladder": {"minimumAvailable": f"{minimum // MIB}Mi", "psi": {"enabled": False}}}
    walk = Walk(rig, engine, spec, minimum)
    zswap = kernel.path(f"{ZSWAP}/enabled")

    first = engine.cycle(walk.policies, {})
    assert state(first) is State.CLEAR, first.plan.ladder
    assert zswap.read_text().strip() == "N"

    soft = walk.at(3.5, 3.1, 3.9)
    assert state(soft) is State.SOFT
    assert zswap.read_text().strip() == "N"
    assert soft.plan.adaptive is not None

    hard = walk.at(1.6, 1.2, 1.9)
    assert state(hard) is State.HARD
    assert zswap.read_text().strip() == "Y"  # onlyUnderPressure: on in Hard
    # `overcommit run --once` on the same host judges the same state from scratch.
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy_document("ladder", spec)))
    cli = subprocess.run([sys.executable, "-m", "overcommit.cli", "run", "--once", "-f",
                          str(policy_file), "--host-root", str(tmp_path / "host"),
                          "--state-dir", str(tmp_path / "cli-state"), "--no-libvirt",
                          "-o", "json"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["ladder"]["state"] == "Hard"

    expected = [State.CLEAR, State.SOFT, State.HARD]
    if critical_safe:
        critical = walk.at(0.85, 0.7, 0.95)
        assert state(critical) is State.CRITICAL and critical.plan.ladder is not None
        assert critical.plan.ladder.relief
        held = walk.at(1.12, 1.03, 1.22)  # above M, below Critical's exit (1.25 M)
        assert state(held) is State.CRITICAL
        expected += [State.CRITICAL, State.HARD]
    held = walk.at(2.25, 2.08, 2.42)  # above Hard's 2 M, below its exit (2.5 M)
    assert state(held) is State.HARD
    assert zswap.read_text().strip() == "Y"
    back = walk.at(2.9, 2.6, 3.3)
    assert state(back) is State.SOFT
    assert zswap.read_text().strip() == "N"  # the node's own value, restored
    held = walk.at(4.5, 4.15, 4.85)  # above Soft's 4 M, below its exit (5 M)
    assert state(held) is State.SOFT

    rig.release()
    wait_for(lambda: mem_available() > 5.15 * minimum, 30, "MemAvailable back above 5.15 M")
    done = engine.cycle(walk.policies, {})
    assert state(done) is State.CLEAR
    expected += [State.SOFT, State.CLEAR]
    ladder = done.plan.ladder
    assert ladder is not None
    assert [t.to_state for t in reversed(ladder.transitions)] == expected
    with capsys.disabled():
        print(f"\nladder walk (M = {minimum >> 20} MiB, start {start >> 20} MiB, critical "
              f"{'reached' if critical_safe else 'not tried: too close to the floor'}, lowest "
              f"MemAvailable {rig.lowest >> 20} MiB):")
        for line in walk.log:
            print("  " + line)


def test_real_memory_pressure_moves_the_ladder_and_it_recovers_with_hysteresis(
        rig: MemoryRig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kernel = real_memory_host(tmp_path / "host")
    engine = NodeReconciler(state_dir=tmp_path / "state", fs=kernel)
    spec = {"ksm": {"mode": "Adaptive"}, "zswap": {"onlyUnderPressure": True},
            "ladder": {"psi": {"fullCriticalPercent": 15}}}
    policies = [policy(spec)]
    wait_for(lambda: memory_psi()["some"] < 2.5, 60, "quiet memory PSI before the test")
    seen: list[tuple[float, State, float, float, int]] = []

    def cycle(t0: float) -> State:
        report = engine.cycle(policies, {})
        ladder = report.plan.ladder
        assert ladder is not None and ladder.reading.psi_some is not None
        assert ladder.reading.psi_full is not None
        seen.append((round(time.monotonic() - t0, 1), ladder.state,
                     ladder.reading.psi_some / 100, ladder.reading.psi_full / 100,
                     (ladder.reading.available or 0) >> 20))
        return ladder.state

    t0 = time.monotonic()
    assert cycle(t0) in (State.PLENTY, State.CLEAR)
    guest_cgroup: dict[str, int] | None = None
    lost = rig.readers_lost
    with rig.thrash(workers=2, limit=16 * MIB, uuid=THRASHER_UUID):
        deadline = time.monotonic() + 40
        while cycle(t0) is not State.CRITICAL and time.monotonic() < deadline:
            time.sleep(1)
        worst = max((s for _, s, *_ in seen), key=lambda s: s.severity)
        if rig.unified_cgroup is not None:  # the hybrid layout: a real cgroup v2 reading
            guest_cgroup = own_cgroup_pressure()
    assert rig.readers_lost == lost, "a reader died (see dmesg: its memory cgroup's OOM kill?)"
    deadline = time.monotonic() + 90
    while cycle(t0) not in (State.PLENTY, State.CLEAR) and time.monotonic() < deadline:
        time.sleep(1)
    with capsys.disabled():
        print("\nladder under real memory PSI (t s, state, some %, full %, MemAvailable MiB):")
        for row in seen:
            print(f"  {row[0]:5.1f} {row[1].value:<8} {row[2]:6.2f} {row[3]:6.2f} {row[4]}")
    assert worst.at_least(State.HARD), seen
    states = [s for _, s, *_ in seen]
    peak = states.index(worst)
    # Down at once, then only up: no state comes back once left (no flapping).
    assert all(a.severity <= b.severity for a, b in itertools.pairwise(states[:peak + 1])), seen
    assert all(a.severity >= b.severity for a, b in itertools.pairwise(states[peak:])), seen
    assert states[-1] in (State.PLENTY, State.CLEAR), seen
    # Every cycle on the way up kept a state while its figure was at or above half its
    # threshold (exit 50 %): Critical while full >= 7.5 %, Hard while full >= 2.5 %.
    for (_, before, *_), (_, after, some, full, _) in itertools.pairwise(seen[peak:]):
        if before is State.CRITICAL and after is not State.CRITICAL:
            assert full < 7.5, seen
        if before is State.HARD and not after.at_least(State.HARD):
            assert full < 2.5, seen
        if before is State.SOFT and not after.at_least(State.SOFT):
            assert some < 5.0, seen
    if worst.at_least(State.HARD):
        assert kernel.path(f"{ZSWAP}/enabled").read_text().strip() == "N"  # restored after
    if guest_cgroup is not None:
        # The readers, seen as a guest whose QEMU process is theirs: the guest reader found
        # their cgroup (in the unified hierarchy) and its stalls, and Auto calls it pressured.
        with capsys.disabled():
            print(f"  the readers' own cgroup, read as a guest's: some avg10 "
                  f"{guest_cgroup['some_avg10'] / 100:.2f}%")
        assert guest_cgroup["some_avg10"] > 10 * 100


THRASHER_UUID = "6d656d72-6967-4000-8000-746872617368"


def own_cgroup_pressure() -> dict[str, int]:
    """The thrashers' cgroup memory PSI as the agent reads a local guest's, and the balloon
    planner's verdict on a guest with it."""
    manager = GuestManager(VirtSettings(discover_system=False, host_root="/"))
    guest = GuestObservation("qemu:///system", "thrasher", THRASHER_UUID, 1.0, 4 << 20,
                             2 << 20, True, stats={"usable": 1 << 20, "available": 2 << 20,
                                                   "last_update": 100})
    report = GuestResult(guests=[guest])
    manager.plan(report, policy({"balloon": {"mode": "Auto"}}).spec, Observation(time=1.0),
                 [], True)
    [seen] = report.guests
    assert seen.cgroup_pressure is not None, "the readers' cgroup was not found"
    [decision] = report.decisions
    assert decision.pressured and "its cgroup's memory PSI" in decision.reason, decision.reason
    return dict(seen.cgroup_pressure)


def test_the_safety_stop_frees_everything_at_the_floor(rig: MemoryRig) -> None:
    start = mem_available()
    with MemoryRig(floor=max(GIB, start - 2 * GIB)) as guarded:
        guarded.fill_to(start - GIB)
        assert guarded.held >= GIB // 2
        children = guarded.children
        # Another rig takes MemAvailable below the guarded rig's floor: its watchdog kills
        # its fillers at once.
        rig.fill_to(start - 3 * GIB)
        wait_for(lambda: guarded.tripped is not None, 5, "the guarded rig's safety stop")
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 5,
                 "the guarded rig's fillers to be gone")
        assert rig.held >= GIB
        rig.release()
        # What the other rig held is back: its fillers live on, empty. (Their resident size,
        # not MemAvailable: other tenants of a shared machine move MemAvailable by gigabytes.)
        assert rig.held == 0
        wait_for(lambda: max(map(resident, rig.children)) < 64 * MIB, 10,
                 "the other rig's fillers to hold nothing")
    assert "fell below the floor" in (guarded.tripped or "")


def test_adjust_holds_a_fixed_amount(rig: MemoryRig) -> None:
    """``adjust`` moves what the rig holds by whole chunks, whatever MemAvailable does
    (bench.pressure's host events), and frees no more than it holds."""
    assert rig.adjust(4 * CHUNK) == 4 * CHUNK and rig.held == 4 * CHUNK
    assert rig.adjust(-CHUNK) == -CHUNK and rig.held == 3 * CHUNK
    assert rig.adjust(-10 * CHUNK) == -3 * CHUNK and rig.held == 0
    assert rig.adjust(CHUNK // 3) == 0  # less than half a chunk: nothing


def test_the_fillers_die_with_a_killed_test_process(rig: MemoryRig, tmp_path: Path) -> None:
    script = tmp_path / "holder.py"
    script.write_text(
        "import sys, time\n"
        "from testkit.memrig import MemoryRig, mem_available, GIB\n"
        "rig = MemoryRig()\n"
        "rig.fill_to(mem_available() - GIB)\n"
        "print(' '.join(map(str, rig.children)), flush=True)\n"
        "time.sleep(120)\n")
    start = mem_available()
    holder = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout is not None
        children = [int(pid) for pid in holder.stdout.readline().split()]
        filled = mem_available()
        assert children and filled < start - GIB // 2
        holder.send_signal(signal.SIGKILL)  # no cleanup code runs
        holder.wait(timeout=10)
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 10,
                 "the killed holder's fillers to die with it")
        # The gigabyte they held is back (other work on the machine moves MemAvailable too).
        wait_for(lambda: mem_available() > filled + GIB // 2, 30, "the memory back")
    finally:
        if holder.poll() is None:
            holder.kill()
