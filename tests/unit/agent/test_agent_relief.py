"""The agent's relief over a fake kernel and a recording API: the migration asked for once,
with the right VMI, not again within the cooldown; what holds it back; the node's taint."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from overcommit.agent import relief as agent_relief
from overcommit.agent.relief import NODE_LABEL, Relief, candidates, in_flight
from overcommit.agent.status import node_status, with_relief
from overcommit.api.model import policy_from_object
from overcommit.api.schema import openapi_schema, to_json, validate
from overcommit.api.status import NodeStateStatus
from overcommit.kube.client import ApiError
from overcommit.planning.relief import TAINT_KEY
from overcommit.reconcile.guests import GuestResult
from overcommit.reconcile.node import CycleResult, NodeReconciler
from overcommit.virt.model import GuestObservation
from testkit.cases import policy_document
from testkit.fakes.kernel import FakeKernel

NODE = "node-a"
GIB_KIB = 1 << 20
THEIRS = {"key": "dedicated", "value": "db", "effect": "NoSchedule"}


def vm(name: str, current_gib: int, usable_gib: int | None, *, migratable: bool = True,
       migration: str | None = None, namespace: str | None = "vms") -> GuestObservation:
    stats = {} if usable_gib is None else {"usable": usable_gib * GIB_KIB}
    return GuestObservation(
        endpoint="unix:///pods/x/virtqemud-sock", domain=f"{namespace}_{name}", uuid=name,
        time=0.0, max_kib=8 * GIB_KIB, current_kib=current_gib * GIB_KIB, has_balloon=True,
        stats=stats, vmi_namespace=namespace, vmi_name=name if namespace else None,
        live_migratable=migratable if namespace else None, migration=migration)


class RecordingApi:
    """The two requests relief makes, recorded; a failure to raise can be scripted."""

    def __init__(self) -> None:
        self.migrations: list[tuple[str, str, dict[str, str], dict[str, str]]] = []
        self.taints: list[tuple[list[Any] | None, list[Any], str]] = []
        self.fail: Exception | None = None
        self.version = 100

    async def create_migration(self, namespace: str, vmi: str, labels: dict[str, str],
                               annotations: dict[str, str]) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        self.migrations.append((namespace, vmi, labels, annotations))
        return {"metadata": {"name": f"overcommit-relief-{len(self.migrations)}"}}

    async def set_taints(self, node: str, before: list[Any] | None, after: list[Any],
                         resource_version: str) -> dict[str, Any]:
        assert node == NODE
        if self.fail is not None:
            raise self.fail
        self.taints.append((before, after, resource_version))
        self.version += 1
        return {"metadata": {"resourceVersion": str(self.version)}}


class Node:
    """One node: its engine over a fake kernel, its guests, and relief over a recording API
    with a clock the test moves."""

    def __init__(self, tmp_path: Path, spec: dict[str, Any] | None) -> None:
        self.kernel = FakeKernel(tmp_path / "host")
        self.engine = NodeReconciler(state_dir=tmp_path / "state", fs=self.kernel)
        self.spec = spec
        self.api = RecordingApi()
        self.now = 1000.0
        self.relief = Relief(NODE, self.api, clock=lambda: self.now)  # type: ignore[arg-type]
        self.guests = [vm("idle-big", 6, 5), vm("busy", 2, 0)]
        self.node: dict[str, Any] = {"resourceVersion": "7", "taints": [THEIRS]}
        self.migrations: list[dict[str, Any]] = []

    def report(self, available_gib: float) -> CycleResult:
        self.kernel.set_memory(int(available_gib * GIB_KIB))
        policies = [] if self.spec is None else [
            policy_from_object(policy_document("p", self.spec))]
        report = self.engine.cycle(policies, {})
        return replace(report, guests=GuestResult(guests=list(self.guests)))

    def cycle(self, available_gib: float, step: float = 2.0) -> agent_relief.Outcome:
        self.now += step
        report = self.report(available_gib)
        return asyncio.run(self.relief.cycle(report, self.node, self.migrations))


SPEC: dict[str, Any] = {"ksm": {"enabled": True}, "ladder": {"minimumAvailable": "1Gi"}}


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path, SPEC)


def test_candidates_are_the_kubevirt_guests_with_what_they_free_and_cost() -> None:
    found = candidates(GuestResult(guests=[vm("a", 4, 3), vm("no-stats", 2, None),
                                           vm("local", 2, 1, namespace=None),
                                           vm("stuck", 2, 1, migratable=False),
                                           vm("moving", 2, 1, migration="migration out")]))
    assert [(c.name, c.current_bytes >> 30, c.used_bytes >> 30, c.migratable, c.migrating)
            for c in found] == [("a", 4, 1, True, False), ("no-stats", 2, 2, True, False),
                                ("stuck", 2, 1, False, False), ("moving", 2, 1, True, True)]


def test_in_flight_counts_unfinished_migrations_for_the_node_and_the_cluster() -> None:
    migrations: list[dict[str, Any]] = [
        {"namespace": "vms", "vmi": "a", "phase": "Running", "node": None},     # ours by VMI
        {"namespace": "vms", "vmi": "x", "phase": "", "node": NODE},            # asked by us
        {"namespace": "vms", "vmi": "y", "phase": "Scheduling", "node": "node-b"},
        {"namespace": "vms", "vmi": "b", "phase": "Succeeded", "node": NODE},   # finished
        {"namespace": "vms", "vmi": "c", "phase": "Failed", "node": None},
    ]
    flight = in_flight(migrations, NODE, {("vms", "a"), ("vms", "b")})
    assert (flight.node, flight.cluster) == (2, 3)
    assert flight.vmis == {("vms", "a"), ("vms", "x"), ("vms", "y")}
    summary = agent_relief.migration_summary({
        "metadata": {"namespace": "vms", "name": "m1", "labels": {NODE_LABEL: NODE}},
        "spec": {"vmiName": "a"}})
    assert summary == {"namespace": "vms", "vmi": "a", "phase": "", "node": NODE}


def test_one_migration_for_the_right_vmi_then_the_cooldown(node: Node) -> None:
    assert node.cycle(6).status == ""  # Clear: nothing wanted
    first = node.cycle(0.5)
    assert first.status == "waiting: Critical for 1 of 2 cycles; reclaim goes first"
    asked = node.cycle(0.5)
    assert asked.requested == "created"
    assert [(ns, vmi, labels) for ns, vmi, labels, _ in node.api.migrations] == [
        ("vms", "idle-big", {NODE_LABEL: NODE})]
    assert "frees 6.0Gi for 1.0Gi in use to copy" in node.api.migrations[0][3][
        agent_relief.REASON_ANNOTATION]
    assert asked.last is not None and (asked.last.vmi_name, asked.last.migration) == (
        "idle-big", "overcommit-relief-1")
    assert [(n.type, n.reason) for n in asked.news] == [("Warning", "ReliefRequested")]
    # KubeVirt reports it in flight, then done; the cooldown holds either way.
    node.migrations = [{"namespace": "vms", "vmi": "idle-big", "phase": "Running",
                        "node": NODE}]
    for _ in range(20):
        held = node.cycle(0.5)
        assert held.requested is None and held.status.startswith("waiting: cooldown")
        assert held.last == asked.last  # the last request stays in the status
    node.migrations[0]["phase"] = "Succeeded"
    node.now += 300
    again = node.cycle(0.5)
    assert again.requested == "created" and len(node.api.migrations) == 2


def test_a_refused_request_is_reported_and_asked_again_later(node: Node) -> None:
    node.api.fail = ApiError(403, '{"message": "denied by policy"}', "POST")
    node.cycle(0.5)
    failed = node.cycle(0.5)
    assert failed.requested == "failed"
    assert failed.status.startswith("failed: asking to migrate vms/idle-big: POST: HTTP 403: "
                                    "denied by policy; again in 30 s")
    assert [n.reason for n in failed.news] == ["ReliefFailed"]
    assert node.cycle(0.5).status.startswith("waiting: the last request failed")
    node.api.fail = None
    node.now += 30
    assert node.cycle(0.5).requested == "created"


def test_without_a_count_of_migrations_in_flight_nothing_is_asked(node: Node) -> None:
    node.relief.blind = "this agent may not list VirtualMachineInstanceMigrations"
    outcomes = [node.cycle(0.5) for _ in range(4)]
    assert node.api.migrations == []
    assert outcomes[-1].status == ("unable: this agent may not list "
                                   "VirtualMachineInstanceMigrations")
    assert [n.reason for n in outcomes[-1].news] == ["ReliefUnable"]
    node.relief.blind = None
    assert node.cycle(0.5).requested == "created"  # the Critical cycles were still counted


def test_a_dry_run_policy_only_says_what_it_would_ask(tmp_path: Path) -> None:
    node = Node(tmp_path, {**SPEC, "dryRun": True, "ladder": {
        "minimumAvailable": "1Gi", "relief": {"taint": True}}})
    node.cycle(0.5)
    said = node.cycle(0.5)
    assert said.status.startswith("dry run: would have asked to migrate vms/idle-big")
    assert node.api.migrations == [] and node.api.taints == []


def test_no_policy_no_relief(tmp_path: Path) -> None:
    node = Node(tmp_path, None)
    for _ in range(3):
        outcome = node.cycle(0.1)  # below the default minimum (VMware's rule) too
    assert outcome.status == "off: no policy in force" and node.api.migrations == []


def test_the_taint_follows_the_ladder_and_leaves_other_taints_alone(tmp_path: Path) -> None:
    node = Node(tmp_path, {**SPEC, "ladder": {"minimumAvailable": "1Gi",
                                              "relief": {"taint": True, "migrate": False}}})
    assert node.cycle(6).taint is None and node.api.taints == []
    hard = node.cycle(1.5)
    assert hard.taint == "PreferNoSchedule"
    before, after, version = node.api.taints[-1]
    ours = {"key": TAINT_KEY, "value": "true", "effect": "PreferNoSchedule"}
    assert (before, after, version) == ([THEIRS], [THEIRS, ours], "7")
    assert [n.reason for n in hard.news] == ["NodeTainted"]
    # The watch has not delivered the patched Node yet: no second patch from a stale view.
    assert node.cycle(1.5).taint == "PreferNoSchedule" and len(node.api.taints) == 1
    critical = node.cycle(0.5)
    assert critical.taint == "NoSchedule"
    assert node.api.taints[-1] == ([THEIRS, ours], [THEIRS, {**ours, "effect": "NoSchedule"}],
                                   "101")
    node.node = {"resourceVersion": "102", "taints": node.api.taints[-1][1]}  # the watch
    assert node.cycle(0.5).taint == "NoSchedule" and len(node.api.taints) == 2
    recovered = node.cycle(6)
    assert recovered.taint is None and node.api.taints[-1][1] == [THEIRS]
    assert [n.reason for n in recovered.news] == ["NodeUntainted"]


def test_a_taint_that_cannot_be_set_is_a_warning_and_the_status_says_what_is(
        tmp_path: Path) -> None:
    node = Node(tmp_path, {**SPEC, "ladder": {"minimumAvailable": "1Gi",
                                              "relief": {"taint": True}}})
    node.api.fail = ApiError(422, '{"message": "test operation failed"}', "PATCH")
    out = node.cycle(1.5)
    assert out.taint is None and [n.reason for n in out.news] == ["TaintFailed"]


def test_relief_is_in_the_node_state_and_fits_the_crd(node: Node) -> None:
    node.cycle(0.5)
    report = node.report(0.5)
    node.now += 2
    outcome = asyncio.run(node.relief.cycle(report, node.node, []))
    status = with_relief(node_status(report, now="2026-12-03T12:00:00Z"), outcome.status,
                         outcome.last, outcome.taint)
    wire = to_json(status)
    ladder = wire["ladder"]
    assert ladder["state"] == "Critical" and ladder["relief"] is True
    assert ladder["reliefStatus"].startswith("asked to migrate vms/idle-big")
    assert ladder["lastRelief"]["vmiName"] == "idle-big"
    assert ladder["lastRelief"]["migration"] == "overcommit-relief-1"
    assert validate(wire, openapi_schema(NodeStateStatus), "status") == []
