"""The operator as users deploy it, on a real kubelet node: the shipped image, DaemonSet and
Deployment, installed as the README's Quick start says, running against this machine's real
``/sys/kernel/mm/ksm`` and ``/proc/sys/vm`` through the shipped hostPath mounts and
securityContext. Rollout through the kubelet's probes, a policy applied and restored, metrics
through the Services, a rolling update, a killed container, a drain, a deleted Node and the
documented uninstall.

Needs root, the node's parts and docker; a missing part FAILS the test with what to install.
The tests share one installation and run in order (each leaves the operator installed and no
policy behind, but the last, which uninstalls).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from overcommit.localcluster.node import LocalCluster
from testkit.cluster import (
    AGENT,
    CONTROLLER,
    NAMESPACE,
    Installation,
    host_file,
    policy,
    require_parts,
)
from testkit.waiting import say, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.root]

KSM = "sys/kernel/mm/ksm"
WATCHED = (f"{KSM}/run", f"{KSM}/pages_to_scan", f"{KSM}/sleep_millisecs",
           "proc/sys/vm/swappiness")
CAP_DAC_OVERRIDE = 1 << 1  # the one capability the agent's manifest adds
SPEC = {"ksm": {"enabled": True, "pagesToScan": 1234, "sleepMillisecs": 37},
        "swap": {"swappiness": 41}}
WANTED = {f"{KSM}/run": "1", f"{KSM}/pages_to_scan": "1234", f"{KSM}/sleep_millisecs": "37",
          "proc/sys/vm/swappiness": "41"}


def host() -> dict[str, str]:
    return {path: host_file(path) for path in WATCHED}


@pytest.fixture(scope="module")
def before() -> dict[str, str]:
    """The host's settings before the operator ever ran here."""
    require_parts()
    return host()


@pytest.fixture(scope="module")
def op(pytestconfig: pytest.Config, before: dict[str, str]) -> Iterator[Installation]:
    started = time.monotonic()
    with LocalCluster() as cluster:
        say(pytestconfig, f"\ncluster up in {time.monotonic() - started:.1f} s")
        install = Installation(cluster)
        try:
            mark = time.monotonic()
            install.build_and_load()
            say(pytestconfig, f"image {install.image} built and loaded in "
                              f"{time.monotonic() - mark:.1f} s")
            mark = time.monotonic()
            install.install()
            say(pytestconfig, f"installed and rolled out in {time.monotonic() - mark:.1f} s")
            yield install
        finally:
            if install.demo.installed:  # a test failed midway: still leave the host as found
                install.kubectl("delete", "mop", "--all", "--wait=true", check=False)
                wait_released(install, timeout=60, fail=False)
                install.uninstall()
            install.close()
    install.demo.forget_state_dir()
    assert not install.work.exists(), "the installation's working directory was left behind"
    assert host() == before, "the host's settings after the cluster stopped"


