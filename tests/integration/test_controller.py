"""The controller against a real kube-apiserver: real agents (subprocesses on fake host roots)
or simulated ones (node states written directly) report; `overcommit controller` replicas,
running as the shipped controller ServiceAccount, fold them into policy status."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from overcommit.api.status import find_condition as condition
from overcommit.localcluster import ControlPlane
from overcommit.localcluster.ports import free_ports
from overcommit.localcluster.processes import stop_process
from testkit.fakes.kernel import FakeKernel
from testkit.waiting import wait_for
from tests.integration.kube import (
    agent_process,
    apply,
    fetch,
    get_json,
    install_crds,
    node,
    policy,
    probe,
)
from tests.unit.controller import kstatus

REPO = Path(__file__).resolve().parents[2]
NS = "memory-overcommit"
KUBEVIRT_KSM = "kubevirt.io/ksm-handler-managed"
API = "memoryovercommit.io/v1alpha1"
# Long enough that a loaded 2-CPU machine's stalls (renewals every ~1 s, 5 s to give up) do
# not hand the lease over before the test kills the leader; the takeover test waits it out.
LEASE_SECONDS = 8


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> ControlPlane:
    install_crds(control_plane)
    for manifest in ("namespace.yaml", "controller-rbac.yaml"):
        control_plane.kubectl("apply", "--server-side", "-f",
                              str(REPO / "deploy/manifests" / manifest))
    return control_plane


@pytest.fixture(scope="module")
def controller_kubeconfig(cluster: ControlPlane) -> Path:
    """The controller's own identity: the shipped ServiceAccount and RBAC, nothing more."""
    return cluster.service_account_kubeconfig(NS, "overcommit-controller")


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:6]




class Replica:
    def __init__(self, proc: subprocess.Popen[str], identity: str, port: int,
                 metrics_port: int) -> None:
        self.proc, self.identity, self.port = proc, identity, port
        self.metrics_port = metrics_port

    def health(self) -> dict[str, Any]:
        answer = probe(self.port, "/healthz")
        assert answer is not None and answer[0] == 200, f"{self.identity}: /healthz {answer}"
        return answer[1]

    def metric(self, series: str) -> float | None:
        """One series' value from /metrics (``name{labels}`` as Prometheus prints it), or None
        while it has none (a labelled series appears with its first sample)."""
        answer = fetch(self.metrics_port, "/metrics")
        assert answer is not None and answer[0] == 200, f"{self.identity}: /metrics {answer}"
        for line in answer[1].splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return None


@contextmanager
def controller(kubeconfig: Path, log_dir: Path, identity: str,
               lease: str, extra: tuple[str, ...] = ()) -> Iterator[Replica]:
    """``overcommit controller`` as its own process, so a test can kill it like a node would.
    Yields once both its HTTP servers answer: a replica still importing would refuse the
    test's first question."""
    log_path = log_dir / f"controller-{identity}.log"
    for _ in range(3):
        port, metrics_port = free_ports(2)
        with open(log_path, "a") as log:
            argv = [sys.executable, "-m", "overcommit.cli", "controller", "--kubeconfig",
                    str(kubeconfig), "--lease-namespace", NS, "--lease-name", lease,
                    "--identity", identity, "--lease-duration", str(LEASE_SECONDS),
                    "--status-interval", "1", "--savings-interval", "1", "--sweep-interval",
                    "1", "--health-port", str(port), "--metrics-port", str(metrics_port), "-v",
                    *extra]
            start = log.tell()
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True)
        replica = Replica(proc, identity, port, metrics_port)
        try:
            if wait_until_serving(replica, log_path, start):
                yield replica
                return
        finally:
            stop_process(proc)
    pytest.fail(f"controller {identity}: every port tried was taken; see {log_path}")


def wait_until_serving(replica: Replica, log_path: Path, start: int) -> bool:
    """True once both servers answer; False if a port was taken since it was chosen (another
    process may bind it in between). A replica that exits fails the test with its log."""
    def outcome() -> str:
        log = log_path.read_bytes()[start:].decode(errors="replace")
        if "cannot listen on port" in log:
            return "port taken"
        if replica.proc.poll() is not None:
            pytest.fail(f"controller {replica.identity} exited {replica.proc.returncode} "
                        f"while starting:\n{log[-4000:]}", pytrace=False)
        serving = (probe(replica.port, "/healthz") is not None
                   and (fetch(replica.metrics_port, "/metrics") or (0,))[0] == 200)
        return "serving" if serving else ""
    found: str = wait_for(outcome, 60,
                          f"controller {replica.identity} to serve /healthz and /metrics")
    return found == "serving"


