"""The single-node cluster harness (overcommit.localcluster): a real kubelet runs pods from
locally built images under the agent's confinement, pods reach the API server through the
``kubernetes`` Service with node-bound tokens, and nothing is left on the host afterwards, also
after a hard kill.

Needs root and the node's parts; a missing part FAILS the test and says what to install. One
cluster serves the whole module: its start is also the "next start" that must clean up after a
hard-killed run, which the module performs first.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overcommit.localcluster.node import (
    KUBELET_ROOT,
    LocalCluster,
    LocalClusterError,
    cleanup,
    host_sysctls,
    leftovers,
    sysctl_changes,
)
from testkit.cluster import require_parts
from testkit.waiting import say

REPO = Path(__file__).resolve().parents[2]
PROBE_DIR = Path(__file__).parent / "probe"
PROBE_IMAGE = "memory-overcommit/e2e-probe:1"
NAMESPACE = "harness-e2e"
HOSTNET_PORT = 18080  # in the node's own network namespace: collides with nothing on the host

pytestmark = [pytest.mark.slow, pytest.mark.root]


@pytest.fixture(scope="module")
def probe_image(pytestconfig: pytest.Config) -> str:
    require_parts()
    started = time.monotonic()
    proc = subprocess.run(["docker", "build", "--quiet", "--tag", PROBE_IMAGE, str(PROBE_DIR)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"docker build of {PROBE_IMAGE} failed:\n{proc.stderr}"
    say(pytestconfig, f"\nimage {PROBE_IMAGE} built in {time.monotonic() - started:.1f} s")
    return PROBE_IMAGE


@pytest.fixture(scope="module")
def host_before(probe_image: str) -> dict[str, str]:
    """The host's sysctls before any cluster (docker, which sets its own, is already up)."""
    return host_sysctls()


CHILD = """
import json, subprocess, sys, time
from overcommit.localcluster.node import LocalCluster
cluster = LocalCluster().start()
cluster.load_image(sys.argv[1])
cluster.kubectl("apply", "-f", "-", input=sys.argv[2])
cluster.kubectl("wait", "--for=condition=Ready", "--timeout=90s", "-n", sys.argv[3], "pod/victim")
print("READY", flush=True)
time.sleep(3600)
"""


@pytest.fixture(scope="module")
def hard_killed(probe_image: str, host_before: dict[str, str]) -> list[str]:
    """A cluster started in a child process that is SIGKILLed while a pod runs: what it left
    on the host (its daemons die with it; the pod's shim and processes, mounts, cgroups and
    the network namespace do not)."""
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        namespace(), pod("victim", probe_image, host_network=False)]})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "operator"), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, probe_image, manifest, NAMESPACE],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 240)
        line = child.stdout.readline() if ready else "<nothing within 240 s>"
        if line.strip() != "READY":
            child.kill()
            _, err = child.communicate(timeout=30)
            pytest.fail(f"the child cluster did not come up: {err[-3000:]}", pytrace=False)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    time.sleep(1)  # the kernel delivers the children's pdeathsig
    return leftovers()


