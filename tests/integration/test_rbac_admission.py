"""deploy/manifests against a real kube-apiserver: what the agent's and the controller's identities
may and may not do, by RBAC and by the admission policy that keeps each agent to its own node."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from overcommit.kube.clock import now_rfc3339
from overcommit.kube.events import event_body
from overcommit.localcluster import ControlPlane
from testkit.cases import policy_document
from testkit.kubevirt import CRDS, vmi
from testkit.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
GROUP = "memoryovercommit.io"
API_VERSION = f"{GROUP}/v1alpha1"
NS = "memory-overcommit"
AGENT_SA, CONTROLLER_SA = "overcommit-agent", "overcommit-controller"
VAP = "memory-overcommit-agent-own-node-state"
GUESTS_VAP = "memory-overcommit-agent-own-guests"
TAINT_VAP = "memory-overcommit-agent-own-node-taint"
VMS, EMPTY = "rbac-vms", "rbac-no-vms"  # namespaces: one with a guest on each node, one without
TAINT = "memoryovercommit.io/memory-pressure"
THEIRS = {"key": "dedicated", "value": "db", "effect": "NoSchedule"}
NODE_A, NODE_B = "node-a", "node-b"
AGENT_POD = "overcommit-agent-node-a"
POLICY = "rbac-policy"
GONE_NODE = "rbac-gone-node"  # a node state the controller sweeps
MISSING_NODE_NAME = "missing node-name"
LEASE = "rbac-test-leader"  # not the controller's real lease name: another test may elect
# The policy selects no node, so an agent another test runs in this session ignores it.
NO_NODE = {"matchLabels": {"memoryovercommit.io/test-selects": "nothing"}}


@dataclass(frozen=True)
class Identity:
    cp: ControlPlane
    kubeconfig: Path

    def kubectl(self, *args: str, input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl(*args, kubeconfig=self.kubeconfig, input=input, check=check)

    def create(self, doc: dict[str, Any], *flags: str) -> subprocess.CompletedProcess[str]:
        return self.kubectl("create", *flags, "-f", "-", input=json.dumps(doc), check=False)

    def can(self, verb: str, resource: str, *flags: str) -> bool:
        out = self.kubectl("auth", "can-i", verb, resource, *flags, check=False).stdout.strip()
        assert out in ("yes", "no"), out
        return out == "yes"


# --------------------------------------------------------------------------- helpers


def node_state(node: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "MemoryOvercommitNodeState",
            "metadata": {"name": node}, "spec": {"nodeName": node}}


def apply(cp: ControlPlane, *objects: dict[str, Any]) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    cp.kubectl("apply", "-f", "-", input=body)


def token(cp: ControlPlane, sa: str, *bound_to_pod: str) -> Path:
    """A TokenRequest for ``sa``; bound to a pod (so carrying its node) when a name is given."""
    return cp.service_account_kubeconfig(NS, sa, bound_pod=bound_to_pod[0] if bound_to_pod
                                         else None)


def denied(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode != 0, f"expected a denial, got:\n{result.stdout}"
    assert "Forbidden" in result.stderr or "forbidden" in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in:\n{result.stderr}"
    return result.stderr


def rbac_denied(result: subprocess.CompletedProcess[str], sa: str, verb: str,
                resource: str) -> None:
    denied(result, f'User "system:serviceaccount:{NS}:{sa}" cannot {verb} resource "{resource}"')


def vap_denied(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    denied(result, f"ValidatingAdmissionPolicy '{VAP}'", *needles)


def wrong_node(own: str, other: str) -> str:
    return f"agent on node {own} may only write the node state of {own}, not {other}"


def status_patch(status: dict[str, Any]) -> str:
    return json.dumps({"status": status})


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def deployed(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """deploy/manifests applied, nodes node-a and node-b, an agent pod on node-a, a policy."""
    cp = control_plane
    cp.kubectl("apply", "--server-side", "-k", str(REPO / "deploy/manifests"))
    apply(cp, *CRDS)  # KubeVirt's (stand-ins): relief's migrations and the VMIs they move
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s",
               f"crd/memoryovercommitpolicies.{GROUP}", f"crd/memoryovercommitnodestates.{GROUP}",
               "crd/virtualmachineinstances.kubevirt.io",
               "crd/virtualmachineinstancemigrations.kubevirt.io")
    apply(
        cp,
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE_A},
         "spec": {"taints": [THEIRS]}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE_B}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": VMS}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": EMPTY}},
        vmi("vm-a", VMS, NODE_A, guest_mib=1024, request_mib=512),
        vmi("vm-b", VMS, NODE_B, guest_mib=1024, request_mib=512),
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": AGENT_POD, "namespace": NS},
         "spec": {"nodeName": NODE_A, "serviceAccountName": AGENT_SA,
                  "containers": [{"name": "agent", "image": "overcommit-agent:test"}]}},
        policy_document(POLICY, {"priority": 5, "nodeSelector": NO_NODE,
                                 "ksm": {"enabled": True}}),
        node_state(NODE_B), node_state(GONE_NODE),
    )  # fmt: skip
    yield cp
    cp.kubectl("delete", "--ignore-not-found", "--wait=false", "mop", POLICY)
    cp.kubectl("delete", "--ignore-not-found", "--wait=false", "mons", NODE_A, NODE_B, GONE_NODE)
    cp.kubectl("delete", "--ignore-not-found", "--wait=false", "namespace", VMS, EMPTY)


@pytest.fixture(scope="module")
def agent(deployed: ControlPlane) -> Identity:
    """The agent pod's identity on node-a: a pod-bound token, as a projected volume gives it.

    Waits until the admission policy is in force (it reaches the API server's admission plugin
    through an informer): probes with a dry-run write to node-b's state until it is denied.
    """
    identity = Identity(deployed, token(deployed, AGENT_SA, AGENT_POD))
    extra = json.loads(identity.kubectl("auth", "whoami", "-o", "json").stdout)[
        "status"]["userInfo"]["extra"]
    assert extra["authentication.kubernetes.io/node-name"] == [NODE_A]

    def policy_in_force() -> bool:
        probe = identity.kubectl("patch", "mons", NODE_B, "--subresource=status",
                                 "--dry-run=server", "--type=merge",
                                 "-p", status_patch({"engine": "none"}), check=False)
        return probe.returncode != 0 and VAP in probe.stderr

    wait_for(policy_in_force, 30, "the ValidatingAdmissionPolicy to be in force")
    return identity


@pytest.fixture(scope="module")
def legacy_agent(agent: Identity) -> Identity:
    """The same service account with a token bound to no pod: it carries no node name."""
    return Identity(agent.cp, token(agent.cp, AGENT_SA))


@pytest.fixture(scope="module")
def controller(deployed: ControlPlane) -> Identity:
    return Identity(deployed, token(deployed, CONTROLLER_SA))


# --------------------------------------------------------------------------- the agent


def test_agent_reads_policies_and_nodes(agent: Identity) -> None:
    for resource in ("memoryovercommitpolicies", "nodes"):
        for verb in ("get", "list", "watch"):
            assert agent.can(verb, resource), (verb, resource)
    assert POLICY in agent.kubectl("get", "mop", "-o", "name").stdout
    assert NODE_A in agent.kubectl("get", "nodes", "-o", "name").stdout
    for path in (f"/apis/{API_VERSION}/memoryovercommitpolicies", "/api/v1/nodes"):
        # A real watch (from resourceVersion 0: the existing objects arrive as ADDED).
        watch = agent.kubectl("get", "--raw", f"{path}?watch=1&resourceVersion=0&timeoutSeconds=1")
        assert '"type":"ADDED"' in watch.stdout, watch.stdout


def test_agent_writes_its_own_node_state(agent: Identity) -> None:
    result = agent.create(node_state(NODE_A))
    assert result.returncode == 0, result.stderr
    agent.kubectl("patch", "mons", NODE_A, "--subresource=status", "--type=merge",
                  "-p", status_patch({"engine": "ksm", "guestCount": 2}))
    stored = json.loads(agent.kubectl("get", "mons", NODE_A, "-o", "json").stdout)
    assert stored["status"] == {"engine": "ksm", "guestCount": 2}
    # After creating it, only the status: not its labels, finalizers or owner references.
    rbac_denied(agent.kubectl("label", "mons", NODE_A, "probe=1", check=False),
                AGENT_SA, "patch", "memoryovercommitnodestates")
    for verb in ("update", "patch", "delete"):
        assert not agent.can(verb, "memoryovercommitnodestates"), verb


def posted_event(involved: dict[str, str], component: str, host: str) -> dict[str, Any]:
    """An Event as both components' outboxes post it (kube/events.py event_body): core v1,
    in "default"."""
    return event_body("default", involved, "Normal", "Applied", "settings applied", component,
                      host, now_rfc3339())


def test_agent_posts_events_and_nothing_more(agent: Identity) -> None:
    involved = {"apiVersion": API_VERSION, "kind": "MemoryOvercommitNodeState", "name": NODE_A}
    result = agent.create(posted_event(involved, "overcommit-agent", NODE_A))
    assert result.returncode == 0, result.stderr
    for verb in ("patch", "update", "delete", "list"):
        assert not agent.can(verb, "events", "-n", "default"), verb
    assert not agent.can("create", "events.events.k8s.io", "-n", "default")


def test_agent_cannot_write_another_nodes_state(agent: Identity) -> None:
    vap_denied(agent.create(node_state("node-c")), wrong_node(NODE_A, "node-c"))
    vap_denied(agent.kubectl("patch", "mons", NODE_B, "--subresource=status", "--type=merge",
                             "-p", status_patch({"stolen": True}), check=False),
               wrong_node(NODE_A, NODE_B))
    assert "stolen" not in agent.kubectl("get", "mons", NODE_B, "-o", "json").stdout
    # RBAC alone would allow both: it is the admission policy that refuses.
    assert agent.can("create", "memoryovercommitnodestates")
    assert agent.can("patch", "memoryovercommitnodestates", "--subresource=status")


def test_admission_policy_holds_an_agent_installed_in_another_namespace(
        agent: Identity) -> None:
    """As after `kustomize edit set namespace ops` (and a namePrefix): the same ClusterRole
    bound to ops/x-overcommit-agent. The admission policy must still keep it to its node."""
    cp = agent.cp
    sa = "x-overcommit-agent"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent-a", "namespace": "ops"},
           "spec": {"nodeName": NODE_A, "serviceAccountName": sa,
                    "containers": [{"name": "agent", "image": "overcommit-agent:test"}]}}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "rbac-test-ops-agent"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "memory-overcommit-agent"},
               "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": "ops"}]}
    apply(cp, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ops"}},
          {"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": sa, "namespace": "ops"}}, binding, pod,
          node_state(NODE_A))  # its own node's state, whichever test made it first
    try:
        moved = Identity(cp, cp.service_account_kubeconfig("ops", sa, bound_pod="agent-a"))
        vap_denied(moved.kubectl("patch", "mons", NODE_B, "--subresource=status",
                                 "--type=merge", "-p", status_patch({"stolen": True}),
                                 check=False),
                   wrong_node(NODE_A, NODE_B))
        assert moved.kubectl("patch", "mons", NODE_A, "--subresource=status", "--type=merge",
                             "-p", status_patch({"engine": "ksm"}),
                             check=False).returncode == 0
    finally:
        cp.kubectl("delete", "--ignore-not-found", "--wait=false", "clusterrolebinding",
                   "rbac-test-ops-agent")
        cp.kubectl("delete", "--ignore-not-found", "--wait=false", "namespace", "ops")


def test_agent_cannot_delete_node_states(agent: Identity) -> None:
    assert not agent.can("delete", "memoryovercommitnodestates")
    rbac_denied(agent.kubectl("delete", "mons", NODE_B, check=False),
                AGENT_SA, "delete", "memoryovercommitnodestates")
    agent.cp.kubectl("get", "mons", NODE_B)  # still there


def test_agent_cannot_touch_policies(agent: Identity) -> None:
    for verb in ("create", "update", "patch", "delete"):
        assert not agent.can(verb, "memoryovercommitpolicies"), verb
    assert not agent.can("patch", "memoryovercommitpolicies", "--subresource=status")
    rbac_denied(agent.create(policy_document("agent-made", {"ksm": {"enabled": True}})),
                AGENT_SA, "create", "memoryovercommitpolicies")
    rbac_denied(agent.kubectl("patch", "mop", POLICY, "--type=merge",
                              "-p", '{"spec":{"priority":1000}}', check=False),
                AGENT_SA, "patch", "memoryovercommitpolicies")
    rbac_denied(agent.kubectl("delete", "mop", POLICY, check=False),
                AGENT_SA, "delete", "memoryovercommitpolicies")


def test_agent_has_nothing_else(agent: Identity) -> None:
    for verb, resource in [("list", "secrets"), ("list", "pods"), ("update", "nodes"),
                           ("delete", "nodes"),
                           ("patch", "virtualmachineinstancemigrations.kubevirt.io"),
                           ("delete", "virtualmachineinstancemigrations.kubevirt.io"),
                           ("patch", "virtualmachineinstances.kubevirt.io"),
                           ("list", "namespaces"), ("get", "customresourcedefinitions"),
                           ("list", "customresourcedefinitions"),
                           ("watch", "customresourcedefinitions"),
                           ("create", "customresourcedefinitions")]:
        assert not agent.can(verb, resource, "-A"), (verb, resource)
    assert not agent.can("patch", "nodes", "--subresource=status")


def test_token_without_node_name_writes_no_node_state(legacy_agent: Identity) -> None:
    info = json.loads(legacy_agent.kubectl("auth", "whoami", "-o", "json").stdout)
    assert info["status"]["userInfo"]["username"] == f"system:serviceaccount:{NS}:{AGENT_SA}"
    assert "authentication.kubernetes.io/node-name" not in info["status"]["userInfo"].get(
        "extra", {})
    vap_denied(legacy_agent.create(node_state("node-d"), "--dry-run=server"),
               MISSING_NODE_NAME, "node-d")
    vap_denied(legacy_agent.kubectl("patch", "mons", NODE_B, "--subresource=status",
                                    "--type=merge", "-p", status_patch({"engine": "none"}),
                                    check=False),
               MISSING_NODE_NAME, NODE_B)
    assert legacy_agent.kubectl("get", "mop", POLICY).returncode == 0  # reading still works


# --------------------------------------------------------------------------- relief


def relief_migration(vmi_name: str, namespace: str = VMS,
                     node: str | None = NODE_A) -> dict[str, Any]:
    """A migration as relief creates it (agent/api.py create_migration)."""
    labels = {} if node is None else {"memoryovercommit.io/node": node}
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"generateName": "overcommit-relief-", "namespace": namespace,
                         "labels": labels},
            "spec": {"vmiName": vmi_name}}


def in_force(identity: Identity, policy: str, probe: list[str], because: str,
             body: dict[str, Any] | None = None, timeout: float = 30) -> None:
    """Wait until ``policy`` refuses the dry-run ``probe`` ``because`` (admission policies
    reach the API server's admission plugin through informers, their parameters too; until
    then it refuses for other reasons, such as a parameter kind it cannot resolve yet)."""
    def refused() -> bool:
        result = identity.kubectl(*probe, "--dry-run=server",
                                  input=None if body is None else json.dumps(body),
                                  check=False)
        return result.returncode != 0 and policy in result.stderr and because in result.stderr
    wait_for(refused, timeout, f"the ValidatingAdmissionPolicy {policy} to be in force")


def guests_denied(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    denied(result, f"ValidatingAdmissionPolicy '{GUESTS_VAP}'", *needles)


def test_agent_asks_to_migrate_only_its_own_nodes_guests(agent: Identity) -> None:
    # KubeVirt's CRDs came after the policy, as when KubeVirt is installed after us: the API
    # server resolves the policy's parameter kind once they are served.
    in_force(agent, GUESTS_VAP, ["create", "-f", "-"], "may only migrate guests running on",
             relief_migration("vm-b"), timeout=120)
    made = agent.create(relief_migration("vm-a"), "-o", "json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["spec"]["vmiName"] == "vm-a"
    assert created["metadata"]["name"].startswith("overcommit-relief-")
    guests_denied(agent.create(relief_migration("vm-b")),
                  f"agent on node {NODE_A} may only migrate guests running on {NODE_A}, and "
                  f"{VMS}/vm-b runs on {NODE_B}")
    guests_denied(agent.create(relief_migration("vm-a", node=NODE_B)),
                  f"must label its migration memoryovercommit.io/node={NODE_A} (it says "
                  f"{NODE_B})")
    guests_denied(agent.create(relief_migration("vm-a", node=None)), "(it says nothing)")
    # A namespace without VMIs has no guest of this node: refused.
    empty = agent.create(relief_migration("vm-a", namespace=EMPTY))
    assert empty.returncode != 0 and GUESTS_VAP in empty.stderr, empty.stderr
    assert "no params found" in empty.stderr, empty.stderr
    # It watches every migration (the per-cluster limit), and changes none.
    for verb in ("get", "list", "watch"):
        assert agent.can(verb, "virtualmachineinstancemigrations.kubevirt.io", "-A"), verb
    name = created["metadata"]["name"]
    rbac_denied(agent.kubectl("delete", "vmim", "-n", VMS, name, check=False), AGENT_SA,
                "delete", "virtualmachineinstancemigrations")
    agent.cp.kubectl("delete", "vmim", "-n", VMS, name)


def test_a_token_without_node_name_asks_for_no_migration(legacy_agent: Identity) -> None:
    guests_denied(legacy_agent.create(relief_migration("vm-a"), "--dry-run=server"),
                  MISSING_NODE_NAME)


def taint_patch(before: list[dict[str, str]], after: list[dict[str, str]]) -> str:
    """The patch relief sends (agent/api.py set_taints): test the taints, replace them."""
    return json.dumps([{"op": "test", "path": "/spec/taints", "value": before},
                       {"op": "replace", "path": "/spec/taints", "value": after}])


def node_taints(cp: ControlPlane, node: str) -> list[dict[str, str]]:
    spec = json.loads(cp.kubectl("get", "node", node, "-o", "json").stdout)["spec"]
    taints: list[dict[str, str]] = spec.get("taints", [])
    return taints


def test_agent_taints_only_its_own_node_and_only_with_its_taint(agent: Identity) -> None:
    ours = {"key": TAINT, "value": "true", "effect": "NoSchedule"}
    in_force(agent, TAINT_VAP, ["label", "node", NODE_A, "probe=1"], "not the Node's labels")

    def patch(node: str, before: list[Any], after: list[Any],
              ) -> subprocess.CompletedProcess[str]:
        return agent.kubectl("patch", "node", node, "--type=json",
                             "-p", taint_patch(before, after), check=False)

    # The node controller taints a Node without a kubelet (not-ready, unreachable) too.
    before = node_taints(agent.cp, NODE_A)
    assert THEIRS in before
    assert patch(NODE_A, before, [*before, ours]).returncode == 0
    assert node_taints(agent.cp, NODE_A) == [*before, ours]
    others = [t for t in before if t != THEIRS]
    refused = patch(NODE_A, [*before, ours], [*others, ours])  # dropping someone else's taint
    denied(refused, TAINT_VAP, f"may only change the {TAINT} taint")
    denied(agent.kubectl("label", "node", NODE_A, "probe=1", check=False), TAINT_VAP,
           "not the Node's labels")
    denied(agent.kubectl("patch", "node", NODE_A, "--type=merge",
                         "-p", '{"spec":{"unschedulable":true}}', check=False), TAINT_VAP)
    denied(agent.kubectl("patch", "node", NODE_B, "--type=json",
                         "-p", json.dumps([{"op": "add", "path": "/spec/taints",
                                            "value": [ours]}]), check=False),
           TAINT_VAP, f"agent on node {NODE_A} may only taint its own Node, not {NODE_B}")
    # Taints someone changed meanwhile are never overwritten: the patch's test fails.
    stale = patch(NODE_A, before, [*before, ours])
    assert stale.returncode != 0 and "invalid" in stale.stderr, stale.stderr
    assert patch(NODE_A, [*before, ours], before).returncode == 0
    assert node_taints(agent.cp, NODE_A) == before


def test_a_token_without_node_name_taints_no_node(legacy_agent: Identity) -> None:
    ours = {"key": TAINT, "value": "true", "effect": "NoSchedule"}
    before = node_taints(legacy_agent.cp, NODE_A)
    denied(legacy_agent.kubectl("patch", "node", NODE_A, "--type=json",
                                "-p", taint_patch(before, [*before, ours]),
                                "--dry-run=server", check=False),
           TAINT_VAP, "(missing node-name)")


# --------------------------------------------------------------------------- the controller


def test_controller_writes_policy_status_not_spec(controller: Identity) -> None:
    controller.kubectl("patch", "mop", POLICY, "--subresource=status", "--type=merge",
                       "-p", status_patch({"observedGeneration": 1,
                                           "nodes": {"matched": 2, "applied": 1}}))
    stored = json.loads(controller.kubectl("get", "mop", POLICY, "-o", "json").stdout)
    assert stored["status"]["nodes"] == {"matched": 2, "applied": 1}
    rbac_denied(controller.kubectl("patch", "mop", POLICY, "--type=merge",
                                   "-p", '{"spec":{"priority":7}}', check=False),
                CONTROLLER_SA, "patch", "memoryovercommitpolicies")
    for verb in ("create", "update", "patch", "delete"):
        assert not controller.can(verb, "memoryovercommitpolicies"), verb


def test_controller_reads_and_sweeps_node_states(controller: Identity) -> None:
    listed = controller.kubectl("get", "mons", "-o", "name").stdout
    assert f"memoryovercommitnodestate.{GROUP}/{NODE_B}" in listed
    assert controller.can("watch", "memoryovercommitnodestates")
    assert controller.can("list", "nodes") and controller.can("watch", "nodes")
    controller.kubectl("delete", "mons", GONE_NODE)
    assert controller.cp.kubectl("get", "mons", GONE_NODE, check=False).returncode != 0


def test_controller_cannot_write_node_states(controller: Identity) -> None:
    rbac_denied(controller.create(node_state("node-e")),
                CONTROLLER_SA, "create", "memoryovercommitnodestates")
    rbac_denied(controller.kubectl("label", "mons", NODE_B, "x=1", check=False),
                CONTROLLER_SA, "patch", "memoryovercommitnodestates")
    for verb in ("update", "patch"):
        assert not controller.can(verb, "memoryovercommitnodestates", "--subresource=status")
    assert not controller.can("patch", "nodes")


def test_controller_posts_events_and_nothing_more(controller: Identity) -> None:
    involved = {"apiVersion": API_VERSION, "kind": "MemoryOvercommitPolicy", "name": POLICY}
    result = controller.create(posted_event(involved, "overcommit-controller", "c-0"))
    assert result.returncode == 0, result.stderr
    for verb in ("patch", "update", "delete", "list"):
        assert not controller.can(verb, "events", "-n", "default"), verb
    assert not controller.can("create", "events.events.k8s.io", "-n", "default")


def test_controller_leader_election_lease_only_in_its_namespace(controller: Identity) -> None:
    lease: dict[str, Any] = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                             "metadata": {"name": LEASE, "namespace": NS},
                             "spec": {"holderIdentity": "controller-0",
                                      "leaseDurationSeconds": 15}}
    result = controller.create(lease)
    try:
        assert result.returncode == 0, result.stderr
        lease["spec"]["holderIdentity"] = "controller-1"  # a take-over: get, then update
        current = json.loads(controller.kubectl("get", "lease", "-n", NS, LEASE,
                                                "-o", "json").stdout)
        lease["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        controller.kubectl("replace", "-f", "-", input=json.dumps(lease))
        rbac_denied(controller.kubectl("delete", "lease", "-n", NS, LEASE, check=False),
                    CONTROLLER_SA, "delete", "leases")
    finally:
        controller.cp.kubectl("delete", "lease", "-n", NS, LEASE, "--ignore-not-found")
    for verb in ("get", "create", "update"):
        assert controller.can(verb, "leases.coordination.k8s.io", "-n", NS), verb
        assert not controller.can(verb, "leases.coordination.k8s.io", "-n", "kube-system"), verb
    assert not controller.can("delete", "leases.coordination.k8s.io", "-n", NS)
    assert not controller.can("list", "leases.coordination.k8s.io", "-n", NS)
