"""The agent against a real kube-apiserver: apply, report, follow changes, restore, survive."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from overcommit.api.status import find_condition as condition
from overcommit.localcluster import ControlPlane
from overcommit.localcluster.ports import free_port
from testkit.fakes.kernel import FakeKernel
from testkit.kubevirt import CRDS, VMI_CRD
from testkit.waiting import wait_for
from tests.integration.kube import (
    agent_log,
    agent_process,
    apply,
    get_json,
    install_crds,
    node,
    node_state,
    policy,
    probe,
)

KSM = "sys/kernel/mm/ksm"
HOOKS = Path(__file__).parent / "hooks"


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> ControlPlane:
    install_crds(control_plane)
    return control_plane


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:6]
    yield {"node": f"node-{suffix}", "policy": f"pol-{suffix}", "role": f"virt-{suffix}"}


@pytest.fixture
def host(tmp_path: Path) -> FakeKernel:
    return FakeKernel(tmp_path / "host")


def sysfs(host: FakeKernel, name: str) -> str:
    return host.get(f"{KSM}/{name}")


def status_of(cluster: ControlPlane, name: str) -> dict[str, Any]:
    state = node_state(cluster, name) or {}
    status: dict[str, Any] = state.get("status") or {}
    return status


def test_agent_applies_reports_follows_and_restores(cluster: ControlPlane, host: FakeKernel,
                                                    names: dict[str, str],
                                                    tmp_path: Path) -> None:
    n, p, role = names["node"], names["policy"], names["role"]
    apply(cluster, node(n, {"role": role}))
    spec: dict[str, Any] = {"nodeSelector": {"matchLabels": {"role": role}},
                            "ksm": {"enabled": True, "pagesToScan": 1000, "sleepMillisecs": 15}}
    apply(cluster, policy(p, spec))
    state_dir = tmp_path / "state"
    with agent_process(cluster, n, host.root, state_dir):
        wait_for(lambda: sysfs(host, "pages_to_scan") == "1000", 30, "the policy to apply")
        wait_for(lambda: (status_of(cluster, n).get("policy") or {}).get("name") == p, 30,
                 "the node state to name the policy")
        state = node_state(cluster, n)
        assert state is not None
        status = state["status"]
        assert status["settings"][f"{KSM}/pages_to_scan"] == "1000"
        assert status["originals"][f"{KSM}/pages_to_scan"] == "100"
        assert condition(status, "Ready")["status"] == "True"
        assert status["engine"] == "ksm"
        assert {e["name"] for e in status["engines"]} >= {"ksm", "zswap", "meminfo"}
        owner = state["metadata"]["ownerReferences"][0]
        node_uid = get_json(cluster, "node", n)["metadata"]["uid"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("Node", n, node_uid)

        # change the policy: the change lands and the generation is reported
        spec["ksm"]["pagesToScan"] = 2000
        apply(cluster, policy(p, spec))
        wait_for(lambda: sysfs(host, "pages_to_scan") == "2000", 30, "the changed policy")
        wait_for(lambda: status_of(cluster, n)["policy"]["generation"] == 2, 30,
                 "generation 2 in the node state")

        # the node stops matching: originals come back
        apply(cluster, node(n, {"role": "something-else"}))
        # run is written last in a cycle: wait for it, then the rest is in place too
        wait_for(lambda: sysfs(host, "run") == "0", 30, "originals after relabel")
        assert (sysfs(host, "pages_to_scan"), sysfs(host, "sleep_millisecs")) == ("100", "20")
        wait_for(lambda: condition(status_of(cluster, n), "Ready").get("reason") == "NoPolicy",
                 30, "the NoPolicy condition")
        assert status_of(cluster, n)["originals"] == {}

        # matching again, then the policy is deleted: originals come back again
        apply(cluster, node(n, {"role": role}))
        wait_for(lambda: sysfs(host, "pages_to_scan") == "2000", 30, "re-apply after relabel")
        cluster.kubectl("delete", "mop", p)
        wait_for(lambda: sysfs(host, "run") == "0", 30, "originals after delete")
        assert sysfs(host, "pages_to_scan") == "100"
        wait_for(lambda: json.loads((state_dir / "originals.json").read_text())["originals"]
                 == {}, 30, "the agent to forget the restored originals")

    events = get_json(cluster, "events", "-n", "default", "--field-selector",
                      f"involvedObject.name={n}")
    reasons = {e["reason"] for e in events["items"]}
    assert {"SettingsApplied", "OriginalsRestored"} <= reasons


def test_a_policy_change_is_applied_at_once_and_reported_within_its_spread(
        cluster: ControlPlane, host: FakeKernel, names: dict[str, str], tmp_path: Path) -> None:
    """The controller counted 1,000 nodes: at 100 writes/s the agent reports a policy change
    within 10 s of it, at a random moment drawn once, while the host changes at once."""
    n, p, role = names["node"], names["policy"], names["role"]
    apply(cluster, node(n, {"role": role}))
    spec: dict[str, Any] = {"nodeSelector": {"matchLabels": {"role": role}},
                            "ksm": {"enabled": True, "pagesToScan": 1000}}
    apply(cluster, policy(p, spec))
    # what the controller would count (no controller runs here, so it stays)
    cluster.kubectl("patch", "mop", p, "--subresource=status", "--type=merge", "-p",
                    json.dumps({"status": {"nodes": {"matched": 1000}}}))
    state_dir = tmp_path / "state"
    # --interval caps the spread: 15 s, so the 10 s of 1,000 nodes at 100 writes/s hold
    with agent_process(cluster, n, host.root, state_dir, interval=15.0,
                       extra_args=["--policy-change-rate", "100"]):
        wait_for(lambda: (status_of(cluster, n).get("policy") or {}).get("generation") == 1,
                 30, "generation 1 in the node state (the first report: at once)")
        spec["ksm"]["pagesToScan"] = 2000
        apply(cluster, policy(p, spec))
        wait_for(lambda: sysfs(host, "pages_to_scan") == "2000", 30, "the changed policy")
        applied = time.monotonic()
        wait_for(lambda: status_of(cluster, n)["policy"]["generation"] == 2, 30,
                 "generation 2 in the node state")
        reported = time.monotonic() - applied
    said = re.search(r"reporting the change of the policy in force in ([\d.]+)s \(reports "
                     r"spread over 10\.0s: 1000 nodes at 100 writes/s\)",
                     agent_log(state_dir, n))
    assert said, "the agent did not say it held the report back"
    held = float(said.group(1))
    # reported when it said, as far as polling kubectl and sysfs can tell (1.5 s early, 3 s late)
    assert held - 1.5 <= reported <= held + 3.0, (held, reported)


def test_overlapping_policies_name_the_winner(cluster: ControlPlane, host: FakeKernel,
                                              names: dict[str, str], tmp_path: Path) -> None:
    n, role = names["node"], names["role"]
    apply(cluster, node(n, {"role": role}))
    selector = {"matchLabels": {"role": role}}
    low, high = f"{names['policy']}-low", f"{names['policy']}-high"
    apply(cluster, policy(low, {"priority": 1, "nodeSelector": selector,
                                "ksm": {"enabled": True, "pagesToScan": 300}}),
          policy(high, {"priority": 9, "nodeSelector": selector,
                        "ksm": {"enabled": True, "pagesToScan": 900}}))
    with agent_process(cluster, n, host.root, tmp_path / "state"):
        wait_for(lambda: sysfs(host, "pages_to_scan") == "900", 30, "the winner to apply")
        wait_for(lambda: status_of(cluster, n).get("overridden"), 30, "losers in the status")
        status = status_of(cluster, n)
        assert status["policy"]["name"] == high
        assert status["overridden"] == [{"name": low, "reason": f"priority 1 is lower than "
                                                                f"{high}'s 9"}]
    cluster.kubectl("delete", "mop", low, high)


def test_killed_mid_change_converges_with_originals_intact(cluster: ControlPlane,
                                                          host: FakeKernel,
                                                          names: dict[str, str],
                                                          tmp_path: Path) -> None:
    n, p = names["node"], names["policy"]
    apply(cluster, node(n, {}))
    apply(cluster, policy(p, {"nodeSelector": {"matchLabels": {"kubernetes.io/hostname": n}},
                              "ksm": {"enabled": True, "pagesToScan": 1111,
                                      "sleepMillisecs": 33}}))
    apply(cluster, node(n, {"kubernetes.io/hostname": n}))
    state_dir = tmp_path / "state"
    marker = tmp_path / "blocked"
    hook_env = {"PYTHONPATH": f"{HOOKS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                "OVERCOMMIT_TEST_BLOCK_WRITE": "/run",
                "OVERCOMMIT_TEST_BLOCK_MARKER": str(marker)}
    with agent_process(cluster, n, host.root, state_dir, env=hook_env) as agent:
        wait_for(marker.exists, 30, "the agent to reach the write of run")
        # pages_to_scan and sleep are written, run is not: the node is half changed
        assert sysfs(host, "pages_to_scan") == "1111" and sysfs(host, "run") == "0"
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    originals = json.loads((state_dir / "originals.json").read_text())["originals"]
    assert originals == {f"{KSM}/pages_to_scan": "100", f"{KSM}/sleep_millisecs": "20",
                         f"{KSM}/run": "0"}
    with agent_process(cluster, n, host.root, state_dir):
        wait_for(lambda: sysfs(host, "run") == "1", 30, "the restarted agent to converge")
        wait_for(lambda: (status_of(cluster, n).get("originals") or {}) == originals, 30,
                 "the node state to report the true originals")
        cluster.kubectl("delete", "mop", p)
        wait_for(lambda: sysfs(host, "run") == "0", 30, "restore after delete")
    assert (sysfs(host, "pages_to_scan"), sysfs(host, "sleep_millisecs")) == ("100", "20")


def test_agent_survives_an_api_server_restart(cluster: ControlPlane, host: FakeKernel,
                                              names: dict[str, str], tmp_path: Path) -> None:
    n, p = names["node"], names["policy"]
    apply(cluster, node(n, {"pool": n}))
    spec: dict[str, Any] = {"nodeSelector": {"matchLabels": {"pool": n}},
                            "ksm": {"enabled": True, "pagesToScan": 500}}
    apply(cluster, policy(p, spec))
    with agent_process(cluster, n, host.root, tmp_path / "state") as agent:
        wait_for(lambda: sysfs(host, "pages_to_scan") == "500", 30, "the first apply")
        wait_for(lambda: node_state(cluster, n) is not None, 30, "the node state")
        before = node_state(cluster, n)
        assert before is not None
        cluster.restart_apiserver()
        spec["ksm"]["pagesToScan"] = 600
        apply(cluster, policy(p, spec))
        wait_for(lambda: sysfs(host, "pages_to_scan") == "600", 60,
                 "a policy change after the API server restarted")
        wait_for(lambda: status_of(cluster, n).get("policy", {}).get("generation") == 2, 30,
                 "the node state to be updated after the restart")
        assert agent.poll() is None
    # The same object all along (not deleted and made again), and the only one for the node.
    after = node_state(cluster, n)
    assert after is not None and after["metadata"]["uid"] == before["metadata"]["uid"]
    states = get_json(cluster, "mons")["items"]
    assert [s["metadata"]["name"] for s in states if s["spec"]["nodeName"] == n] == [n]
    cluster.kubectl("delete", "mop", p)


def events_about(cluster: ControlPlane, name: str, reason: str) -> list[dict[str, Any]]:
    found = get_json(cluster, "events", "-n", "default", "--field-selector",
                     f"involvedObject.name={name},reason={reason}")
    items: list[dict[str, Any]] = found["items"]
    return items


def test_an_event_meant_while_the_api_server_is_down_is_posted_when_it_is_back(
        cluster: ControlPlane, host: FakeKernel, names: dict[str, str], tmp_path: Path) -> None:
    """The agent puts back a drifted setting during an API outage: the Event of the change
    cannot be posted and waits in the agent's outbox. When the API server is back it is posted
    once, stamped with the moment the change was made."""
    n, p = names["node"], names["policy"]
    apply(cluster, node(n, {"pool": n}))
    apply(cluster, policy(p, {"nodeSelector": {"matchLabels": {"pool": n}},
                              "ksm": {"enabled": True, "pagesToScan": 700}}))
    with agent_process(cluster, n, host.root, tmp_path / "state", interval=0.5,
                       status_interval=0.5, extra_args=["--no-libvirt"]):
        wait_for(lambda: status_of(cluster, n).get("settings", {}).get(
            f"{KSM}/pages_to_scan") == "700", 30, "the policy applied and reported")
        cluster.stop_apiserver()
        try:
            host.set(f"{KSM}/pages_to_scan", "123")  # drift, while nobody can report it
            wait_for(lambda: sysfs(host, "pages_to_scan") == "700", 30,
                     "the drift put back during the outage")
            fixed_at = time.time()
        finally:
            cluster.start_apiserver()
        assert time.time() - fixed_at > 1.5  # an API server takes seconds to start
        wait_for(lambda: any("123->700" in e["message"]
                             for e in events_about(cluster, n, "SettingsApplied")), 60,
                 "the Event of the change made during the outage")
        fixed = [e for e in events_about(cluster, n, "SettingsApplied")
                 if "123->700" in e["message"]]
        assert len(fixed) == 1, fixed  # posted once
        stamp = datetime.fromisoformat(fixed[0]["firstTimestamp"].replace("Z", "+00:00"))
        assert stamp.timestamp() <= fixed_at, "stamped when it was posted, not when it happened"
    # It did wait: its first post failed (the status itself had nothing new to write).
    assert "could not post an Event" in agent_log(tmp_path / "state", n)
    cluster.kubectl("delete", "mop", p)


def cycles(port: int) -> int:
    answer = probe(port, "/healthz")
    return int(answer[1]["cyclesCompleted"]) if answer else -1


def test_agent_puts_back_host_drift_on_its_timer_and_stays_quiet(
        cluster: ControlPlane, host: FakeKernel, names: dict[str, str], tmp_path: Path) -> None:
    """No API event at all: the timer alone finds a setting someone changed on the host and
    writes the policy's value back (the drift is not taken for an original). In the steady
    state between, the node state is not written at all."""
    n, p = names["node"], names["policy"]
    apply(cluster, node(n, {"pool": n}))
    apply(cluster, policy(p, {"nodeSelector": {"matchLabels": {"pool": n}},
                              "ksm": {"enabled": True, "pagesToScan": 700}}))
    port = free_port()
    with agent_process(cluster, n, host.root, tmp_path / "state", interval=0.5,
                       status_interval=0.5,
                       extra_args=["--health-port", str(port), "--no-libvirt"]):
        wait_for(lambda: status_of(cluster, n).get("settings", {}).get(
            f"{KSM}/pages_to_scan") == "700", 30, "the policy applied and reported")
        wait_for(lambda: cycles(port) >= 1, 30, "the probes")
        state = node_state(cluster, n)
        assert state is not None
        version = state["metadata"]["resourceVersion"]
        start = cycles(port)
        wait_for(lambda: cycles(port) >= start + 6, 30, "six more timer cycles")
        state = node_state(cluster, n)
        assert state is not None
        assert state["metadata"]["resourceVersion"] == version, \
            "the node state was written although nothing changed"

        host.set(f"{KSM}/pages_to_scan", "123")  # an admin, or another tool, on the host
        wait_for(lambda: sysfs(host, "pages_to_scan") == "700", 30, "the timer to fix drift")
        assert status_of(cluster, n)["originals"][f"{KSM}/pages_to_scan"] == "100"
    cluster.kubectl("delete", "mop", p)


def test_policy_deleted_while_the_agent_is_down_is_restored_on_restart(
        cluster: ControlPlane, host: FakeKernel, names: dict[str, str], tmp_path: Path) -> None:
    n, p = names["node"], names["policy"]
    state_dir = tmp_path / "state"
    apply(cluster, node(n, {"pool": n}))
    apply(cluster, policy(p, {"nodeSelector": {"matchLabels": {"pool": n}},
                              "ksm": {"enabled": True, "pagesToScan": 800}}))
    with agent_process(cluster, n, host.root, state_dir):
        wait_for(lambda: sysfs(host, "run") == "1", 30, "the policy to apply")
    # Stopped (a DaemonSet rollout, a crash): it leaves the host as it is...
    assert (sysfs(host, "pages_to_scan"), sysfs(host, "run")) == ("800", "1")
    cluster.kubectl("delete", "mop", p)  # ...and the policy goes while nobody watches
    with agent_process(cluster, n, host.root, state_dir):
        wait_for(lambda: sysfs(host, "run") == "0", 30, "the restore after the restart")
        assert sysfs(host, "pages_to_scan") == "100"
        wait_for(lambda: condition(status_of(cluster, n), "Ready").get("reason") == "NoPolicy",
                 30, "the node state to say no policy is in force")
        assert status_of(cluster, n)["originals"] == {}


def test_kubevirt_ksm_handler_is_not_fought(cluster: ControlPlane, host: FakeKernel,
                                            names: dict[str, str], tmp_path: Path) -> None:
    n, p = names["node"], names["policy"]
    apply(cluster, node(n, {"pool": n}, {"kubevirt.io/ksm-handler-managed": "true"}))
    apply(cluster, policy(p, {"nodeSelector": {"matchLabels": {"pool": n}},
                              "ksm": {"enabled": True, "pagesToScan": 777},
                              "swap": {"swappiness": 11}}))
    with agent_process(cluster, n, host.root, tmp_path / "state"):
        wait_for(lambda: condition(status_of(cluster, n), "Degraded").get("reason") ==
                 "KsmManagedElsewhere", 30, "the conflict to be reported")
        assert sysfs(host, "pages_to_scan") == "100"
        assert host.get("proc/sys/vm/swappiness") == "11"
    cluster.kubectl("delete", "mop", p)


def _pod_bound_kubeconfig(cluster: ControlPlane, node_name: str,
                          account: str = "overcommit-agent") -> Path:
    pod_name = f"{account}-{node_name}"
    apply(cluster, {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod_name, "namespace": "memory-overcommit"},
                    "spec": {"nodeName": node_name, "serviceAccountName": account,
                             "containers": [{"name": "agent", "image": "agent:test"}]}})
    return cluster.service_account_kubeconfig("memory-overcommit", account,
                                              bound_pod=pod_name)


def test_agent_does_its_job_under_the_shipped_rbac(cluster: ControlPlane, host: FakeKernel,
                                                   names: dict[str, str],
                                                   tmp_path: Path) -> None:
    cluster.kubectl("apply", "--server-side", "-k",
                    str(Path(__file__).parents[2] / "deploy/manifests"))
    n, other, p = names["node"], f"{names['node']}-b", names["policy"]
    apply(cluster, node(n, {"pool": n}), node(other, {"pool": n}))
    kubeconfig = _pod_bound_kubeconfig(cluster, n)
    apply(cluster, policy(p, {"nodeSelector": {"matchLabels": {"pool": n}},
                              "ksm": {"enabled": True, "pagesToScan": 4321}}))
    with agent_process(cluster, n, host.root, tmp_path / "state", kubeconfig=kubeconfig):
        wait_for(lambda: sysfs(host, "pages_to_scan") == "4321", 60,
                 "the agent (pod-bound token, shipped RBAC) to apply the policy")
        wait_for(lambda: (status_of(cluster, n).get("policy") or {}).get("name") == p, 30,
                 "the agent to report its node state")
    # the same identity cannot write another node's state, nor touch policies
    foreign = {"apiVersion": "memoryovercommit.io/v1alpha1", "kind": "MemoryOvercommitNodeState",
               "metadata": {"name": other}, "spec": {"nodeName": other}}

    def create_foreign(*flags: str) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl("create", *flags, "-f", "-", input=json.dumps(foreign),
                               kubeconfig=kubeconfig, check=False)

    # The admission policy reaches the API server through an informer: wait until it is in
    # force (a dry run creates nothing either way), then the real attempt.
    wait_for(lambda: create_foreign("--dry-run=server").returncode != 0, 30,
             "the admission policy to be in force")
    denied = create_foreign()
    assert denied.returncode != 0 and n in denied.stderr and other in denied.stderr, \
        denied.stderr
    patched = cluster.kubectl("patch", "mop", p, "--type=merge", "-p",
                              '{"spec":{"priority":5}}', kubeconfig=kubeconfig, check=False)
    assert patched.returncode != 0 and "forbidden" in patched.stderr
    cluster.kubectl("delete", "mop", p)


def test_agent_on_the_real_ksm(cluster: ControlPlane, real_ksm: dict[str, str],
                               names: dict[str, str], tmp_path: Path) -> None:
    n, p = names["node"], names["policy"]
    apply(cluster, node(n, {"pool": n}))
    apply(cluster, policy(p, {"nodeSelector": {"matchLabels": {"pool": n}},
                              "ksm": {"enabled": True, "pagesToScan": 1357,
                                      "sleepMillisecs": 31}}))
    real = Path("/sys/kernel/mm/ksm")
    with agent_process(cluster, n, Path("/"), tmp_path / "state"):
        wanted = {"pages_to_scan": "1357", "sleep_millisecs": "31", "run": "1"}
        wait_for(lambda: {name: (real / name).read_text().strip() for name in wanted}
                 == wanted, 30, "the agent to write the real KSM settings")
        wait_for(lambda: status_of(cluster, n).get("settings", {}).get(
            f"{KSM}/pages_to_scan") == "1357", 30, "the node state to report the real value")
        assert status_of(cluster, n)["originals"][f"{KSM}/pages_to_scan"] == \
            real_ksm[f"{KSM}/pages_to_scan"]
        cluster.kubectl("delete", "mop", p)
        wait_for(lambda: (real / "pages_to_scan").read_text().strip() ==
                 real_ksm[f"{KSM}/pages_to_scan"], 30, "the real originals to come back")
    for path, value in real_ksm.items():
        text = Path("/", path).read_text().strip()
        assert value in text, (path, value, text)


# What kopf logs when it is given a VMI index it cannot serve or may not list.
VMI_TROUBLE = ("Unresolved resources", "Not enough permissions", "APIForbiddenError",
               "virtualmachineinstances.kubevirt.io is forbidden")


def kubevirt_served(cluster: ControlPlane) -> bool:
    return cluster.kubectl("get", "--raw", "/apis/kubevirt.io/v1", check=False).returncode == 0


def test_without_kubevirt_the_agent_starts_without_a_warning(
        cluster: ControlPlane, host: FakeKernel, names: dict[str, str], tmp_path: Path) -> None:
    """A cluster without KubeVirt (plain libvirt nodes): the agent asks discovery first and
    does not watch VMIs at all, so kopf has no unresolvable resource to warn about; one INFO
    line says what is missing."""
    cluster.kubectl("delete", "crd", "virtualmachineinstances.kubevirt.io", "--ignore-not-found")
    wait_for(lambda: not kubevirt_served(cluster), 30, "KubeVirt's API to be gone")
    log = log_of_an_agent_that_applied(cluster, host, names, tmp_path)
    assert "KubeVirt serves no VirtualMachineInstances" in log, log
    assert not [m for m in VMI_TROUBLE if m in log], log


def log_of_an_agent_that_applied(cluster: ControlPlane, host: FakeKernel,
                                 names: dict[str, str], tmp_path: Path,
                                 account: str | None = None) -> str:
    """A node and a KSM policy for it; the agent (with ``account``'s pod-bound token, else as
    admin) runs until it has applied and reported the policy. Its log, for what it decided."""
    n, p = names["node"], names["policy"]
    apply(cluster, node(n, {"pool": n}))
    apply(cluster, policy(p, {"nodeSelector": {"matchLabels": {"pool": n}},
                              "ksm": {"enabled": True, "pagesToScan": 543}}))
    kubeconfig = _pod_bound_kubeconfig(cluster, n, account) if account else None
    state = tmp_path / "state"
    with agent_process(cluster, n, host.root, state, kubeconfig=kubeconfig,
                       extra_args=["--no-libvirt"]):
        wait_for(lambda: sysfs(host, "pages_to_scan") == "543", 60,
                 "the agent to apply the policy")
        wait_for(lambda: (status_of(cluster, n).get("policy") or {}).get("name") == p, 30,
                 "the agent to report its node state")
    cluster.kubectl("delete", "mop", p)
    return agent_log(state, n)


def test_kubevirt_vmi_labels_select_guests(cluster: ControlPlane, host: FakeKernel,
                                           names: dict[str, str], tmp_path: Path) -> None:
    """VMI labels come from the API (KubeVirt's CRD present): vmSelector.matchLabels works,
    under the shipped RBAC and a pod-bound token, as on a cluster."""
    from testkit.fakes.libvirt_xml import FakeDomain, write_node

    cluster.kubectl("apply", "--server-side", "-k",
                    str(Path(__file__).parents[2] / "deploy/manifests"))
    apply(cluster, *CRDS)  # KubeVirt serves VMIs and their migrations
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/virtualmachineinstances.kubevirt.io",
                    "crd/virtualmachineinstancemigrations.kubevirt.io")
    n, p, ns = names["node"], names["policy"], f"ns-{names['node']}"
    apply(cluster, node(n, {"pool": n}), {"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": ns}})
    for vm, tier in (("vm-db", "db"), ("vm-web", "web")):
        apply(cluster, {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                        "metadata": {"name": vm, "namespace": ns,
                                     "labels": {"tier": tier, "kubevirt.io/nodeName": n}},
                        "spec": {"domain": {"resources": {"requests": {"memory": "256Mi"}}}}})
    uids = {vm: get_json(cluster, "vmi", vm, "-n", ns)["metadata"]["uid"]
            for vm in ("vm-db", "vm-web")}
    uri = write_node(tmp_path, [FakeDomain(f"{ns}_{vm}", vmi_uid=uid)
                                for vm, uid in uids.items()])
    apply(cluster, policy(p, {"nodeSelector": {"matchLabels": {"pool": n}},
                              "balloon": {"mode": "Static",
                                          "vmSelector": {"matchLabels": {"tier": "db"}},
                                          "static": {"targetPercent": 50}}}))
    kubeconfig = _pod_bound_kubeconfig(cluster, n)
    with agent_process(cluster, n, host.root, tmp_path / "state", kubeconfig=kubeconfig,
                       extra_args=["--libvirt-uri", uri]):
        wait_for(lambda: status_of(cluster, n).get("guestCount") == 2, 30,
                 "the agent to report both guests")
        guests = {g["domain"]: g for g in status_of(cluster, n)["guests"]}
    log = agent_log(tmp_path / "state", n)
    assert not [m for m in ("KubeVirt serves no", "may not list", *VMI_TROUBLE) if m in log], log
    db, web = guests[f"{ns}_vm-db"], guests[f"{ns}_vm-web"]
    assert (db["vmiNamespace"], db["vmiName"], db["vmiUid"]) == (ns, "vm-db", uids["vm-db"])
    assert web["reason"].startswith("not selected"), web
    assert not db["reason"].startswith("not selected"), db
    cluster.kubectl("delete", "mop", p)


def test_libvirt_overlay_agent_in_a_kubevirt_cluster_leaves_vmis_alone(
        cluster: ControlPlane, host: FakeKernel, names: dict[str, str], tmp_path: Path) -> None:
    """A plain-libvirt node pool in a cluster that also runs KubeVirt: the libvirt overlay's
    RBAC cannot read VMIs, although the API serves them. The agent must not watch what it may
    not read (kopf would wait for that index for ever), and says so once."""
    repo = Path(__file__).parents[2]
    cluster.kubectl("apply", "--server-side", "-k", str(repo / "deploy/manifests"))
    apply(cluster, VMI_CRD)
    wait_for(lambda: kubevirt_served(cluster), 30, "KubeVirt's API to be served")
    overlay = str(repo / "deploy/overlays/libvirt")
    rendered = yaml.safe_load_all(cluster.kubectl("kustomize", overlay).stdout)
    role = next(d for d in rendered if d["kind"] == "ClusterRole"
                and d["metadata"]["name"] == "memory-overcommit-agent")
    account, role_name = "libvirt-overcommit-agent", "memory-overcommit-agent-libvirt-test"
    role["metadata"] = {"name": role_name}
    apply(cluster, role,
          {"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": account, "namespace": "memory-overcommit"}},
          {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
           "metadata": {"name": role_name},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                       "name": role_name},
           "subjects": [{"kind": "ServiceAccount", "name": account,
                         "namespace": "memory-overcommit"}]})
    log = log_of_an_agent_that_applied(cluster, host, names, tmp_path, account)
    assert "this agent may not list VirtualMachineInstances" in log, log
    assert not [m for m in VMI_TROUBLE if m in log], log