@pytest.fixture(scope="module")
def cluster(pytestconfig: pytest.Config, probe_image: str,
            hard_killed: list[str]) -> Iterator[LocalCluster]:
    local = LocalCluster()
    try:
        local.start()
        started = time.monotonic()
        local.load_image(probe_image)
        loaded = time.monotonic() - started
        say(pytestconfig, "\nlocal cluster up in {total:.1f} s ({phases}); image loaded in "
            "{loaded:.1f} s".format(
                total=local.timings["total"], loaded=loaded,
                phases=", ".join(f"{k} {v:.1f} s" for k, v in local.timings.items()
                                 if k != "total" and v >= 0.1)))
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def pods(cluster: LocalCluster, probe_image: str) -> dict[str, dict[str, Any]]:
    """The two probe pods, Ready: name -> Pod object."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "List", "items": [
            namespace(), pod("hostnet", probe_image, host_network=True),
            pod("podnet", probe_image, host_network=False)]}))
    cluster.kubectl("wait", "--for=condition=Ready", "--timeout=120s", "-n", NAMESPACE,
                    "pod/hostnet", "pod/podnet", timeout=150)
    found = json.loads(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json").stdout)
    return {item["metadata"]["name"]: item for item in found["items"]}


def namespace() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


def pod(name: str, image: str, *, host_network: bool) -> dict[str, Any]:
    """A probe pod confined like the project's agent (deploy/manifests/agent-daemonset.yaml):
    seccomp RuntimeDefault, read-only root filesystem, every capability dropped (the
    hostNetwork one runs as root with DAC_OVERRIDE back, and the agent's hostPath mounts of
    /proc and /var/lib/kubelet/pods), memory-backed emptyDir at /tmp."""
    port = HOSTNET_PORT if host_network else 8080
    container: dict[str, Any] = {
        "name": "probe",
        "image": image,
        "imagePullPolicy": "Never" if host_network else "IfNotPresent",
        "env": [{"name": "PORT", "value": str(port)},
                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 1},
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                      "limits": {"memory": "128Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], **({"add": ["DAC_OVERRIDE"]} if host_network
                                                 else {})},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                         {"name": "scratch", "mountPath": "/scratch"}],
    }
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        {"name": "scratch", "emptyDir": {"sizeLimit": "16Mi"}},
    ]
    if host_network:
        container["volumeMounts"] += [
            {"name": "proc", "mountPath": "/host/proc", "readOnly": True},
            {"name": "kubelet-pods", "mountPath": "/pods", "readOnly": True}]
        volumes += [{"name": "proc", "hostPath": {"path": "/proc", "type": "Directory"}},
                    {"name": "kubelet-pods",
                     "hostPath": {"path": f"{KUBELET_ROOT}/pods", "type": "Directory"}}]
        identity = {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False}
    else:
        identity = {"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": True}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "hostNetwork": host_network,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 5,
            "securityContext": {**identity, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": volumes,
        },
    }


def exec_in(cluster: LocalCluster, name: str, *argv: str) -> str:
    return cluster.kubectl("exec", "-n", NAMESPACE, name, "--", *argv, timeout=90).stdout


# ------------------------------------------------------------------------------------- tests


def test_it_refuses_to_start_beside_a_kubelet_that_is_not_its_own(tmp_path: Path) -> None:
    """Runs first, before the module's cluster exists: nothing of the host may be touched."""
    require_parts()
    fake = tmp_path / "kubelet"
    shutil.copy("/bin/sleep", fake)
    other = subprocess.Popen([str(fake), "120"])
    try:
        with pytest.raises(LocalClusterError, match=r"another kubelet runs on this host and "
                                                    rf"owns {KUBELET_ROOT}: pid {other.pid}"):
            LocalCluster(lock_wait=0).start()
    finally:
        other.kill()
        other.wait()


def test_the_next_start_cleans_up_after_a_hard_killed_run(
        hard_killed: list[str], cluster: LocalCluster) -> None:
    survivors = "\n".join(hard_killed)
    for what in ("process containerd-shim-runc-v2", "pod process", "mount /var/lib/kubelet",
                 "network namespace", "interface ovc-host", "cgroup"):
        assert what in survivors, f"expected the killed run to leave a {what}:\n{survivors}"
    done = "\n".join(cluster.cleaned_up)
    for what in ("killed containerd-shim-runc-v2", "pod processes", "unmounted",
                 "removed cgroup", "deleted network namespace"):
        assert what in done, f"the start did not report '{what}':\n{done}"
    node = json.loads(cluster.kubectl("get", "node", cluster.node_name, "-o", "json").stdout)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == cluster.node_address


