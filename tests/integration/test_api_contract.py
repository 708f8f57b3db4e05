"""The API contract against a real kube-apiserver: the generated CRDs install, explain themselves,
print their columns, reject every shared invalid policy with the CLI's wording, accept the
examples, and keep a node state named after its node."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from overcommit.localcluster import ControlPlane
from testkit.cases import invalid_policy_cases, policy_document
from testkit.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "deploy/crds"
GROUP = "memoryovercommit.io"
API_VERSION = f"{GROUP}/v1alpha1"
POLICIES = f"memoryovercommitpolicies.{GROUP}"
NODE_STATES = f"memoryovercommitnodestates.{GROUP}"
CASES = invalid_policy_cases()
PREFIX = "contract-"  # every object this module creates; names no other test uses
# Policies here select no node, so an agent another test runs in this session ignores them.
NO_NODE = {"matchLabels": {"memoryovercommit.io/test-selects": "nothing"}}


# --------------------------------------------------------------------------- helpers


def crd(plural: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((CRD_DIR / f"{GROUP}_{plural}.yaml").read_text())
    return doc


def schema_at(plural: str, dotted: str) -> dict[str, Any]:
    """The CRD schema of a field, e.g. ``spec.ksm.pagesToScan`` (array items are walked into)."""
    schema: dict[str, Any] = crd(plural)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for name in dotted.split("."):
        while schema.get("type") == "array":
            schema = schema["items"]
        schema = schema["properties"][name]
    return schema


def words(text: str) -> str:
    """Whitespace-normalised text: kubectl explain wraps long descriptions."""
    return " ".join(text.split())


def install_crds(cp: ControlPlane) -> None:
    """kubectl apply -k deploy/crds, then wait (a watch, not a sleep) for both to be Established."""
    cp.kubectl("apply", "--server-side", "-k", str(CRD_DIR))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s",
               f"crd/{POLICIES}", f"crd/{NODE_STATES}")


def apply(cp: ControlPlane, doc: dict[str, Any], *flags: str,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    return cp.kubectl("apply", *flags, "-f", "-", input=json.dumps(doc), check=check)


def node_state(name: str, node_name: str | None = None) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "MemoryOvercommitNodeState",
            "metadata": {"name": name}, "spec": {"nodeName": node_name or name}}


def patch_status(cp: ControlPlane, kind: str, name: str, status: dict[str, Any]) -> None:
    cp.kubectl("patch", kind, name, "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": status}))


def table(cp: ControlPlane, *args: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """``kubectl get`` as (headers, rows by NAME); no cell of ours contains a space."""
    header, *lines = cp.kubectl("get", *args).stdout.splitlines()
    headers = header.split()
    rows = {}
    for line in lines:
        row = dict(zip(headers, line.split(), strict=True))
        rows[row["NAME"]] = row
    return headers, rows


def contains(actual: Any, expected: Any) -> bool:
    """Whether ``actual`` holds everything in ``expected`` (dicts may have more keys)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and contains(actual[k], v) for k, v in expected.items())
    return bool(actual == expected)


