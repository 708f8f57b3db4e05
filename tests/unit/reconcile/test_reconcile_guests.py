"""The engine's guest half on libvirt's test driver: static targets, release, faults, scale."""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from overcommit.api.model import Policy, policy_from_object
from overcommit.planning.observation import Observation
from overcommit.reconcile.guests import GuestManager, GuestResult, VirtSettings
from overcommit.reconcile.node import NodeReconciler
from overcommit.virt.libvirt_source import LibvirtEndpoint
from overcommit.virt.model import GuestObservation
from testkit.cases import policy_document
from testkit.fakes.kernel import FakeKernel
from testkit.fakes.libvirt_xml import FakeDomain, kubevirt_fleet, write_node

GIB_KIB = 1024 * 1024
# The test driver reports a constant last_update (627319920); a matching wall clock makes its
# statistics fresh, as a real guest's are.
TEST_DRIVER_NOW = 627319920 + 1


def policy(spec: dict[str, Any]) -> Policy:
    return policy_from_object(policy_document("p", spec))


def engine_with(tmp_path: Path, uri: str) -> NodeReconciler:
    engine = NodeReconciler(state_dir=tmp_path / "state", fs=FakeKernel(tmp_path / "host"),
                        virt=VirtSettings(uris=(uri,), discover_system=False))
    engine.guests = GuestManager(
        VirtSettings(uris=(uri,), discover_system=False),
        lambda u: LibvirtEndpoint(u, wall_clock=lambda: TEST_DRIVER_NOW))
    return engine


def current(engine: NodeReconciler, domain: str) -> int:
    assert engine.guests is not None
    report = engine.guests.observe(0.0)
    return next(g.current_kib for g in report.guests if g.domain == domain)


def observed_down(uri: str, why: str) -> Callable[..., GuestResult]:
    """A stand-in for GuestManager.observe while ``uri``'s libvirtd is away."""
    def observe(now: float, vmis: Any = None) -> GuestResult:
        report = GuestResult()
        report.note_down(uri, why)
        return report
    return observe


STATIC = {"balloon": {"mode": "Static", "static": {"targetPercent": 60},
                      "floor": {"minPercent": 25, "guestFreeMarginPercent": 0}}}


def test_static_targets_are_applied_and_released(tmp_path: Path) -> None:
    uri = write_node(tmp_path, [FakeDomain("vm-a", max_kib=2 * GIB_KIB),
                                FakeDomain("vm-b", max_kib=GIB_KIB)])
    engine = engine_with(tmp_path, uri)
    report = engine.cycle([policy(STATIC)], {})
    assert report.ok, report.guests.errors
    assert {t.domain: t.to_kib for t in report.guests.applied} == {
        "vm-a": int(2 * GIB_KIB * 0.6), "vm-b": int(GIB_KIB * 0.6)}
    assert current(engine, "vm-a") == int(2 * GIB_KIB * 0.6)
    state = json.loads((tmp_path / "state/originals.json").read_text())
    assert sorted(k.split("\t")[1] for k in state["guests"]) == ["vm-a", "vm-b"]
    # a second cycle: nothing moves
    assert engine.cycle([policy(STATIC)], {}).guests.applied == []
    # the policy goes away: guests back to their maximum, record emptied
    released = engine.cycle([], {})
    assert {t.domain for t in released.guests.applied} == {"vm-a", "vm-b"}
    assert current(engine, "vm-a") == 2 * GIB_KIB
    assert json.loads((tmp_path / "state/originals.json").read_text())["guests"] == []


def period_of(engine: NodeReconciler, domain: str) -> str:
    assert engine.guests is not None
    client = next(iter(engine.guests._endpoints.values()))  # the engine's own connection
    xml: str = client._connection().lookupByName(domain).XMLDesc(0)
    return xml.split("<stats period='", 1)[1].split("'", 1)[0]


@pytest.mark.parametrize("release", ["policy removed", "overcommit restore"])
def test_the_guests_own_stats_period_is_recorded_and_put_back(tmp_path: Path,
                                                              release: str) -> None:
    uri = write_node(tmp_path, [FakeDomain("vm-a", max_kib=GIB_KIB, stats_period=7),
                                FakeDomain("vm-b", max_kib=GIB_KIB, stats_period=7)])
    engine = engine_with(tmp_path, uri)
    spec = {"balloon": {**STATIC["balloon"], "statsPeriodSeconds": 2,
                        "vmSelector": {"domainNamePattern": "vm-a"}}}
    engine.cycle([policy(spec)], {})
    assert (period_of(engine, "vm-a"), period_of(engine, "vm-b")) == ("2", "7")
    state = json.loads((tmp_path / "state/originals.json").read_text())
    assert state["statsPeriods"] == {f"{uri}\tvm-a": 7}  # noted before the change
    report = engine.cycle([], {}) if release == "policy removed" else engine.restore()
    assert report.guests.errors == []
    assert (period_of(engine, "vm-a"), period_of(engine, "vm-b")) == ("7", "7")
    assert json.loads((tmp_path / "state/originals.json").read_text())["statsPeriods"] == {}