def test_pods_run_the_local_image_confined_like_the_agent(
        cluster: LocalCluster, pods: dict[str, dict[str, Any]]) -> None:
    assert pods["hostnet"]["status"]["podIP"] == cluster.node_address
    pod_ip = ipaddress.IPv4Address(pods["podnet"]["status"]["podIP"])
    assert pod_ip in ipaddress.IPv4Network(cluster.pod_cidr)
    for name, capabilities, uid in (("hostnet", "0000000000000002", "0"),  # DAC_OVERRIDE
                                    ("podnet", "0000000000000000", "65532")):
        status = exec_in(cluster, name, "grep", "-E", "^(CapEff|CapBnd|Seccomp|Uid):",
                         "/proc/self/status")
        fields = {line.split(":")[0]: line.split()[1] for line in status.splitlines()}
        assert fields == {"Uid": uid, "CapEff": capabilities, "CapBnd": capabilities,
                          "Seccomp": "2"}, (name, status)
        write = cluster.kubectl("exec", "-n", NAMESPACE, name, "--", "touch", "/probe-was-here",
                                check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr, write


def test_a_pod_reaches_the_api_through_the_service_with_a_node_bound_token(
        cluster: LocalCluster, pods: dict[str, dict[str, Any]]) -> None:
    for name in ("podnet", "hostnet"):
        answer = json.loads(exec_in(cluster, name, "python3", "/usr/local/bin/probe.py", "api"))
        assert answer["via"] == f"https://{cluster.kubernetes_service_ip}:443", name
        assert answer["version"]["gitVersion"].startswith("v1."), answer["version"]
        claims = answer["claims"]["kubernetes.io"]
        assert claims["node"]["name"] == cluster.node_name, claims
        assert claims["pod"]["name"] == name, claims
        user = answer["review"]["status"]["userInfo"]
        assert user["username"] == f"system:serviceaccount:{NAMESPACE}:default"
        assert user["extra"]["authentication.kubernetes.io/node-name"] == [cluster.node_name]


def test_kubectl_logs_and_exec_work(cluster: LocalCluster,
                                    pods: dict[str, dict[str, Any]]) -> None:
    for name, uid, node in (("hostnet", 0, cluster.node_name), ("podnet", 65532, None)):
        lines = cluster.kubectl("logs", "-n", NAMESPACE, name).stdout.splitlines()
        started = json.loads(lines[0])
        assert started["event"] == "started" and started["uid"] == uid, lines
        if node:
            assert started["node"] == node
    assert exec_in(cluster, "podnet", "python3", "-c", "print(6 * 7)").strip() == "42"


def test_emptydirs_are_under_var_lib_kubelet_on_the_host(
        cluster: LocalCluster, pods: dict[str, dict[str, Any]]) -> None:
    """The kubelet mounts volumes in its own mount namespace; they reach the host's (and the
    agent's hostPath /var/lib/kubelet/pods) through the shared kubelet root."""
    for name, obj in pods.items():
        uid = obj["metadata"]["uid"]
        for volume in ("tmp", "scratch"):  # memory-backed (a tmpfs mount) and on disk
            exec_in(cluster, name, "sh", "-c", f"echo {name}-{volume} > /{volume}/marker")
            on_host = KUBELET_ROOT / "pods" / uid / "volumes" / "kubernetes.io~empty-dir" / volume
            assert (on_host / "marker").read_text() == f"{name}-{volume}\n"
    seen = exec_in(cluster, "hostnet", "ls", "/pods").split()
    assert sorted(seen) == sorted(p["metadata"]["uid"] for p in pods.values())


def test_a_second_cluster_and_cleanup_are_refused_while_one_runs(
        cluster: LocalCluster) -> None:
    with pytest.raises(LocalClusterError, match=f"a local cluster of {cluster.state_dir} is "
                                                f"running \\(process {os.getpid()}\\)"):
        LocalCluster(lock_wait=0).start()
    with pytest.raises(LocalClusterError, match="is running"):
        cleanup()
    assert cluster.running


def test_a_running_node_changed_no_host_sysctl(
        cluster: LocalCluster, pods: dict[str, dict[str, Any]],
        host_before: dict[str, str]) -> None:
    assert sysctl_changes(host_before, host_sysctls()) == {}
    # The node's own namespace has its own net.* (forwarding on, for its pods' bridge).
    inside = cluster.node_exec("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()
    assert inside == "1"


def test_stop_leaves_nothing_behind(pytestconfig: pytest.Config, cluster: LocalCluster,
                                    host_before: dict[str, str]) -> None:
    started = time.monotonic()
    cluster.stop()
    say(pytestconfig, f"\nlocal cluster stopped in {time.monotonic() - started:.1f} s")
    assert leftovers() == []
    assert sysctl_changes(host_before, host_sysctls()) == {}
