"""Relief against a real kube-apiserver: the agent (its own process, the shipped RBAC and
admission policies, a pod-bound token) on a node whose fake kernel reports Critical asks KubeVirt
to live-migrate the right guest once, not again within the cooldown, taints its Node while the
pressure lasts and untaints it after. KubeVirt is its CRDs (stand-ins: nothing migrates), the
guests are libvirt's test driver's. The real-pressure version, on the real node with real TCG
guests, is tests/e2e/test_relief.py."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overcommit.localcluster import ControlPlane
from testkit.fakes.kernel import FakeKernel
from testkit.fakes.libvirt_xml import FakeDomain, write_node
from testkit.kubevirt import CRDS, set_vmi_status, vmi, vmi_status
from testkit.waiting import wait_for
from tests.integration.kube import (
    REPO,
    agent_log,
    agent_process,
    apply,
    get_json,
    node,
    node_state,
    policy,
)

GIB_KIB = 1 << 20
TAINT = "memoryovercommit.io/memory-pressure"
COOLDOWN_S = 30


@pytest.fixture
def kubevirt(control_plane: ControlPlane) -> ControlPlane:
    cp = control_plane
    cp.kubectl("apply", "--server-side", "-k", str(REPO / "deploy/manifests"))
    apply(cp, *CRDS)
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s",
               "crd/virtualmachineinstances.kubevirt.io",
               "crd/virtualmachineinstancemigrations.kubevirt.io")
    return cp


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:6]
    yield {"node": f"relief-{suffix}", "policy": f"relief-{suffix}", "ns": f"relief-{suffix}"}


def migrations(cp: ControlPlane, ns: str) -> list[dict[str, Any]]:
    found = get_json(cp, "vmim", "-n", ns)
    return [] if found is None else list(found["items"])


def ladder(cp: ControlPlane, name: str) -> dict[str, Any]:
    state = node_state(cp, name) or {}
    found: dict[str, Any] = (state.get("status") or {}).get("ladder") or {}
    return found


def taints(cp: ControlPlane, name: str) -> list[dict[str, str]]:
    found: list[dict[str, str]] = (get_json(cp, "node", name)["spec"] or {}).get("taints", [])
    return [t for t in found if t["key"] == TAINT]


def pod_bound_kubeconfig(cp: ControlPlane, node_name: str) -> Path:
    pod = f"overcommit-agent-{node_name}"
    apply(cp, {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod, "namespace": "memory-overcommit"},
               "spec": {"nodeName": node_name, "serviceAccountName": "overcommit-agent",
                        "containers": [{"name": "agent", "image": "agent:test"}]}})
    return cp.service_account_kubeconfig("memory-overcommit", "overcommit-agent",
                                         bound_pod=pod)


def test_relief_asks_once_for_the_right_guest_and_taints_the_node(
        kubevirt: ControlPlane, names: dict[str, str], tmp_path: Path) -> None:
    cp, n, p, ns = kubevirt, names["node"], names["policy"], names["ns"]
    apply(cp, node(n, {"pool": n}), {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": ns}})
    # Two guests: the larger cannot migrate (KubeVirt says so), the smaller can.
    guests = {"vm-pinned": (4, False), "vm-mobile": (2, True)}
    for name, (gib, migratable) in guests.items():
        apply(cp, vmi(name, ns, n, guest_mib=gib * 1024, request_mib=512))
        set_vmi_status(cp.kubectl, ns, name, vmi_status(n, live_migratable=migratable))
    uids = {name: get_json(cp, "vmi", name, "-n", ns)["metadata"]["uid"] for name in guests}
    uri = write_node(tmp_path, [FakeDomain(f"{ns}_{name}", max_kib=gib * GIB_KIB,
                                           vmi_uid=uids[name])
                                for name, (gib, _) in guests.items()])
    host = FakeKernel(tmp_path / "host")
    host.set_memory(GIB_KIB // 4)  # 256 MiB available: Critical below the policy's 1 GiB
    apply(cp, policy(p, {"nodeSelector": {"matchLabels": {"pool": n}}, "ksm": {"enabled": True},
                         "ladder": {"minimumAvailable": "1Gi", "relief": {
                             "cooldownSeconds": COOLDOWN_S, "taint": True}}}))
    kubeconfig = pod_bound_kubeconfig(cp, n)
    state = tmp_path / "state"
    try:
        with agent_process(cp, n, host.root, state, kubeconfig=kubeconfig,
                           extra_args=["--libvirt-uri", uri]):
            wait_for(lambda: migrations(cp, ns), 60, "relief to create a migration")
            asked_at = time.monotonic()
            made = migrations(cp, ns)
            assert len(made) == 1, made
            assert made[0]["spec"] == {"vmiName": "vm-mobile"}
            assert made[0]["metadata"]["labels"]["memoryovercommit.io/node"] == n
            name = made[0]["metadata"]["name"]
            wait_for(lambda: (ladder(cp, n).get("lastRelief") or {}).get("migration") == name,
                     30, "the node state to name the migration")
            shown = ladder(cp, n)
            assert shown["state"] == "Critical" and shown["taint"] == "NoSchedule"
            assert shown["lastRelief"]["vmiName"] == "vm-mobile"
            assert taints(cp, n) == [{"key": TAINT, "value": "true", "effect": "NoSchedule"}]
            # KubeVirt takes it on; Critical goes on. Nothing more is asked in the cooldown.
            cp.kubectl("patch", "vmim", name, "-n", ns, "--subresource=status",
                       "--type=merge", "-p", json.dumps({"status": {"phase": "Running"}}))
            wait_for(lambda: (ladder(cp, n).get("reliefStatus") or "").startswith(
                "waiting: cooldown"), 30, "relief to wait out its cooldown")
            while time.monotonic() - asked_at < COOLDOWN_S - 5:
                assert len(migrations(cp, ns)) == 1
                time.sleep(1)
            # Past the cooldown, the migration still in flight holds it (1 per node).
            wait_for(lambda: "in flight for this node" in (
                ladder(cp, n).get("reliefStatus") or ""), 30,
                "relief to wait for the migration in flight")
            assert len(migrations(cp, ns)) == 1
            # The pressure goes: the taint goes, relief has nothing to say.
            host.set_memory(16 * GIB_KIB)
            wait_for(lambda: not taints(cp, n), 60, "the taint to be removed")
            wait_for(lambda: ladder(cp, n).get("state") != "Critical" and
                     not ladder(cp, n).get("reliefStatus"), 30, "relief to stand down")
        log = agent_log(state, n)
        assert "may not" not in log, log
        events = get_json(cp, "events", "-A", "--field-selector",
                          f"involvedObject.name={n}")["items"]
        reasons = {e["reason"] for e in events}
        assert {"ReliefRequested", "NodeTainted", "NodeUntainted"} <= reasons, reasons
    finally:
        cp.kubectl("delete", "--ignore-not-found", "--wait=false", "mop", p)
        cp.kubectl("delete", "--ignore-not-found", "--wait=false", "namespace", ns)
        cp.kubectl("delete", "--ignore-not-found", "--wait=false", "node", n)