def test_restore_on_release_false_leaves_balloons(tmp_path: Path) -> None:
    uri = write_node(tmp_path, [FakeDomain("vm-a", max_kib=GIB_KIB)])
    engine = engine_with(tmp_path, uri)
    spec = {"balloon": {**STATIC["balloon"], "restoreOnRelease": False}}
    engine.cycle([policy(spec)], {})
    assert engine.cycle([], {}).guests.applied == []
    assert current(engine, "vm-a") == int(GIB_KIB * 0.6)
    # Nothing is left to give back: the record forgets the guest instead of keeping it forever.
    assert json.loads((tmp_path / "state/originals.json").read_text())["guests"] == []


def test_overcommit_restore_releases_guests(tmp_path: Path) -> None:
    uri = write_node(tmp_path, [FakeDomain("vm-a", max_kib=GIB_KIB)])
    engine = engine_with(tmp_path, uri)
    engine.cycle([policy(STATIC)], {})
    assert engine.restore().guests.applied[0].to_kib == GIB_KIB


def test_release_sets_the_maximum_even_while_the_balloon_has_not_moved_yet(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real balloon takes a moment to reach its target: released right after a shrink, a
    guest can still report its maximum while its target is lower. It must get its maximum
    back, not be forgotten (the libvirt test driver moves at once, so the lag is simulated)."""
    uri = write_node(tmp_path, [FakeDomain("vm-a", max_kib=GIB_KIB)])
    engine = engine_with(tmp_path, uri)
    assert engine.guests is not None
    engine.cycle([policy(STATIC)], {})
    real_observe = engine.guests.observe

    def balloon_still_at_max(now: float, vmis: Any = None) -> Any:
        report = real_observe(now, vmis)
        report.guests = [replace(g, current_kib=g.max_kib) for g in report.guests]
        return report

    monkeypatch.setattr(engine.guests, "observe", balloon_still_at_max)
    released = engine.restore()
    monkeypatch.undo()
    assert [(t.domain, t.to_kib) for t in released.guests.applied] == [("vm-a", GIB_KIB)]
    assert current(engine, "vm-a") == GIB_KIB
    assert json.loads((tmp_path / "state/originals.json").read_text())["guests"] == []


def test_guests_released_while_their_endpoint_is_down_are_released_once_it_is_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = write_node(tmp_path, [FakeDomain("vm-a", max_kib=GIB_KIB, stats_period=7)])
    engine = engine_with(tmp_path, uri)
    assert engine.guests is not None
    spec = {"balloon": {**STATIC["balloon"], "statsPeriodSeconds": 2}}
    engine.cycle([policy(spec)], {})

    monkeypatch.setattr(engine.guests, "observe", observed_down(uri, "libvirtd restarting"))
    engine.cycle([], {})  # released while libvirtd is away: nothing can be given back yet
    state = json.loads((tmp_path / "state/originals.json").read_text())
    assert state["guests"] == [f"{uri}\tvm-a"] and state["statsPeriods"] == {f"{uri}\tvm-a": 7}
    monkeypatch.undo()
    back = engine.cycle([], {})
    assert [(t.domain, t.to_kib) for t in back.guests.applied] == [("vm-a", GIB_KIB)]
    assert current(engine, "vm-a") == GIB_KIB and period_of(engine, "vm-a") == "7"
    state = json.loads((tmp_path / "state/originals.json").read_text())
    assert state["guests"] == [] and state["statsPeriods"] == {}


def test_guests_without_balloon_are_reported_and_left_alone(tmp_path: Path) -> None:
    uri = write_node(tmp_path, [FakeDomain("vm-a", max_kib=GIB_KIB),
                                FakeDomain("vm-none", max_kib=GIB_KIB, balloon="none")])
    report = engine_with(tmp_path, uri).cycle([policy(STATIC)], {})
    assert [t.domain for t in report.guests.applied] == ["vm-a"]
    decision = next(d for d in report.guests.decisions if d.guest.domain == "vm-none")
    assert decision.target_kib is None and "balloon" in decision.reason


def test_a_dead_endpoint_fails_only_guests_and_ksm_still_applies(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, "test:///nonexistent/node.xml")
    spec = {**STATIC, "ksm": {"enabled": True, "pagesToScan": 555}}
    report = engine.cycle([policy(spec)], {})
    assert report.guests.endpoints_down and report.errors == []
    fs = engine.fs
    assert isinstance(fs, FakeKernel) and fs.get("sys/kernel/mm/ksm/pages_to_scan") == "555"


def test_a_dead_endpoint_is_a_problem_only_while_guests_matter(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KSM-only policy on a node whose libvirtd is stopped: the endpoint is reported, not a
    problem. It is one while a policy balloons, and while guests still hold something of ours
    (a released policy whose balloons could not be given back yet)."""
    dead = engine_with(tmp_path / "dead", "test:///nonexistent/node.xml")
    ksm_only = dead.cycle([policy({"ksm": {"enabled": True}})], {})
    assert ksm_only.guests.endpoints_down and ksm_only.guests.trouble == []
    ballooning = dead.cycle([policy({**STATIC, "ksm": {"enabled": True}})], {})
    assert ballooning.guests.trouble == ballooning.guests.endpoints_down != []

    uri = write_node(tmp_path, [FakeDomain("vm-a", max_kib=GIB_KIB)])
    engine = engine_with(tmp_path, uri)
    assert engine.guests is not None
    engine.cycle([policy(STATIC)], {})

    monkeypatch.setattr(engine.guests, "observe", observed_down(uri, "libvirtd restarting"))
    owed = engine.cycle([], {})  # released, but vm-a is still shrunk: that matters
    assert owed.guests.trouble == [f"{uri}: libvirtd restarting"]
    monkeypatch.undo()
    engine.cycle([], {})  # given back
    monkeypatch.setattr(engine.guests, "observe", observed_down(uri, "libvirtd restarting"))
    assert engine.cycle([], {}).guests.trouble == []  # nothing owed any more


def test_without_libvirt_python_endpoints_count_as_down(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An image without the binding on a node with libvirt: like an endpoint that is down, a
    problem only while guests matter, and never a failed cycle."""
    uri = write_node(tmp_path, [FakeDomain("vm-a", max_kib=GIB_KIB)])
    engine = engine_with(tmp_path, uri)
    monkeypatch.setitem(sys.modules, "overcommit.virt.libvirt_source", None)
    ksm_only = engine.cycle([policy({"ksm": {"enabled": True}})], {})
    assert ksm_only.ok and ksm_only.guests.trouble == []
    assert "libvirt-python is not installed" in ksm_only.guests.endpoints_down[0]
    ballooning = engine.cycle([policy(STATIC)], {})
    assert "libvirt-python is not installed" in ballooning.guests.trouble[0]


def test_a_guest_destroyed_between_observe_and_act_fails_alone(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    uri = write_node(tmp_path, [FakeDomain("vm-a", max_kib=GIB_KIB),
                                FakeDomain("vm-b", max_kib=GIB_KIB)])
    engine = engine_with(tmp_path, uri)
    assert engine.guests is not None
    real_observe = engine.guests.observe

    def observe_then_destroy(now: float, vmis: Any = None) -> Any:
        report = real_observe(now, vmis)
        client = engine.guests._endpoints[uri]  # type: ignore[union-attr]
        client._connection().lookupByName("vm-b").destroy()
        return report

    monkeypatch.setattr(engine.guests, "observe", observe_then_destroy)
    report = engine.cycle([policy(STATIC)], {})
    assert [t.domain for t in report.guests.applied] == ["vm-a"]
    assert len(report.guests.errors) == 1 and "vm-b" in report.guests.errors[0]


def test_dry_run_plans_balloons_without_moving_them(tmp_path: Path) -> None:
    uri = write_node(tmp_path, [FakeDomain("vm-a", max_kib=GIB_KIB)])
    engine = engine_with(tmp_path, uri)
    report = engine.cycle([policy({**STATIC, "dryRun": True})], {})
    assert [t.domain for t in report.guests.planned] == ["vm-a"]
    assert report.guests.applied == [] and current(engine, "vm-a") == GIB_KIB


def test_200_guests_auto_cycle_costs_under_a_second_of_cpu(tmp_path: Path) -> None:
    uri = write_node(tmp_path, kubevirt_fleet(200))
    engine = engine_with(tmp_path, uri)
    ticks = iter(range(0, 10**6, 60))  # each cycle a minute later: every one an Auto decision
    engine.clock = lambda: float(next(ticks))
    spec = policy({"balloon": {"mode": "Auto", "auto": {"hostAvailableLowPercent": 99,
                                                        "hostAvailableHighPercent": 100}}})
    engine.cycle([spec], {})  # connect and parse every domain's XML once
    before = resource.getrusage(resource.RUSAGE_SELF)
    report = engine.cycle([spec], {})
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"auto cycle for {len(report.guests.guests)} guests: {cpu * 1000:.0f} ms CPU, "
          f"{len(report.guests.applied)} balloons moved")
    assert len(report.guests.guests) == 200
    assert report.guests.applied, "a host 'short of memory' must reclaim from idle guests"
    assert cpu < 1.0


def test_auto_reads_local_guests_cgroup_pressure_under_the_host_root(tmp_path: Path) -> None:
    """The fake tree is cgroup v2 (this machine has v1 controllers plus a unified hierarchy):
    a local guest's QEMU process, its cgroup and the cgroup's memory.pressure."""
    root = tmp_path / "root"
    for rel, data in (("sys/fs/cgroup/cgroup.controllers", b"memory\n"),
                      ("sys/fs/cgroup/machine.slice/vm.scope/memory.pressure",
                       b"some avg10=40.00 avg60=0 avg300=0 total=1\n"
                       b"full avg10=9.00 avg60=0 avg300=0 total=1\n"),
                      ("proc/321/cmdline", b"qemu-system-x86_64\0-uuid\0UUID-A\0"),
                      ("proc/321/cgroup", b"0::/machine.slice/vm.scope\n")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    manager = GuestManager(VirtSettings(discover_system=False, host_root=str(root)))
    stats = {"usable": GIB_KIB, "available": 2 * GIB_KIB, "last_update": 100}
    local = GuestObservation("qemu:///system", "vm", "uuid-a", 1.0, 4 * GIB_KIB, 2 * GIB_KIB,
                             True, stats=stats)
    remote = replace(local, endpoint="qemu+ssh://other/system", domain="far")
    report = GuestResult(guests=[local, remote])
    manager.plan(report, policy({"balloon": {"mode": "Auto"}}).spec, Observation(time=1.0),
                 [], True)
    by_name = {g.domain: g for g in report.guests}
    assert by_name["vm"].cgroup_pressure == {"some_avg10": 4000, "some_avg60": 0,
                                             "some_avg300": 0, "some_total": 1,
                                             "full_avg10": 900, "full_avg60": 0,
                                             "full_avg300": 0, "full_total": 1}
    assert by_name["far"].cgroup_pressure is None  # another host's process: not looked for
    decision = next(d for d in report.decisions if d.guest.domain == "vm")
    assert decision.pressured and "cgroup's memory PSI some avg10 40.00% > 10%" in decision.reason
    # Static ballooning does not use the signal: no /proc scan for it.
    report = GuestResult(guests=[local])
    manager.plan(report, policy(STATIC).spec, Observation(time=1.0), [], True)
    assert report.guests[0].cgroup_pressure is None


def test_auto_decides_every_interval_whatever_the_cycle_s_pace(tmp_path: Path) -> None:
    """Adaptive KSM makes the node cycle every 2 s; Auto ballooning still decides (and takes
    its per-decision steps) only every auto.intervalSeconds, showing the last decision
    between two."""
    uri = write_node(tmp_path, [FakeDomain("vm-a", max_kib=2 * GIB_KIB),
                                FakeDomain("vm-b", max_kib=2 * GIB_KIB)])
    engine = engine_with(tmp_path, uri)
    now = [990.0]
    engine.clock = lambda: now[0]
    spec = policy({"balloon": {"mode": "Auto", "auto": {
        "hostAvailableLowPercent": 99, "hostAvailableHighPercent": 100,
        "intervalSeconds": 10}}})
    engine.cycle([spec], {})  # guests seen for the first time are not shrunk yet
    now[0] = 1000.0
    first = engine.cycle([spec], {})
    assert first.guests.applied, "a host 'short of memory' takes from idle guests"
    reasons = {d.guest.domain: (d.target_kib, d.reason) for d in first.guests.decisions}
    for step in (2.0, 4.0, 6.0, 8.0):  # cycles every 2 s in between: nothing moves
        now[0] = 1000.0 + step
        held = engine.cycle([spec], {})
        assert held.guests.applied == [] and held.guests.planned == []
        assert {d.guest.domain: (d.target_kib, d.reason)
                for d in held.guests.decisions} == reasons
    now[0] = 1010.0
    assert engine.cycle([spec], {}).guests.applied, "the next decision, 10 s later"
