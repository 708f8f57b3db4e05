"""deploy/manifests and its overlays: they render, every object is valid Kubernetes, the real API
server accepts them, and the agent DaemonSet gives the agent exactly the host paths its code
reads and writes (the paths come from the code, not from a list kept here)."""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from overcommit.cli import build_parser
from overcommit.host._sysfs import SettingsSource
from overcommit.host.base import HostFS
from overcommit.host.cgroups import UNIFIED_MOUNTS
from overcommit.host.meminfo import MEMINFO, VMSTAT
from overcommit.host.pressure import PSI_MEMORY
from overcommit.host.sources import default_sources
from overcommit.host.swap import SWAPS
from overcommit.localcluster import ControlPlane
from overcommit.localcluster.controlplane import (
    ControlPlaneError,
    find_kubectl,
    pinned_kube_version,
)
from overcommit.virt.endpoints import (
    DEFAULT_LINK_DIR,
    LAUNCHER_SOCKETS,
    POD_SOCKET_DIR,
    SUN_PATH_MAX,
    SYSTEM_SOCKETS,
)

REPO = Path(__file__).resolve().parents[2]
BASE, LIBVIRT, KUBEVIRT = "deploy/manifests", "deploy/overlays/libvirt", "deploy/overlays/kubevirt"
KUSTOMIZATIONS = (BASE, LIBVIRT, KUBEVIRT)
NAMESPACE = "memory-overcommit"
AGENT = "overcommit-agent"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
# docs/operations.md: Kubernetes 1.30 or newer (ValidatingAdmissionPolicy GA).
OLDEST_SUPPORTED = "1.30"
# What the host paths resolve to on the node; the kubelet's default root.
KUBELET_PODS = "/var/lib/kubelet/pods"
# Launcher sockets are owned by uid 107, mode 0700: root needs this to connect (docs/deploy.md).
LAUNCHER_CAPABILITY = "DAC_OVERRIDE"


# --------------------------------------------------------------------------- rendering


def kubectl() -> Path:
    try:
        return find_kubectl()
    except ControlPlaneError as exc:
        pytest.fail(f"{exc} (it is in the dev extra: pip install -e '.[dev]')", pytrace=False)