def status(cluster: ControlPlane, name: str) -> dict[str, Any]:
    found: dict[str, Any] = (get_json(cluster, "mop", name) or {}).get("status") or {}
    return found


def write_state(cluster: ControlPlane, name: str, node_status: dict[str, Any]) -> None:
    """A simulated agent: the node state and its status, as the agent writes them."""
    apply(cluster, {"apiVersion": API, "kind": "MemoryOvercommitNodeState",
                    "metadata": {"name": name}, "spec": {"nodeName": name}})
    cluster.kubectl("patch", "mons", name, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": node_status}))


def simulated_status(policy_obj: dict[str, Any], merged: int, ready: str = "True",
                     reason: str = "Applied") -> dict[str, Any]:
    meta = policy_obj["metadata"]
    return {"policy": {"name": meta["name"], "uid": meta["uid"],
                       "generation": meta["generation"]},
            "conditions": [{"type": "Ready", "status": ready, "reason": reason,
                            "message": f"{reason} on this node"},
                           {"type": "Degraded", "status": "False", "reason": "AsExpected",
                            "message": "no problems"}],
            "engine": "ksm", "saved": {"mergedBytes": merged, "totalBytes": merged}}


def policy_events(cluster: ControlPlane, name: str) -> list[dict[str, Any]]:
    """The Events about one policy (cluster-scoped: they live in ``default``, as the agent's)."""
    found = get_json(cluster, "events", "-n", "default", "--field-selector",
                     f"involvedObject.kind=MemoryOvercommitPolicy,involvedObject.name={name}")
    items: list[dict[str, Any]] = (found or {}).get("items") or []
    return items


def about(events: list[dict[str, Any]], reason: str, text: str = "") -> list[dict[str, Any]]:
    return [e for e in events if e["reason"] == reason and text in e["message"]]


def lease_of(cluster: ControlPlane, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = (get_json(cluster, "lease", "-n", NS, name) or {}).get("spec") or {}
    return spec


def in_force_sums(cluster: ControlPlane, policy_name: str, nodes: list[str]) -> dict[str, int]:
    """What the node states themselves say the policy saves, summed."""
    sums = {"mergedBytes": 0, "balloonedBytes": 0, "compressedBytes": 0, "totalBytes": 0}
    for name in nodes:
        node_status = (get_json(cluster, "mons", name) or {}).get("status") or {}
        if (node_status.get("policy") or {}).get("name") == policy_name:
            for key in sums:
                sums[key] += node_status["saved"][key]
    return sums


def test_policy_status_folds_real_agents(cluster: ControlPlane, controller_kubeconfig: Path,
                                         suffix: str, tmp_path: Path) -> None:
    pool = f"pool-{suffix}"
    names = [f"{n}-{suffix}" for n in ("a", "b", "c")]
    flaky = names[2]
    apply(cluster, *(node(n, {"pool": pool}, {KUBEVIRT_KSM: "true"} if n == flaky else {})
                     for n in names))
    selector = {"matchLabels": {"pool": pool}}
    high, low = f"high-{suffix}", f"low-{suffix}"
    spec: dict[str, Any] = {"priority": 10, "nodeSelector": selector,
                            "ksm": {"enabled": True, "pagesToScan": 1000}}
    apply(cluster, policy(high, spec), policy(low, {"priority": 1, "nodeSelector": selector,
                                                    "ksm": {"enabled": True}}))
    with ExitStack() as stack:
        for i, name in enumerate(names):
            host = FakeKernel(tmp_path / name)
            host.merge(shared=100 * (i + 1), sharing=1000 * (i + 1))  # different savings each
            stack.enter_context(agent_process(cluster, name, host.root, tmp_path / f"st-{name}"))
        solo = stack.enter_context(controller(controller_kubeconfig, tmp_path,
                                              f"solo-{suffix}", f"lease-{suffix}"))

        # two nodes apply the winner; on the third KubeVirt owns KSM: a problem, and Stalled
        wait_for(lambda: status(cluster, high).get("nodes", {}).get("failed") == 1 and
                 status(cluster, high)["nodes"]["applied"] == 2, 60,
                 "the controller to fold three agents' reports")
        folded = status(cluster, high)
        assert folded["nodes"] == {"matched": 3, "applied": 2, "failed": 1, "overridden": 0,
                                   "summary": "2/3"}
        assert [(p["node"], p["reason"]) for p in folded["problems"]] == \
            [(flaky, "KsmManagedElsewhere")]
        assert KUBEVIRT_KSM in folded["problems"][0]["message"]
        assert (condition(folded, "Ready")["status"], condition(folded, "Stalled")["status"],
                condition(folded, "Reconciling")["status"]) == ("False", "True", "False")
        assert kstatus.compute(get_json(cluster, "mop", high)) == kstatus.FAILED
        expected = in_force_sums(cluster, high, names)
        assert expected["mergedBytes"] > 0
        assert {k: folded["saved"][k] for k in expected} == expected
        # the losing policy's status is written after the winner's: wait for it too
        wait_for(lambda: status(cluster, low).get("nodes", {}).get("overridden") == 3, 30,
                 "the overridden policy's status")
        lost = status(cluster, low)
        assert lost["nodes"] == {"matched": 3, "applied": 0, "failed": 0, "overridden": 3,
                                 "summary": "0/3"}
        assert (condition(lost, "Ready")["status"], condition(lost, "Ready")["reason"]) == \
            ("True", "Overridden")

        listing = cluster.kubectl("get", "overcommit").stdout
        assert all(name in listing for name in [high, low, *names]), listing
        assert "NODES" in listing and "2/3" in listing
        wide = cluster.kubectl("get", "mop", high, "-o", "wide").stdout
        assert "FAILED" in wide and "KsmManagedElsewhere" in wide, wide

        # the failure as Events on the policy, from the controller's own ServiceAccount
        wait_for(lambda: about(policy_events(cluster, high), "PolicyStalled") and
                 about(policy_events(cluster, high), "NodeProblem", flaky), 30,
                 "the controller's PolicyStalled and NodeProblem Events")
        events = policy_events(cluster, high)
        problem = about(events, "NodeProblem", flaky)
        assert len(problem) == 1 and len(about(events, "PolicyStalled")) == 1, events
        assert problem[0]["message"].startswith(f"{flaky}: KsmManagedElsewhere: ")
        assert problem[0]["type"] == "Warning"
        assert problem[0]["involvedObject"] == {
            "apiVersion": API, "kind": "MemoryOvercommitPolicy", "name": high,
            "uid": get_json(cluster, "mop", high)["metadata"]["uid"]}
        assert problem[0]["source"]["component"] == "memory-overcommit-controller"
        assert not about(events, "NodeProblem", names[0]) and \
            not about(events, "NodeProblem", names[1])
        # counted once the POST has returned, a moment after the API server has the Event
        wait_for(lambda: (solo.metric('overcommit_controller_events_total{reason="NodeProblem",'
                                      'type="Warning"}') or 0) >= 1, 10, "the Event counted")

        # nothing changes: nothing is written and nothing posted (three status intervals)
        versions = [get_json(cluster, "mop", p)["metadata"]["resourceVersion"]
                    for p in (high, low)]
        posted = sorted(e["metadata"]["name"] for p in (high, low)
                        for e in policy_events(cluster, p))
        time.sleep(3)
        assert [get_json(cluster, "mop", p)["metadata"]["resourceVersion"]
                for p in (high, low)] == versions
        assert sorted(e["metadata"]["name"] for p in (high, low)
                      for e in policy_events(cluster, p)) == posted

        # the node is fixed: its problem clears and the policy is Ready
        cluster.kubectl("annotate", "node", flaky, f"{KUBEVIRT_KSM}-")
        wait_for(lambda: condition(status(cluster, high), "Ready").get("status") == "True", 60,
                 "the fixed node to clear the problem")
        fixed = status(cluster, high)
        assert fixed["problems"] == [] and fixed["nodes"]["applied"] == 3
        assert condition(fixed, "Stalled")["status"] == "False"
        assert kstatus.compute(get_json(cluster, "mop", high)) == kstatus.CURRENT
        wait_for(lambda: about(policy_events(cluster, high), "NodeRecovered", flaky), 30,
                 "the NodeRecovered Event")
        events = policy_events(cluster, high)
        assert len(about(events, "NodeRecovered", flaky)) == 1 and \
            about(events, "PolicyReady", "Applied: generation 1 applied on 3 of 3"), events
        assert len(about(events, "NodeProblem", flaky)) == 1  # still the one from before

        # a spec change: observedGeneration follows, on the status and on every condition
        spec["ksm"]["pagesToScan"] = 2000
        apply(cluster, policy(high, spec))
        wait_for(lambda: status(cluster, high).get("observedGeneration") == 2 and
                 condition(status(cluster, high), "Ready").get("status") == "True", 60,
                 "the status of generation 2")
        assert {c["observedGeneration"] for c in status(cluster, high)["conditions"]} == {2}
        assert status(cluster, high)["nodes"]["applied"] == 3
    cluster.kubectl("delete", "mop", high, low)


def test_killing_the_leader_hands_over_to_the_standby(cluster: ControlPlane,
                                                     controller_kubeconfig: Path, suffix: str,
                                                     tmp_path: Path) -> None:
    nodes = [f"x{i}-{suffix}" for i in (1, 2)]
    apply(cluster, *(node(n, {"pool": suffix}) for n in nodes))
    name, lease = f"ha-{suffix}", f"lease-{suffix}"
    apply(cluster, policy(name, {"nodeSelector": {"matchLabels": {"pool": suffix}},
                                 "ksm": {"enabled": True}}))
    obj = get_json(cluster, "mop", name)
    for i, n in enumerate(nodes):
        write_state(cluster, n, simulated_status(obj, merged=4096 * (i + 1)))
    with controller(controller_kubeconfig, tmp_path, f"one-{suffix}", lease) as one, \
            controller(controller_kubeconfig, tmp_path, f"two-{suffix}", lease) as two:
        wait_for(lambda: status(cluster, name).get("nodes", {}).get("applied") == 2, 30,
                 "the first status")
        assert status(cluster, name)["saved"]["mergedBytes"] == 3 * 4096
        replicas = {one.identity: one, two.identity: two}
        leader = replicas[lease_of(cluster, lease)["holderIdentity"]]
        standby = two if leader is one else one
        assert leader.health()["leader"] and leader.health()["statusWrites"] >= 1
        assert not standby.health()["leader"] and standby.health()["statusWrites"] == 0
        assert (leader.metric("overcommit_controller_leader"),
                standby.metric("overcommit_controller_leader")) == (1, 0)

        leader.proc.send_signal(signal.SIGKILL)  # no goodbye: the lease must expire
        leader.proc.wait()
        write_state(cluster, nodes[1], simulated_status(obj, merged=0, ready="False",
                                                         reason="ApplyFailed"))
        wait_for(lambda: status(cluster, name).get("nodes", {}).get("failed") == 1,
                 LEASE_SECONDS + 20, "the standby to take over and fold the change")
        taken = lease_of(cluster, lease)
        assert taken["holderIdentity"] == standby.identity and taken["leaseTransitions"] >= 1
        assert standby.health()["leader"] and standby.health()["statusWrites"] >= 1
        assert status(cluster, name)["problems"][0]["reason"] == "ApplyFailed"
        assert standby.metric("overcommit_controller_leader") == 1
        # the gauges are published after the status write the test has just seen
        wait_for(lambda: standby.metric(
            f'overcommit_policy_nodes{{policy="{name}",state="failed"}}') == 1, 10,
            "the failed node in the standby's gauges")
        assert (standby.metric('overcommit_controller_status_writes_total{result="ok"}')
                or 0) >= 1

        standby.proc.terminate()  # a clean exit gives the lease back
        assert standby.proc.wait(timeout=20) == 0
        assert lease_of(cluster, lease).get("holderIdentity") is None
    cluster.kubectl("delete", "mop", name)


def test_node_states_of_deleted_nodes_are_removed(cluster: ControlPlane,
                                                  controller_kubeconfig: Path, suffix: str,
                                                  tmp_path: Path) -> None:
    kept, doomed, ghost = f"kept-{suffix}", f"doomed-{suffix}", f"ghost-{suffix}"
    apply(cluster, node(kept), node(doomed))
    for name in (kept, doomed, ghost):  # ghost: a stray whose node never existed
        write_state(cluster, name, {"engine": "ksm"})
    with controller(controller_kubeconfig, tmp_path, f"sweeper-{suffix}", f"lease-{suffix}"):
        wait_for(lambda: get_json(cluster, "mons", ghost) is None, 30, "the stray to be swept")
        assert get_json(cluster, "mons", doomed) is not None  # its node still exists
        cluster.kubectl("delete", "node", doomed)
        wait_for(lambda: get_json(cluster, "mons", doomed) is None, 30,
                 "the deleted node's state to go")
        assert get_json(cluster, "mons", kept) is not None


def test_the_deployment_is_accepted_by_the_api_server(cluster: ControlPlane) -> None:
    manifest = REPO / "deploy/manifests/controller-deployment.yaml"
    result = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", str(manifest))
    assert "deployment.apps/overcommit-controller serverside-applied" in result.stdout, \
        result.stdout
