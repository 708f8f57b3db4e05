"""The real-API-server harness itself: kubeconfigs, RBAC, pod-bound tokens, restart, cleanup."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from overcommit.localcluster import ControlPlane

NS = "cp-harness"
NODE = "worker-1"
NO_FORBIDDEN_KEY = "!has(object.data) || !('forbidden' in object.data)"


def apply(cp: ControlPlane, *objects: dict[str, Any]) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    cp.kubectl("apply", "-f", "-", input=body)


def whoami(cp: ControlPlane, kubeconfig: Path) -> dict[str, Any]:
    review = json.loads(cp.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    info: dict[str, Any] = review["status"]["userInfo"]
    return info


@pytest.fixture(scope="module")
def namespace(control_plane: ControlPlane) -> str:
    apply(control_plane, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    return NS


def test_admin_creates_namespace_and_configmap(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl(
        "create", "configmap", "settings", "-n", namespace, "--from-literal=ratio=1.5"
    )
    out = control_plane.kubectl("get", "configmap", "settings", "-n", namespace, "-o", "json")
    assert json.loads(out.stdout)["data"] == {"ratio": "1.5"}
    assert "system:masters" in whoami(control_plane, control_plane.admin_kubeconfig)["groups"]


def test_python_client_reads_the_kubeconfig(control_plane: ControlPlane, namespace: str) -> None:
    import kubernetes  # a dev dependency: missing, this fails rather than skips

    kubeconfig = str(control_plane.admin_kubeconfig)
    client = kubernetes.config.new_client_from_config(kubeconfig)  # type: ignore[no-untyped-call]
    core = kubernetes.client.CoreV1Api(client)
    # the dict as the client's validate_call would take it: V1ConfigMap.model_validate
    core.create_namespaced_config_map(namespace, kubernetes.client.V1ConfigMap.model_validate(
        {"metadata": {"name": "from-python"}, "data": {"k": "v"}}))
    assert core.read_namespaced_config_map("from-python", namespace).data == {"k": "v"}


def test_rbac_denies_unprivileged_user(control_plane: ControlPlane, namespace: str) -> None:
    kubeconfig = control_plane.kubeconfig_for_user("alice", ["developers", "testers"])
    info = whoami(control_plane, kubeconfig)  # SelfSubjectReview is allowed to everyone
    assert info["username"] == "alice"
    assert {"developers", "testers", "system:authenticated"} <= set(info["groups"])

    denied = control_plane.kubectl(
        "get", "configmaps", "-n", namespace, kubeconfig=kubeconfig, check=False
    )
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    can_i = control_plane.kubectl(
        "auth", "can-i", "create", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False
    )
    assert can_i.stdout.strip() == "no"


def test_pod_bound_token_carries_node_name(control_plane: ControlPlane, namespace: str) -> None:
    apply(
        control_plane,
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "agent", "namespace": namespace}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "agent-x", "namespace": namespace},
         "spec": {"nodeName": NODE, "serviceAccountName": "agent",
                  "containers": [{"name": "agent", "image": "agent:test"}]}},
    )  # fmt: skip
    token = control_plane.kubectl(
        "create", "token", "agent", "-n", namespace,
        "--bound-object-kind", "Pod", "--bound-object-name", "agent-x",
    ).stdout.strip()  # fmt: skip

    info = whoami(control_plane, control_plane.kubeconfig_for_token(token))
    assert info["username"] == f"system:serviceaccount:{namespace}:agent"
    extra = info["extra"]
    assert extra["authentication.kubernetes.io/node-name"] == [NODE]
    assert extra["authentication.kubernetes.io/pod-name"] == ["agent-x"]
    assert extra["authentication.kubernetes.io/node-uid"]


def test_validating_admission_policy_is_enforced(
    control_plane: ControlPlane, namespace: str
) -> None:
    apply(
        control_plane,
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": "no-forbidden-keys"},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {"resourceRules": [{
                      "apiGroups": [""], "apiVersions": ["v1"],
                      "operations": ["CREATE", "UPDATE"], "resources": ["configmaps"]}]},
                  "validations": [{"expression": NO_FORBIDDEN_KEY,
                                   "message": "key 'forbidden' is not allowed"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1",
         "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": "no-forbidden-keys"},
         "spec": {"policyName": "no-forbidden-keys", "validationActions": ["Deny"]}},
    )  # fmt: skip
    # The policy reaches the admission plugin through an informer: allow it a moment.
    deadline = time.monotonic() + 30
    while True:
        result = control_plane.kubectl(
            "create", "configmap", "bad", "-n", namespace, "--from-literal=forbidden=1",
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            break
        control_plane.kubectl("delete", "configmap", "bad", "-n", namespace)
        assert time.monotonic() < deadline, "ValidatingAdmissionPolicy never took effect"
        time.sleep(0.5)
    assert "key 'forbidden' is not allowed" in result.stderr


def test_restart_apiserver_keeps_port_and_data(control_plane: ControlPlane, namespace: str) -> None:
    port, old_pid = control_plane.port, control_plane.apiserver_pid
    etcd_pid = control_plane.etcd_pid
    control_plane.stop_apiserver()
    down = control_plane.kubectl("get", "--raw", "/readyz", check=False, timeout=20)
    assert down.returncode != 0

    control_plane.start_apiserver()
    assert control_plane.port == port
    assert control_plane.apiserver_pid not in (None, old_pid)
    assert control_plane.etcd_pid == etcd_pid
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    out = control_plane.kubectl("get", "configmap", "settings", "-n", namespace, "-o", "json")
    assert json.loads(out.stdout)["data"] == {"ratio": "1.5"}

    control_plane.restart_apiserver()
    assert control_plane.kubectl("get", "namespace", namespace).returncode == 0


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text.encode() in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def test_stop_leaves_nothing_behind(tmp_path: Path) -> None:
    # Its own instance, not the session fixture: this one gets stopped.
    cp = ControlPlane(base_dir=tmp_path).start()
    workdir = cp.dir
    pids = [pid for pid in (cp.apiserver_pid, cp.etcd_pid) if pid is not None]
    assert len(pids) == 2
    assert sorted(_processes_mentioning(str(workdir))) == sorted(pids)

    cp.stop()
    assert _processes_mentioning(str(workdir)) == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not workdir.exists()
    assert not cp.running
    cp.stop()  # idempotent