@functools.cache
def rendered_text(kustomization: str) -> str:
    proc = subprocess.run([str(kubectl()), "kustomize", str(REPO / kustomization)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {kustomization} failed:\n{proc.stderr}"
    return proc.stdout


def render(kustomization: str) -> list[dict[str, Any]]:
    """A fresh copy of every rendered object (tests may change what they get)."""
    return [doc for doc in yaml.safe_load_all(rendered_text(kustomization)) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return hits[0]


def harness_version() -> str:
    version = pinned_kube_version()
    assert version, "tools/kube/go.mod pins no k8s.io/kubernetes version"
    return ".".join(version.lstrip("v").split(".")[:2])


# --------------------------------------------------------------------------- the agent's pod


@dataclass(frozen=True)
class Mount:
    path: PurePosixPath  # in the container
    read_only: bool
    volume: dict[str, Any]

    @property
    def host_path(self) -> PurePosixPath | None:
        hostpath = self.volume.get("hostPath")
        return PurePosixPath(hostpath["path"]) if hostpath else None


@dataclass(frozen=True)
class AgentPod:
    daemonset: dict[str, Any]

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.daemonset["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        (container,) = [c for c in self.spec["containers"] if c["name"] == "agent"]
        found: dict[str, Any] = container
        return found

    @functools.cached_property
    def args(self) -> argparse.Namespace:
        """The container's arguments as the real CLI parses them (a typo fails here)."""
        args = build_parser().parse_args(self.container["args"])
        assert args.command == "agent"
        return args

    def mounts(self) -> list[Mount]:
        volumes = {v["name"]: v for v in self.spec["volumes"]}
        return [Mount(PurePosixPath(m["mountPath"]), bool(m.get("readOnly")), volumes[m["name"]])
                for m in self.container["volumeMounts"]]

    def mount_for(self, path: str | PurePosixPath) -> Mount | None:
        """The mount a container path lies on (the deepest one, as in the kernel)."""
        path = PurePosixPath(path)
        on = [m for m in self.mounts() if path == m.path or m.path in path.parents]
        return max(on, key=lambda m: len(m.path.parts), default=None)

    def host_file(self, path: str | PurePosixPath) -> tuple[PurePosixPath | None, bool]:
        """(the host path a container path reaches, writable?); None: not the host's."""
        mount = self.mount_for(path)
        if mount is None or mount.host_path is None:
            return None, False
        return mount.host_path / PurePosixPath(path).relative_to(mount.path), not mount.read_only

    def under_host_root(self, rel: str) -> PurePosixPath:
        return PurePosixPath(self.args.host_root) / rel

    def capabilities_added(self) -> set[str]:
        caps = self.container.get("securityContext", {}).get("capabilities", {})
        return set(caps.get("add") or ())

    def port(self, name: str) -> int:
        (port,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == name]
        return int(port)


def agent_pod(kustomization: str) -> AgentPod:
    return AgentPod(find(render(kustomization), "DaemonSet", AGENT))


def settings_the_agent_writes() -> list[str]:
    """Every setting file of every host source (KSM, UKSM, zswap, vm.swappiness)."""
    sources = default_sources(HostFS("/"))
    return [source.path_of(spec.name) for source in sources if isinstance(source, SettingsSource)
            for spec in source.specs]


def files_the_agent_reads() -> list[str]:
    # proc: ksmd's pid and CPU time (/proc/<pid>/stat) are found by listing the host's procfs,
    # and so are the guests' QEMU processes, whose cgroup's memory.pressure is read under the
    # cgroup tree (host.cgroups).
    return [MEMINFO, VMSTAT, PSI_MEMORY, SWAPS, "proc", *UNIFIED_MOUNTS]


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(kustomization: str) -> None:
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: pip install kubernetes-validate (it "
                    "is in the dev extra)", pytrace=False)
    objects = render(kustomization)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {("DaemonSet", AGENT), ("Namespace", NAMESPACE),
            ("CustomResourceDefinition", "memoryovercommitpolicies.memoryovercommit.io")} <= kinds
    failures = []
    for version in sorted({OLDEST_SUPPORTED, harness_version()}):
        for obj in objects:
            try:  # strict: an unknown or misspelt field is an error, not ignored
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                failures.append(f"{version} {obj['kind']}/{obj['metadata']['name']}: no schema")
            except kubernetes_validate.ValidationError as err:
                where = ".".join(str(p) for p in err.path)
                failures.append(f"{version} {obj['kind']}/{obj['metadata']['name']}: "
                                f"{where}: {err.message}")
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- DaemonSet vs code


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_setting_the_agent_writes_is_the_hosts_file_and_writable(kustomization: str) -> None:
    pod = agent_pod(kustomization)
    for rel in settings_the_agent_writes():
        host, writable = pod.host_file(pod.under_host_root(rel))
        assert (host, writable) == (PurePosixPath("/") / rel, True), \
            f"{rel}: the agent would write {host} (writable={writable}), not the host's /{rel}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_what_the_agent_only_reads_is_the_hosts_and_read_only(kustomization: str) -> None:
    pod = agent_pod(kustomization)
    for rel in files_the_agent_reads():
        host, writable = pod.host_file(pod.under_host_root(rel))
        assert host == PurePosixPath("/") / rel, f"{rel}: reaches {host}, not the host's /{rel}"
        assert not writable, f"{rel} is mounted writable; the agent only reads it"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_host_mount_is_one_the_agent_uses(kustomization: str) -> None:
    """No host directory is mounted that nothing in the code reads, writes or connects to."""
    pod = agent_pod(kustomization)
    used = [pod.under_host_root(rel) for rel in settings_the_agent_writes()
            + files_the_agent_reads()]
    used += [pod.under_host_root(socket.lstrip("/")) for socket in SYSTEM_SOCKETS]
    used += [PurePosixPath(p) for p in (pod.args.state_dir, pod.args.kubevirt_pods_dir) if p]
    for mount in pod.mounts():
        if mount.host_path is not None:
            assert any(p == mount.path or mount.path in p.parents for p in used), \
                f"{mount.host_path} is mounted at {mount.path}, but the agent uses nothing there"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_originals_and_socket_links_survive_what_they_must(kustomization: str) -> None:
    pod = agent_pod(kustomization)
    state = pod.mount_for(pod.args.state_dir)
    assert state is not None and state.host_path is not None and not state.read_only, \
        "the originals must be on a writable hostPath: they must outlive the pod"
    links = pod.mount_for(DEFAULT_LINK_DIR)
    assert links is not None and not links.read_only and "emptyDir" in links.volume, \
        "the socket links need a writable private directory (the root filesystem is read-only)"
    assert pod.container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_plain_libvirt_pool_reaches_the_host_daemon_and_no_pod_sockets() -> None:
    pod = agent_pod(LIBVIRT)
    for socket in SYSTEM_SOCKETS:
        host, _ = pod.host_file(pod.under_host_root(socket.lstrip("/")))
        assert host == PurePosixPath(socket)
    assert pod.args.kubevirt_pods_dir is None
    assert all(m.host_path != PurePosixPath(KUBELET_PODS) for m in pod.mounts())
    assert not pod.capabilities_added(), "nothing there is owned by another user"


GUESTS_POLICY = "memory-overcommit-agent-own-guests"


@pytest.mark.parametrize(("kustomization", "kubevirt"), [(BASE, True), (KUBEVIRT, True),
                                                         (LIBVIRT, False)])
def test_only_kubevirt_pools_let_the_agent_read_vmis_and_ask_for_migrations(
        kustomization: str, kubevirt: bool) -> None:
    objects = render(kustomization)
    role = find(objects, "ClusterRole", "memory-overcommit-agent")
    vmi_rules = [r for r in role["rules"] if "kubevirt.io" in r.get("apiGroups", [])]
    admission = {o["metadata"]["name"] for o in objects
                 if o["kind"].startswith("ValidatingAdmissionPolicy")}
    if kubevirt:
        assert vmi_rules == [{"apiGroups": ["kubevirt.io"],
                              "resources": ["virtualmachineinstances"],
                              "verbs": ["get", "list", "watch"]},
                             {"apiGroups": ["kubevirt.io"],
                              "resources": ["virtualmachineinstancemigrations"],
                              "verbs": ["get", "list", "watch", "create"]}]
        assert GUESTS_POLICY in admission
    else:
        assert vmi_rules == [] and len(role["rules"]) == len(
            find(render(BASE), "ClusterRole", "memory-overcommit-agent")["rules"]) - 2
        # Its parameters are KubeVirt's VMIs: without KubeVirt it has nothing to check.
        assert GUESTS_POLICY not in admission
        assert "memory-overcommit-agent-own-node-taint" in admission


@pytest.mark.parametrize("kustomization", [BASE, KUBEVIRT, LIBVIRT])
def test_the_agent_may_patch_nodes_and_nothing_else_of_them(kustomization: str) -> None:
    role = find(render(kustomization), "ClusterRole", "memory-overcommit-agent")
    node_verbs = {verb for r in role["rules"] if "nodes" in r["resources"] for verb in r["verbs"]}
    assert node_verbs == {"get", "list", "watch", "patch"}


@pytest.mark.parametrize("kustomization", [BASE, KUBEVIRT])
def test_kubevirt_launcher_sockets_are_reachable_within_sun_path(kustomization: str) -> None:
    pod = agent_pod(kustomization)
    pods_dir = pod.args.kubevirt_pods_dir
    assert pods_dir, "no --kubevirt-pods-dir: launchers' guests would be invisible"
    host, _ = pod.host_file(pods_dir)
    assert host == PurePosixPath(KUBELET_PODS)
    longest = max(LAUNCHER_SOCKETS, key=len)
    socket = f"{pods_dir}/{uuid.uuid4()}/{POD_SOCKET_DIR}/{longest}"
    assert len(socket.encode()) <= SUN_PATH_MAX, f"{socket} is longer than sun_path allows"
    assert LAUNCHER_CAPABILITY in pod.capabilities_added()


def test_the_plain_libvirt_overlay_only_drops_the_pods_dir_from_the_arguments() -> None:
    """The overlay repeats the base's argument list (lists are replaced whole): keep in step."""
    base = agent_pod(BASE).container["args"]
    overlay = agent_pod(LIBVIRT).container["args"]
    assert overlay == [a for a in base if not a.startswith("--kubevirt-pods-dir")]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_pod_runs_the_agent_as_the_docs_say(kustomization: str) -> None:
    pod = agent_pod(kustomization)
    env = {e["name"]: e for e in pod.container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert pod.spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod.spec["tolerations"]
    for host_namespace in ("hostPID", "hostNetwork", "hostIPC"):
        assert not pod.spec.get(host_namespace), f"{host_namespace} is not needed"
    security = pod.container["securityContext"]
    assert not security.get("privileged")
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod.capabilities_added() <= {LAUNCHER_CAPABILITY}
    # The probes and the metrics Service reach the ports the agent is told to serve on.
    assert pod.port(pod.container["livenessProbe"]["httpGet"]["port"]) == pod.args.health_port
    assert pod.port(pod.container["readinessProbe"]["httpGet"]["port"]) == pod.args.health_port
    assert pod.port("metrics") == pod.args.metrics_port
    service = find(render(kustomization), "Service", "overcommit-agent-metrics")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    labels = pod.daemonset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_the_deploy_doc_explains_every_mount_and_capability() -> None:
    doc = DEPLOY_DOC.read_text()
    pod = agent_pod(BASE)
    for mount in pod.mounts():
        named = str(mount.host_path) if mount.host_path else mount.volume["name"]
        assert f"`{named}`" in doc, f"docs/deploy.md does not explain {named}"
        assert f"`{mount.path}`" in doc, f"docs/deploy.md does not explain {mount.path}"
    for capability in pod.capabilities_added():
        assert f"`{capability}`" in doc, f"docs/deploy.md does not explain {capability}"
    for flag in pod.container["args"][1:]:
        assert f"`{flag.split('=')[0]}" in doc, f"docs/deploy.md does not explain {flag}"


# --------------------------------------------------------------------------- the API server


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The namespace and the agent's ServiceAccount exist, as after the first apply: objects
    in a namespace are refused (even in a dry run) before the namespace exists."""
    objects = render(BASE)
    first = [find(objects, "Namespace", NAMESPACE), find(objects, "ServiceAccount", AGENT)]
    apply_objects(control_plane, first)
    yield control_plane


def apply_objects(cp: ControlPlane, objects: list[dict[str, Any]]) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    cp.kubectl("apply", "--server-side", "-f", "-", input=body)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_api_server_accepts_every_object_in_a_server_side_dry_run(
        cluster: ControlPlane, kustomization: str) -> None:
    proc = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--validate=strict",
                           "-k", str(REPO / kustomization), check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    applied = set(re.findall(r"^(\S+) serverside-applied \(server dry run\)$", proc.stdout,
                             re.MULTILINE))
    expected = {f"{o['kind'].lower()}.{group(o)}/{o['metadata']['name']}".replace("./", "/")
                for o in render(kustomization)}
    assert applied == expected, f"not applied: {expected - applied}; unexpected: " \
                                f"{applied - expected}"


def group(obj: dict[str, Any]) -> str:
    api_version: str = obj["apiVersion"]
    return api_version.rpartition("/")[0]


def agent_pod_object(namespace: str) -> dict[str, Any]:
    """The Pod the DaemonSet controller would create from the template."""
    template = copy.deepcopy(agent_pod(BASE).daemonset["spec"]["template"])
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {**template["metadata"], "name": f"{AGENT}-dry-run",
                         "namespace": namespace},
            "spec": template["spec"]}


def test_the_agent_pod_is_admitted_with_node_critical_priority(cluster: ControlPlane) -> None:
    proc = cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                           input=json.dumps(agent_pod_object(NAMESPACE)), check=False)
    assert proc.returncode == 0, proc.stderr
    pod = json.loads(proc.stdout)
    critical = json.loads(cluster.kubectl("get", "priorityclass", "system-node-critical",
                                          "-o", "json").stdout)
    assert pod["spec"]["priority"] == critical["value"]


def test_pod_security_baseline_would_refuse_the_agent(cluster: ControlPlane) -> None:
    """Why the namespace enforces the privileged level: the same pod in a baseline namespace."""
    namespace = f"oc-baseline-{uuid.uuid4().hex[:8]}"
    apply_objects(cluster, [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": namespace,
                      "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": AGENT, "namespace": namespace}},
    ])
    try:
        proc = cluster.kubectl("create", "--dry-run=server", "-f", "-",
                               input=json.dumps(agent_pod_object(namespace)), check=False)
        assert proc.returncode != 0
        assert 'violates PodSecurity "baseline' in proc.stderr, proc.stderr
        assert "hostPath volumes" in proc.stderr, proc.stderr
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def matches_the_agent(expression: str, username: str) -> bool:
    """The admission policy's matchCondition, evaluated with cel-python for ``username``."""
    import celpy
    import celpy.adapter

    env = celpy.Environment()
    program = env.program(env.compile(expression))
    request = celpy.adapter.json_to_cel({"userInfo": {"username": username}})
    return bool(program.evaluate({"request": request}))


def test_a_renamed_install_keeps_the_admission_policy_bound_and_matching(
        tmp_path: Path) -> None:
    """An operator's overlay moving everything to namespace ops with a namePrefix: the binding
    must still name the (renamed) policy, and the policy must still match the (renamed) agent
    service account. Either miss would switch the node-state check off without a sound."""
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "ops", "namePrefix": "x-",
        "resources": [os.path.relpath(REPO / "deploy/overlays/kubevirt", tmp_path)]}))
    proc = subprocess.run([str(kubectl()), "kustomize", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    objects = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    for name in ("own-node-state", "own-guests", "own-node-taint"):
        policy = find(objects, "ValidatingAdmissionPolicy", f"x-memory-overcommit-agent-{name}")
        binding = find(objects, "ValidatingAdmissionPolicyBinding",
                       f"x-memory-overcommit-agent-{name}")
        assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    account = find(objects, "ServiceAccount", "x-overcommit-agent")
    username = f"system:serviceaccount:{account['metadata']['namespace']}:x-overcommit-agent"
    daemonset = next(o for o in objects if o["kind"] == "DaemonSet")
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == "x-overcommit-agent"
    for policy in (o for o in objects if o["kind"] == "ValidatingAdmissionPolicy"):
        condition = next(c for c in policy["spec"]["matchConditions"]
                         if c["name"] == "is-the-agent")
        assert matches_the_agent(condition["expression"], username)
        assert not matches_the_agent(condition["expression"],
                                     "system:serviceaccount:ops:x-overcommit-controller")
        assert not matches_the_agent(condition["expression"], "kubernetes-admin")


def test_the_controller_may_only_get_and_patch_the_kubevirt_cr_of_kubevirt_io() -> None:
    """The ratio manager (docs/capacity.md) reads the KubeVirt CR by name and patches
    memoryOvercommit: no list, watch, create or delete, and nothing else of KubeVirt's."""
    role = find(render(BASE), "ClusterRole", "memory-overcommit-controller")
    rules = [r for r in role["rules"] if "kubevirt.io" in r.get("apiGroups", [])]
    assert rules == [{"apiGroups": ["kubevirt.io"], "resources": ["kubevirts"],
                      "verbs": ["get", "patch"]}]


# --------------------------------------------------------------------------- KubeVirt hook

AUTODEFLATE_HOOK = "deploy/kubevirt/autodeflate-hook"


def test_the_autodeflate_hook_renders_to_the_configmap_the_docs_name(
        cluster: ControlPlane) -> None:
    """docs/ladder.md's annotation names this ConfigMap, key and hook; the script inside is the
    module (tests/unit/virt/test_autodeflate_hook.py). Applied into a namespace with VMs."""
    (configmap,) = render(AUTODEFLATE_HOOK)
    assert (configmap["kind"], configmap["metadata"]["name"]) == \
        ("ConfigMap", "memory-overcommit-autodeflate")
    module = REPO / "operator/overcommit/virt/autodeflate_hook.py"
    assert configmap["data"] == {"onDefineDomain.py": module.read_text()}
    doc = (REPO / "docs/ladder.md").read_text()
    assert '"configMap": {"name": "memory-overcommit-autodeflate", "key": "onDefineDomain.py", ' \
           '"hookPath": "/usr/bin/onDefineDomain"}' in doc
    proc = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-n", "default",
                           "-k", str(REPO / AUTODEFLATE_HOOK), check=False, timeout=120)
    assert proc.returncode == 0 and "configmap/memory-overcommit-autodeflate serverside-applied" \
        in proc.stdout, proc.stderr
