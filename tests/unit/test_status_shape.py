"""The node state and policy status as the API sees them, pinned to the shape they had.

The golden files under ``golden/`` were written by the code *before* the status became typed
(commit b9bd215: hand-written camelCase dicts in ``agent/status.py`` and ``controller/fold.py``),
from exactly the inputs built here. A refactor may change how the status is built, never what
the API server receives: each render is checked against the CRD's schema and against that file.
Volatile values (timestamps) are replaced by placeholders before the comparison.

Regenerate (only for an intended change of the API, and say so in the commit):
``OVERCOMMIT_WRITE_GOLDEN=1 pytest tests/unit/test_status_shape.py``.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from overcommit.agent.status import node_status
from overcommit.api.model import PolicyError, policy_from_object
from overcommit.api.schema import openapi_schema, to_json, validate
from overcommit.api.status import NodeStateStatus, PolicyStatus
from overcommit.controller.fold import fold, node_summary, policy_view
from overcommit.reconcile.guests import GuestManager, VirtSettings
from overcommit.reconcile.node import NodeReconciler
from overcommit.virt.libvirt_source import LibvirtEndpoint
from testkit.cases import policy_document
from testkit.fakes.kernel import FakeKernel
from testkit.fakes.libvirt_xml import FakeDomain, write_node

GOLDEN = Path(__file__).parent / "golden"
GIB_KIB = 1024 * 1024
TEST_DRIVER_NOW = 627319920 + 1  # the test driver's constant last_update, plus one second
KSM = "sys/kernel/mm/ksm"
T0 = "2026-01-01T00:00:00Z"
NOW = "2026-12-03T12:00:00Z"  # the agent's clock at the cycle (was read inside node_status)
NOW_EPOCH = 1796299200.0  # NOW, as the reconciler's wall clock stamps the ladder's moves

WINNER = {
    "priority": 10,
    "ksm": {"enabled": True, "pagesToScan": 900, "sleepMillisecs": 5},
    "zswap": {"enabled": True, "maxPoolPercent": 30},
    "swap": {"swappiness": 30},
    "balloon": {"mode": "Static", "static": {"targetPercent": 60},
                "floor": {"minPercent": 25, "guestFreeMarginPercent": 0}},
}
LOSER = {"priority": 1, "ksm": {"enabled": False}}
VMIS = {("ns1", "vm-a"): {"metadata": {"name": "vm-a", "namespace": "ns1", "uid": "uid-a",
                                       "labels": {"tier": "web"}},
                          "spec": {"domain": {"resources": {"requests": {"memory": "1Gi"}}}}}}


def _policy(name: str, spec: dict[str, Any], created: str) -> Any:
    doc = policy_document(name, spec)
    doc["metadata"].update(uid=f"uid-{name}", generation=3, creationTimestamp=created)
    return policy_from_object(doc)


def node_state_cycle(tmp_path: Path, *, with_policies: bool = True
                     ) -> tuple[Any, list[PolicyError]]:
    """One cycle on a fake kernel and libvirt's test driver that touches every status field:
    a winning and a losing policy, an invalid one, a refused write, guests with and without
    KubeVirt metadata and balloon device, and an unreachable endpoint."""
    kernel = FakeKernel(tmp_path / "host")
    kernel.merge(shared=100, sharing=700, zero_pages=20)
    kernel.fail_always(f"{KSM}/sleep_millisecs", errno.EIO)
    uri = write_node(tmp_path, [
        FakeDomain("ns1_vm-a", max_kib=2 * GIB_KIB, current_kib=GIB_KIB, vmi_uid="uid-a"),
        FakeDomain("plain", max_kib=GIB_KIB),
        FakeDomain("ns1_no-balloon", balloon="none", vmi_uid="uid-nb"),
    ])
    settings = VirtSettings(uris=(uri, "qemu+unix:///system?socket=/nonexistent/sock"),
                            discover_system=False)
    engine = NodeReconciler(state_dir=tmp_path / "state", fs=kernel, virt=settings,
                            wall_clock=lambda: NOW_EPOCH)
    engine.guests = GuestManager(settings,
                                 lambda u: LibvirtEndpoint(u, wall_clock=lambda: TEST_DRIVER_NOW))
    policies = [_policy("winner", WINNER, "2026-01-02T00:00:00Z"),
                _policy("loser", LOSER, "2026-01-01T00:00:00Z")] if with_policies else []
    invalid = [PolicyError("cluster (MemoryOvercommitPolicy broken)",
                           ["spec.ksm.pagesToScan: Invalid value: 0: too small"])]
    report = engine.cycle(policies, {"pool": "virt"}, vmis=VMIS)
    return report, invalid


def _state(node: str, policy: str | None, ready: str = "True",
           degraded: tuple[str, str] = ("False", "AsExpected"), merged: int = 0,
           overridden: tuple[str, ...] = (), generation: int = 3) -> dict[str, Any]:
    return {"metadata": {"name": node, "uid": f"state-{node}"}, "spec": {"nodeName": node},
            "status": {
                "policy": None if policy is None else {"name": policy, "uid": f"uid-{policy}",
                                                       "generation": generation},
                "overridden": [{"name": o, "reason": "priority 1 is lower"} for o in overridden],
                "conditions": [
                    {"type": "Ready", "status": ready,
                     "reason": "Applied" if ready == "True" else "ApplyFailed",
                     "message": "ok" if ready == "True" else "run: EBUSY: busy"},
                    {"type": "Degraded", "status": degraded[0], "reason": degraded[1],
                     "message": "guest vm-x: no stats" if degraded[0] == "True" else "none"}],
                "saved": {"mergedBytes": merged, "mergingProfitBytes": merged // 2,
                          "balloonedBytes": 3 << 20, "compressedBytes": 1 << 20,
                          "totalBytes": merged + (4 << 20)}}}


def policy_statuses() -> dict[str, Any]:
    """The controller's fold of five node states for two policies (one of them with a
    previous status whose Ready condition keeps its transition time)."""
    states = [
        _state("n1", "winner", merged=4096, overridden=("loser",)),
        _state("n2", "winner", ready="False"),
        _state("n3", "winner", degraded=("True", "GuestsFailed")),
        _state("n4", "winner", generation=2),
        _state("n5", "loser", merged=8192),
    ]
    reports = {s["metadata"]["name"]: node_summary(s) for s in states}
    nodes = {f"n{i}": {"pool": "virt"} for i in range(1, 7)}
    out = {}
    for name, spec, previous in (
            ("winner", {"nodeSelector": {"matchLabels": {"pool": "virt"}}, **WINNER}, {}),
            ("loser", {"nodeSelector": {"matchLabels": {"pool": "virt"}}, **LOSER},
             {"conditions": [{"type": "Ready", "status": "True", "reason": "Applied",
                              "message": "old", "lastTransitionTime": T0}]})):
        doc = policy_document(name, spec)
        doc["metadata"].update(uid=f"uid-{name}", generation=3)
        doc["status"] = previous
        out[name] = to_json(fold(policy_view(doc), reports, nodes, "2026-06-01T00:00:00Z"))
    return out


def _pruned(value: Any) -> Any:
    """Without null values: the API server prunes a null in a field that is not nullable (none
    of the status's is), so a null and an absent field store the same object."""
    if isinstance(value, dict):
        return {k: _pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """The stored object (JSON round trip, nulls pruned), volatile stamps replaced."""
    data = _pruned(json.loads(json.dumps(value)))
    for condition in data.get("conditions") or []:
        if condition.get("lastTransitionTime") not in (None, T0, "2026-06-01T00:00:00Z"):
            # The old builder read the wall clock itself; the new one is given NOW.
            condition["lastTransitionTime"] = "<now>"
    return data


def _check(name: str, rendered: Any) -> None:
    path = GOLDEN / f"{name}.json"
    if os.environ.get("OVERCOMMIT_WRITE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(rendered, indent=2, sort_keys=True) + "\n")
    assert rendered == json.loads(path.read_text()), f"{name} differs from {path}"


def test_node_state_status_has_the_shape_it_always_had(tmp_path: Path) -> None:
    report, invalid = node_state_cycle(tmp_path)
    status = _plain(to_json(node_status(report, invalid, now=NOW)))
    assert validate(json.loads(json.dumps(status)), openapi_schema(NodeStateStatus),
                    "status") == []
    _check("node_state_status", status)


def test_node_state_status_without_a_policy_has_the_shape_it_always_had(tmp_path: Path) -> None:
    report, _ = node_state_cycle(tmp_path, with_policies=False)
    status = _plain(to_json(node_status(report, now=NOW)))
    assert validate(json.loads(json.dumps(status)), openapi_schema(NodeStateStatus),
                    "status") == []
    _check("node_state_status_no_policy", status)


@pytest.mark.parametrize("policy", ["winner", "loser"])
def test_policy_status_has_the_shape_it_always_had(policy: str) -> None:
    status = _plain(policy_statuses()[policy])
    assert validate(json.loads(json.dumps(status)), openapi_schema(PolicyStatus),
                    "status") == []
    _check(f"policy_status_{policy}", status)