def ready(reason: str) -> dict[str, Any]:
    return {"type": "Ready", "status": "True", "reason": reason, "message": "test",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    install_crds(control_plane)
    yield control_plane
    for kind in ("mop", "mons"):
        names = control_plane.kubectl("get", kind, "-o", "name").stdout.split()
        ours = [n for n in names if n.split("/", 1)[1].startswith(PREFIX)]
        if ours:
            control_plane.kubectl("delete", "--wait=false", *ours)


@pytest.fixture(scope="module")
def explain_ready(api: ControlPlane) -> ControlPlane:
    """The OpenAPI document kubectl explain reads is published a moment after Established."""
    wait_for(lambda: api.kubectl("explain", "mons.status.saved", check=False).returncode == 0,
             30, "the CRDs' OpenAPI schema to be published for kubectl explain")
    return api


# --------------------------------------------------------------------------- tests


def test_crds_are_established_cluster_scoped_with_names(api: ControlPlane) -> None:
    for name in (POLICIES, NODE_STATES):
        status = json.loads(api.kubectl("get", "crd", name, "-o", "json").stdout)["status"]
        assert {"Established": "True", "NamesAccepted": "True"}.items() <= {
            c["type"]: c["status"] for c in status["conditions"]}.items()
    out = api.kubectl("api-resources", f"--api-group={GROUP}", "-o", "wide").stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {"memoryovercommitnodestates", "memoryovercommitpolicies"}
    # NAME SHORTNAMES APIVERSION NAMESPACED KIND VERBS CATEGORIES
    assert rows["memoryovercommitpolicies"][1:5] == [
        "mop", API_VERSION, "false", "MemoryOvercommitPolicy"]
    assert rows["memoryovercommitnodestates"][1:5] == [
        "mons", API_VERSION, "false", "MemoryOvercommitNodeState"]
    assert all(row[-1] == "overcommit" for row in rows.values())


@pytest.mark.parametrize(("resource", "plural", "field"), [
    ("memoryovercommitpolicy", "memoryovercommitpolicies", "spec.ksm.pagesToScan"),
    ("mop", "memoryovercommitpolicies", "spec.ksm.adaptive.cpuBudgetPercent"),
    ("mop", "memoryovercommitpolicies", "spec.balloon.floor"),
    ("mop", "memoryovercommitpolicies", "status.nodes.applied"),
    ("memoryovercommitnodestate", "memoryovercommitnodestates", "spec.nodeName"),
    ("mons", "memoryovercommitnodestates", "status.saved.mergingProfitBytes"),
    ("mons", "memoryovercommitnodestates", "status.guests.usableBytes"),
])
def test_explain_prints_the_crd_description(explain_ready: ControlPlane, resource: str,
                                            plural: str, field: str) -> None:
    description = schema_at(plural, field)["description"]
    out = explain_ready.kubectl("explain", f"{resource}.{field}").stdout
    assert f"FIELD: {field.rsplit('.', 1)[1]} " in out
    assert words(description) in words(out)


def test_policy_printer_columns(api: ControlPlane) -> None:
    name = f"{PREFIX}columns"
    apply(api, policy_document(name, {"priority": 42, "nodeSelector": NO_NODE,
                                      "ksm": {"enabled": True}}))
    patch_status(api, "mop", name, {
        "observedGeneration": 1,
        "nodes": {"matched": 5, "applied": 3, "failed": 1, "overridden": 1, "summary": "3/5"},
        "saved": {"totalBytes": 1610612736, "summary": "1.5Gi"},
        "conditions": [ready("Applied")],
        "capacity": {"supportedPercent": 112, "limitingNode": "node-7", "summary": "112%",
                     "kubevirt": {"configuredPercent": 150}},
    })
    headers, rows = table(api, "mop", name)
    assert headers == ["NAME", "PRIORITY", "NODES", "SAVED", "READY", "AGE"]
    row = rows[name]
    assert (row["PRIORITY"], row["NODES"], row["SAVED"], row["READY"]) == (
        "42", "3/5", "1.5Gi", "True")
    assert row["AGE"][-1] in "smhd"
    headers, rows = table(api, "mop", name, "-o", "wide")
    assert headers == ["NAME", "PRIORITY", "NODES", "SAVED", "READY", "AGE", "FAILED",
                       "OVERRIDDEN", "SUPPORTED", "LIMITED-BY", "KUBEVIRT", "REASON"]
    row = rows[name]
    assert (row["FAILED"], row["OVERRIDDEN"], row["SUPPORTED"], row["LIMITED-BY"],
            row["KUBEVIRT"], row["REASON"]) == ("1", "1", "112%", "node-7", "150", "Applied")


def test_node_state_printer_columns_and_category(api: ControlPlane) -> None:
    node, policy = f"{PREFIX}node-1", f"{PREFIX}category"
    apply(api, policy_document(policy, {"nodeSelector": NO_NODE, "ksm": {"enabled": True}}))
    apply(api, node_state(node))
    patch_status(api, "mons", node, {
        "policy": {"name": "static-virt-nodes", "uid": "u-1", "generation": 2},
        "engine": "ksm", "saved": {"mergedBytes": 536870912, "summary": "512Mi"},
        "guestCount": 3, "conditions": [ready("Applied")],
    })
    headers, rows = table(api, "mons", node)
    assert headers == ["NAME", "POLICY", "ENGINE", "SAVED", "GUESTS", "READY", "AGE"]
    row = rows[node]
    assert (row["POLICY"], row["ENGINE"], row["SAVED"], row["GUESTS"], row["READY"]) == (
        "static-virt-nodes", "ksm", "512Mi", "3", "True")
    patch_status(api, "mons", node, {
        "conditions": [ready("Applied"), {"type": "Degraded", "status": "False",
                                          "reason": "AsExpected", "message": "no problems"}],
        "ladder": {"state": "Clear"},
        "capacity": {"supportedPercent": 108, "summary": "108%", "headroom": "-1.5Gi"}})
    headers, rows = table(api, "mons", node, "-o", "wide")
    assert headers[-4:] == ["LADDER", "SUPPORTED", "HEADROOM", "REASON"]
    assert [rows[node][h] for h in headers[-4:]] == ["Clear", "108%", "-1.5Gi", "AsExpected"]

    everything = api.kubectl("get", "overcommit").stdout  # the category: both kinds
    assert f"memoryovercommitpolicy.{GROUP}/{policy}" in everything
    assert f"memoryovercommitnodestate.{GROUP}/{node}" in everything


def assert_rejected(result: subprocess.CompletedProcess[str], case: dict[str, Any]) -> None:
    assert result.returncode != 0, f"{case['name']} was accepted:\n{result.stdout}"
    assert case["field"] in result.stderr and case["message"] in result.stderr, (
        f"expected {case['field']} and {case['message']!r} in:\n{result.stderr}")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_api_server_rejects_invalid_policy(api: ControlPlane, case: dict[str, Any]) -> None:
    doc = policy_document(f"{PREFIX}{case['name']}", case["spec"])
    assert_rejected(apply(api, doc, "--dry-run=server", check=False), case)


def test_invalid_policy_is_rejected_without_dry_run_too(api: ControlPlane) -> None:
    case = next(c for c in CASES if c["name"] == "ksm-pages-zero")
    name = f"{PREFIX}real-{case['name']}"
    assert_rejected(apply(api, policy_document(name, case["spec"]), check=False), case)
    missing = api.kubectl("get", "mop", name, check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_accepted(api: ControlPlane, path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    name = doc["metadata"]["name"] = f"{PREFIX}{doc['metadata']['name']}"
    apply(api, doc)
    try:
        stored = json.loads(api.kubectl("get", "mop", name, "-o", "json").stdout)
    finally:  # examples select real nodes: never leave one to an agent another test runs
        api.kubectl("delete", "mop", name, "--wait=false")
    assert contains(stored["spec"], doc["spec"])  # stored as written, plus defaults


def test_node_state_must_be_named_after_its_node(api: ControlPlane) -> None:
    rules = crd("memoryovercommitnodestates")["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]["x-kubernetes-validations"]
    message = next(r["message"] for r in rules if "spec.nodeName" in r["rule"])
    result = apply(api, node_state(f"{PREFIX}node-2", "some-other-node"), check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert api.kubectl("get", "mons", f"{PREFIX}node-2", check=False).returncode != 0