def wait_released(install: Installation, timeout: float = 60, fail: bool = True) -> bool:
    def released() -> bool:
        status = install.node_state()
        return bool(status) and not status.get("policy") and not status.get("originals")

    if fail:
        return bool(wait_for(released, timeout, "the agent to restore every original"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not released():
        time.sleep(0.5)
    return released()


def apply_policy(op: Installation, name: str, spec: dict[str, Any] | None = None) -> None:
    op.apply(policy(name, spec or SPEC))


def applied(op: Installation, wanted: dict[str, str]) -> bool:
    return host() == wanted and op.ready_reason() == "Applied"


def pod_status(op: Installation, pod: str) -> str:
    """The pod's own /proc/1/status (its first process is the agent or the controller)."""
    return op.exec(pod, "cat", "/proc/1/status")


def status_field(text: str, name: str) -> str:
    match = re.search(rf"^{name}:\s*(\S+)", text, re.MULTILINE)
    assert match, f"no {name} in /proc/1/status"
    return match.group(1)


# -- rollout and confinement -------------------------------------------------------------------


def test_the_pods_roll_out_and_are_ready_through_the_kubelet_s_probes(op: Installation) -> None:
    for selector, count in ((AGENT, 1), (CONTROLLER, 2)):
        pods = op.pods(selector)
        assert len(pods) == count
        for pod in pods:
            [container] = pod["spec"]["containers"]
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
            assert ready["Ready"] == "True", pod["metadata"]["name"]
            assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    # The agent is Ready only once /readyz said a cycle completed: its node state exists.
    assert op.node_state().get("conditions")


def test_the_agent_runs_with_exactly_the_manifest_s_capabilities(op: Installation) -> None:
    agent = pod_status(op, op.agent_pod()["metadata"]["name"])
    assert int(status_field(agent, "CapEff"), 16) == CAP_DAC_OVERRIDE
    assert int(status_field(agent, "CapPrm"), 16) == CAP_DAC_OVERRIDE
    assert status_field(agent, "NoNewPrivs") == "1"  # allowPrivilegeEscalation: false
    assert status_field(agent, "Seccomp") == "2"  # seccompProfile: RuntimeDefault (filter)
    assert status_field(agent, "Uid").split()[0] == "0"
    for pod in op.pods(CONTROLLER):
        controller = pod_status(op, pod["metadata"]["name"])
        assert int(status_field(controller, "CapEff"), 16) == 0
        assert status_field(controller, "Uid").split()[0] == "65532"
    # The agent's root filesystem is read-only; its state dir is the host's.
    name = op.agent_pod()["metadata"]["name"]
    proc = op.cluster.kubectl("exec", "-n", NAMESPACE, name, "--", "touch", "/opt/x",
                              check=False)
    assert proc.returncode != 0 and "Read-only file system" in proc.stderr


# -- the real host ---------------------------------------------------------------------------


def test_a_policy_reaches_the_real_host_and_is_restored_when_deleted(
        op: Installation, before: dict[str, str]) -> None:
    apply_policy(op, "e2e-real-host")
    wait_for(lambda: applied(op, WANTED), 90, "the agent pod to apply the policy to the host")
    assert op.node_state()["originals"] == {path: before[path] for path in WATCHED}
    op.kubectl("delete", "mop", "e2e-real-host")
    wait_released(op)
    assert host() == before


def scrape(op: Installation, address: str, port: int) -> str:
    """GET /metrics from inside the node's network namespace (where pod IPs route)."""
    return op.cluster.node_exec(
        "python3", "-c", "import sys, urllib.request as u; sys.stdout.write(u.urlopen("
        f"'http://{address}:{port}/metrics', timeout=10).read().decode())").stdout


def endpoints(op: Installation, service: str) -> list[tuple[str, int]]:
    slices = op.get("endpointslices", "-n", NAMESPACE, "-l",
                    f"kubernetes.io/service-name={service}")
    out = []
    for item in (slices or {}).get("items") or []:
        [port] = [p["port"] for p in item.get("ports") or [] if p.get("name") == "metrics"]
        out += [(address, port) for endpoint in item.get("endpoints") or []
                for address in endpoint["addresses"]]
    return out


def test_metrics_are_scraped_through_the_services_endpoints(op: Installation) -> None:
    agents = wait_for(lambda: endpoints(op, "overcommit-agent-metrics"), 30,
                      "the agent metrics Service's endpoints")
    assert len(agents) == 1
    text = scrape(op, *agents[0])
    assert f'overcommit_agent_info{{node="{op.node}"' in text
    assert re.search(r'^overcommit_engine_present\{engine="ksm"\} 1', text, re.MULTILINE)
    controllers = wait_for(lambda: len(endpoints(op, "overcommit-controller-metrics")) == 2
                           and endpoints(op, "overcommit-controller-metrics"), 30,
                           "the controller metrics Service's endpoints")
    leaders = [re.search(r"^overcommit_controller_leader (\S+)", scrape(op, *ep), re.MULTILINE)
               for ep in controllers]
    assert sorted(float(m.group(1)) for m in leaders if m) == [0.0, 1.0]  # one leads


# -- life cycle --------------------------------------------------------------------------------


def test_a_rolling_update_restores_nothing_and_loses_no_original(
        op: Installation, before: dict[str, str]) -> None:
    apply_policy(op, "e2e-update")
    wait_for(lambda: applied(op, WANTED), 90, "the policy to be applied")
    originals = op.node_state()["originals"]
    old = op.agent_pod()["metadata"]["uid"]
    restored_before = len(op.events("OriginalsRestored"))
    new_image = op.build_and_load(tag="e2e-next")
    op.install(tag="e2e-next")
    new = wait_for(lambda: (pod := op.agent_pod())["metadata"]["uid"] != old and pod, 120,
                   "the new agent pod")
    assert new["spec"]["containers"][0]["image"] == new_image
    wait_for(lambda: applied(op, WANTED) and op.node_state().get("originals") == originals, 60,
             "the new agent to report the policy with the same originals")
    assert len(op.events("OriginalsRestored")) == restored_before  # nothing was put back
    op.kubectl("delete", "mop", "e2e-update")
    wait_released(op)
    assert host() == before


def test_the_agent_killed_by_the_runtime_mid_cycle_converges(
        op: Installation, before: dict[str, str]) -> None:
    apply_policy(op, "e2e-kill")
    wait_for(lambda: applied(op, WANTED), 90, "the policy to be applied")
    originals = op.node_state()["originals"]
    pod = op.agent_pod()
    container = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    changed = {**WANTED, f"{KSM}/pages_to_scan": "2222"}
    apply_policy(op, "e2e-kill", {**SPEC, "ksm": {**SPEC["ksm"], "pagesToScan": 2222}})
    # The change's cycle is under way (it follows the policy's watch event at once).
    op.cluster.ctr("task", "kill", "--signal", "SIGKILL", container)
    wait_for(lambda: op.agent_pod()["status"]["containerStatuses"][0]["restartCount"] >= 1, 60,
             "the kubelet to restart the killed agent")
    wait_for(lambda: applied(op, changed), 90, "the restarted agent to converge")
    # Its own 1234 never became an original: the host's own values are still what is recorded.
    assert op.node_state()["originals"] == originals
    op.kubectl("delete", "mop", "e2e-kill")
    wait_released(op)
    assert host() == before


def evict(op: Installation, pod: dict[str, Any]) -> None:
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": pod["metadata"]["name"], "namespace": NAMESPACE}}
    op.kubectl("create", "--raw",
               f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}/eviction",
               "-f", "-", input=json.dumps(eviction))


def test_a_drain_leaves_the_host_as_the_policy_set_it_and_the_next_agent_adopts_it(
        op: Installation, before: dict[str, str]) -> None:
    apply_policy(op, "e2e-drain")
    wait_for(lambda: applied(op, WANTED), 90, "the policy to be applied")
    originals = op.node_state()["originals"]
    applied_before = len(op.events("SettingsApplied"))
    op.kubectl("cordon", op.node)
    try:
        old = op.agent_pod()
        evict(op, old)
        wait_for(lambda: not [p for p in op.pods(AGENT)
                              if p["metadata"]["uid"] == old["metadata"]["uid"]], 60,
                 "the evicted agent to be gone")
        assert host() == WANTED  # an agent that leaves puts nothing back
        # DaemonSet pods tolerate a cordoned node: the next agent comes, and adopts the host.
        wait_for(lambda: [p for p in op.pods(AGENT) if p["status"].get("phase") == "Running"
                          and p["metadata"]["uid"] != old["metadata"]["uid"]], 90,
                 "the next agent")
        op.demo.rolled_out()
        wait_for(lambda: applied(op, WANTED) and op.node_state()["originals"] == originals, 60,
                 "the next agent to report the policy applied with the same originals")
        assert len(op.events("SettingsApplied")) == applied_before  # it had nothing to write
    finally:
        op.kubectl("uncordon", op.node)
    op.kubectl("delete", "mop", "e2e-drain")
    wait_released(op)
    assert host() == before


def test_a_deleted_node_takes_its_node_state_along(op: Installation) -> None:
    """The agent's node state is owned by its Node, so the cluster's garbage collector deletes
    it with the Node. Deleting this node itself would leave the single kubelet unregistered
    (it registers at start only), so a second Node gets a state shaped exactly like the
    agent's own."""
    own = op.get("mons", op.node)
    owner = own["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Node", op.node, op.get("node", op.node)["metadata"]["uid"])
    ghost = "e2e-gone-node"
    op.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": ghost}})
    uid = op.get("node", ghost)["metadata"]["uid"]
    state = {"apiVersion": own["apiVersion"], "kind": own["kind"],
             "metadata": {"name": ghost, "labels": own["metadata"].get("labels", {}),
                          "ownerReferences": [{**owner, "name": ghost, "uid": uid}]},
             "spec": {"nodeName": ghost}}
    op.apply(state)
    assert op.get("mons", ghost) is not None
    op.kubectl("delete", "node", ghost, "--wait=true")
    wait_for(lambda: op.get("mons", ghost) is None, 60,
             "the garbage collector to delete the state of the deleted Node")
    assert op.get("mons", op.node) is not None  # the live node's state is untouched


def test_the_documented_uninstall_restores_every_original(
        op: Installation, before: dict[str, str]) -> None:
    """docs/operations.md, "Uninstall (and restore every node)", step by step."""
    apply_policy(op, "e2e-uninstall")
    wait_for(lambda: applied(op, WANTED), 90, "the policy to be applied")
    op.kubectl("delete", "mop", "--all")
    columns = op.kubectl("get", "mons", "-o", "custom-columns=NODE:.metadata.name,READY:.status."
                         "conditions[?(@.type==\"Ready\")].reason,POLICY:.status.policy.name,"
                         "ORIGINALS:.status.originals")
    assert "NODE" in columns
    wait_released(op)
    op.uninstall()
    op.demo.installed = False
    wait_for(lambda: not op.pods(AGENT) and not op.pods(CONTROLLER), 90,
             "the operator's pods to be gone")
    assert host() == before
    # The CRDs went with the overlay (and every policy and node state with them).
    assert op.get("crd", "memoryovercommitpolicies.memoryovercommit.io") is None
