"""The agent against KubeVirt-shaped launchers on a real kubelet: the shipped KubeVirt overlay
(its DaemonSet, securityContext and mounts) finds a root and a non-root launcher's libvirt
socket under /pods, reports both guests with their VMIs, moves their balloons (Static and
Auto), proven inside each guest by its MemTotal, asks KubeVirt to migrate a guest under real
memory pressure (relief), and survives a launcher deleted mid-run.

KubeVirt cannot be built here: testkit.launcher's image is the launcher (its own libvirt
daemon on ``virtqemud-sock`` in the ``libvirt-runtime`` emptyDir, one TCG guest with KubeVirt's
domain metadata) and testkit.kubevirt provides the VMI CRD and objects; docs/local-cluster.md
("The launcher stand-in") says what that leaves out. Needs root, the node's parts, docker with
the local base image and the guest's kernel; a missing part FAILS the test naming what to
install. Only one local cluster runs per machine: the module waits for the lock.

The agent only ever gets balloon policies (no ksm/swap/zswap sections), so the host's KSM, zswap
and swappiness stay as they are; its state directory (originals of host settings) is a fresh
one of this run, so nothing another run recorded there can be restored on this host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from overcommit.localcluster.node import LocalCluster, LocalClusterError, leftovers
from testkit.cluster import require_parts
from testkit.kubevirt import (
    CRDS,
    Launcher,
    pod_memory_mib,
    set_vmi_status,
    start_launcher,
    vmi_status,
)
from testkit.launcher import LauncherError, LauncherGuest, launcher_image
from testkit.memrig import DEFAULT_FLOOR, GIB, MIB, MemoryRig, mem_available
from testkit.waiting import say, wait_for

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / "deploy" / "overlays" / "kubevirt"
AGENT_IMAGE = "memory-overcommit:e2e-launchers"  # a tag of its own: other runs build theirs
AGENT_NS = "memory-overcommit"
VM_NS = "vms"
GUEST_MIB = 384
REQUEST_MIB = 128
SELECTED = {"overcommit-e2e": "balloon"}
LOCK_WAIT = 20 * 60.0  # another session's cluster: wait for it, polling every 10 s
MIB_KB = 1024

pytestmark = [pytest.mark.slow, pytest.mark.root]

def build_agent_image() -> None:
    """The repo's Dockerfile, as tests/integration/test_image.py builds it (layers cached)."""
    revision = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=False).stdout.strip()
    proc = subprocess.run(["docker", "build", "--quiet", "--tag", AGENT_IMAGE, "--build-arg",
                           f"REVISION={revision or 'unknown'}", str(REPO)],
                          capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        pytest.fail(f"docker build of {AGENT_IMAGE} failed:\n{proc.stderr[-4000:]}",
                    pytrace=False)


@pytest.fixture(scope="module")
def images(pytestconfig: pytest.Config) -> str:
    """Both images built (or found cached); the launcher image's tag."""
    require_parts()
    started = time.monotonic()
    build_agent_image()
    agent_seconds = time.monotonic() - started
    started = time.monotonic()
    try:
        launcher = launcher_image()
    except LauncherError as e:
        pytest.fail(str(e), pytrace=False)
    say(pytestconfig, f"\nimages: {AGENT_IMAGE} {agent_seconds:.1f} s, {launcher} "
                      f"{time.monotonic() - started:.1f} s")
    return launcher


def start_cluster(config: pytest.Config) -> LocalCluster:
    """A started cluster; while another session's runs (its lock), wait and retry."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        cluster = LocalCluster()
        try:
            return cluster.start()
        except LocalClusterError as e:
            if "is running" not in str(e) or time.monotonic() > deadline:
                raise
            say(config, f"\nthe local cluster is busy ({e}); retrying in 10 s")
        time.sleep(10)


@pytest.fixture(scope="module")
def cluster(pytestconfig: pytest.Config, images: str) -> Iterator[LocalCluster]:
    local = start_cluster(pytestconfig)
    try:
        started = time.monotonic()
        local.load_image(AGENT_IMAGE)
        local.load_image(images)
        say(pytestconfig, f"\ncluster up in {local.timings['total']:.1f} s, images loaded in "
                          f"{time.monotonic() - started:.1f} s")
        yield local
    finally:
        started = time.monotonic()
        local.stop()
        say(pytestconfig, f"\ncluster stopped in {time.monotonic() - started:.1f} s")


def kustomization(state_dir: Path) -> dict[str, Any]:
    """The shipped KubeVirt overlay with this run's image, and the agent's state directory
    (hostPath) moved to one of this run's: see the module docstring."""
    state_patch = {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "overcommit-agent", "namespace": AGENT_NS},
        "spec": {"template": {"spec": {"volumes": [{
            "name": "state", "hostPath": {"path": str(state_dir), "type": "DirectoryOrCreate"}}]}}},
    }
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(OVERLAY, state_dir.parent / "overlay")],
        "images": [{"name": "memory-overcommit", "newName": AGENT_IMAGE.split(":")[0],
                    "newTag": AGENT_IMAGE.split(":")[1]}],
        "patches": [{"patch": json.dumps(state_patch)}],
    }


@pytest.fixture(scope="module")
def agent(cluster: LocalCluster, pytestconfig: pytest.Config) -> Iterator[dict[str, Any]]:
    """VMI CRDs, then the overlay (the agent decides once, at its start, whether VMIs are
    served), the node labelled as KubeVirt labels its nodes; the agent pod, Ready."""
    work = Path(tempfile.mkdtemp(prefix="ovc-e2e-launchers-"))
    state = work / "agent-state"
    try:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": list(CRDS)}))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        *[f"crd/{c['metadata']['name']}" for c in CRDS], timeout=90)
        cluster.kubectl("label", "node", cluster.node_name, "kubevirt.io/schedulable=true",
                        "--overwrite")
        overlay = work / "overlay"
        overlay.mkdir()
        (overlay / "kustomization.yaml").write_text(json.dumps(kustomization(state), indent=1))
        started = time.monotonic()
        cluster.kubectl("apply", "--server-side", "-k", str(overlay), timeout=120)
        rollout = cluster.kubectl("rollout", "status", "-n", AGENT_NS,
                                  "daemonset/overcommit-agent", "--timeout=120s", timeout=150,
                                  check=False)
        if rollout.returncode != 0:
            pytest.fail(f"the agent did not become Ready: {rollout.stderr}\n"
                        f"{diagnose(cluster, AGENT_NS)}", pytrace=False)
        say(pytestconfig, f"\nagent Ready {time.monotonic() - started:.1f} s after apply")
        yield pod_of(cluster, AGENT_NS, "app.kubernetes.io/component=agent")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def diagnose(cluster: LocalCluster, namespace: str) -> str:
    """The namespace's pods and their last log lines, for failure messages."""
    out = [cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout]
    names = cluster.kubectl("get", "pods", "-n", namespace, "-o", "name", check=False).stdout
    for name in names.split():
        logs = cluster.kubectl("logs", "-n", namespace, name, "--all-containers", "--tail=40",
                               check=False)
        out.append(f"--- {name}:\n{logs.stdout}{logs.stderr}")
    return "\n".join(out)


def pod_of(cluster: LocalCluster, namespace: str, selector: str) -> dict[str, Any]:
    pods = get(cluster, "pods", "-n", namespace, "-l", selector)["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    pod: dict[str, Any] = pods[0]
    return pod


def get(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return found


@pytest.fixture(scope="module")
def launchers(cluster: LocalCluster, images: str, agent: dict[str, Any],
              pytestconfig: pytest.Config) -> Iterator[dict[str, Launcher]]:
    """A root and a non-root launcher, their guests booted (meminfo on the console)."""
    cluster.kubectl("create", "namespace", VM_NS)
    started = time.monotonic()
    made = {
        name: start_launcher(cluster.kubectl, images, name=name, namespace=VM_NS,
                             node=cluster.node_name, root=root, guest_mib=GUEST_MIB,
                             request_mib=REQUEST_MIB, labels={**SELECTED, "role": name})
        for name, root in (("root-vm", True), ("nonroot-vm", False))}
    cluster.kubectl("wait", "--for=condition=Ready", "--timeout=120s", "-n", VM_NS,
                    *[f"pod/{launcher.pod_name}" for launcher in made.values()], timeout=150)
    for launcher in made.values():
        guest = launcher.guest(cluster.kubectl)
        guest.wait_meminfo(lambda m: "MemTotal" in m, 120, "the guest's first meminfo")
        FULL[launcher.vmi_name] = guest.meminfo() or {}
    say(pytestconfig, f"\nlaunchers Ready and guests booted in "
                      f"{time.monotonic() - started:.1f} s")
    yield made


FULL: dict[str, dict[str, int]] = {}  # each guest's meminfo at its maximum, by VMI name


def node_state(cluster: LocalCluster) -> dict[str, Any]:
    found = cluster.kubectl("get", "mons", cluster.node_name, "-o", "json", check=False)
    if found.returncode != 0:
        return {}
    status: dict[str, Any] = json.loads(found.stdout).get("status") or {}
    return status


def guests_by_domain(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    return {g.get("domain", ""): g for g in node_state(cluster).get("guests") or []}


def poke(cluster: LocalCluster) -> None:
    """Wake the agent now (a change to its Node is a watch event): its cycle otherwise
    runs every 30 s, and launchers coming and going wake nothing."""
    cluster.kubectl("label", "node", cluster.node_name, f"e2e-poke={time.monotonic_ns()}",
                    "--overwrite")


def balloon_policy(cluster: LocalCluster, name: str, balloon: dict[str, Any]) -> None:
    policy = {"apiVersion": "memoryovercommit.io/v1alpha1", "kind": "MemoryOvercommitPolicy",
              "metadata": {"name": name},
              "spec": {"nodeSelector": {"matchLabels": {"kubevirt.io/schedulable": "true"}},
                       "balloon": {"vmSelector": {"matchLabels": SELECTED},
                                   "statsPeriodSeconds": 2, **balloon}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(policy))


EVIDENCE = Path(tempfile.gettempdir()) / "ovc-e2e-launchers"


@pytest.fixture(autouse=True)
def evidence(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, the guests' consoles and the node state go to EVIDENCE/<test>/ (a
    failure's story is in the guest kernel's log and the agent's decisions)."""
    yield
    cluster: LocalCluster | None = request.node.funcargs.get("cluster")
    made: dict[str, Launcher] | None = request.node.funcargs.get("launchers")
    if cluster is None or not made or not cluster.running:
        return
    where = EVIDENCE / request.node.name
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    for launcher in made.values():
        uid = launcher.pod_uid(cluster.kubectl) if pod_exists(cluster, launcher) else ""
        if uid:
            (where / f"{launcher.vmi_name}.console").write_text(
                LauncherGuest(uid, launcher.domain).console())
    (where / "node-state.json").write_text(json.dumps(node_state(cluster), indent=1))
    (where / "agent.log").write_text(diagnose(cluster, AGENT_NS))
    (where / "events.txt").write_text(cluster.kubectl(
        "get", "events", "-A", "--sort-by=.lastTimestamp", check=False).stdout)


def pod_exists(cluster: LocalCluster, launcher: Launcher) -> bool:
    return cluster.kubectl("get", "pod", "-n", VM_NS, launcher.pod_name,
                           check=False).returncode == 0


def kb_at(percent: int) -> int:
    """A balloon target in KiB: ``percent`` of the guest's maximum, as the planner rounds."""
    return GUEST_MIB * 1024 * percent // 100


def shrunk_by(launcher: Launcher, info: Mapping[str, int]) -> int:
    """How much smaller (kB) the guest's MemTotal is than at its maximum."""
    return FULL[launcher.vmi_name]["MemTotal"] - info["MemTotal"]


def shrunk_within(launcher: Launcher, kb: int, tolerance: int
                  ) -> Callable[[Mapping[str, int]], bool]:
    """A wait_meminfo() predicate: the guest's MemTotal is ``kb`` (less than ``tolerance``
    off) below its maximum."""
    return lambda m: abs(shrunk_by(launcher, m) - kb) < tolerance


def say_peak(config: pytest.Config, cluster: LocalCluster, launcher: Launcher) -> None:
    """Log the launcher pod's memory peak (cgroup v1: memory.max_usage_in_bytes; v2:
    memory.peak) against its limit."""
    pod_uid = launcher.pod_uid(cluster.kubectl)
    for pattern in (f"memory/kubepods/**/pod{pod_uid}/memory.max_usage_in_bytes",
                    f"kubepods/**/pod{pod_uid}/memory.peak"):
        for path in Path("/sys/fs/cgroup").glob(pattern):
            peak = int(path.read_text()) / 2**20
            say(config, f"\n{launcher.vmi_name}: pod memory peak {peak:.0f} MiB, limit "
                        f"{pod_memory_mib(GUEST_MIB)} MiB")
            assert peak < pod_memory_mib(GUEST_MIB)
            return


def guest(cluster: LocalCluster, launcher: Launcher) -> LauncherGuest:
    return launcher.guest(cluster.kubectl)


# ------------------------------------------------------------------------------ the tests


def test_the_agent_runs_as_shipped_and_reports_both_guests_with_their_vmis(
        cluster: LocalCluster, agent: dict[str, Any],
        launchers: dict[str, Launcher]) -> None:
    container = agent["spec"]["containers"][0]
    assert container["image"].endswith(AGENT_IMAGE)
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"],
                                                            "add": ["DAC_OVERRIDE"]}
    assert container["securityContext"]["privileged"] is False
    assert {"name": "kubelet-pods", "mountPath": "/pods", "readOnly": True} in \
        container["volumeMounts"]
    for name, launcher in launchers.items():  # the sockets are where the agent looks
        socket = guest(cluster, launcher).socket_path
        owner = socket.lstat().st_uid
        assert (owner, oct(socket.lstat().st_mode & 0o777)) == \
            (0 if launcher.root else 107, "0o700"), name
    poke(cluster)
    expected = {launcher.domain: launcher for launcher in launchers.values()}

    def reported() -> dict[str, dict[str, Any]] | None:
        seen = guests_by_domain(cluster)
        return seen if set(expected) <= set(seen) else None

    seen = wait_for(reported, 60, f"both guests in the node state: {node_state(cluster)}")
    for domain, launcher in expected.items():
        entry = seen[domain]
        assert (entry["vmiNamespace"], entry["vmiName"], entry["vmiUid"]) == \
            (VM_NS, launcher.vmi_name, launcher.vmi_uid), entry
        assert entry["maxBytes"] == GUEST_MIB * 2**20
    assert not node_state(cluster).get("endpointsDown"), node_state(cluster)


def test_a_static_policy_moves_both_balloons_and_gives_the_memory_back(
        cluster: LocalCluster, launchers: dict[str, Launcher]) -> None:
    balloon_policy(cluster, "static-60", {"mode": "Static", "static": {"targetPercent": 60}})
    ballooned = kb_at(100) - kb_at(60)  # what the balloon takes, in kB
    for launcher in launchers.values():
        info = guest(cluster, launcher).wait_meminfo(
            shrunk_within(launcher, ballooned, 2 * MIB_KB), 60,
            f"{launcher.vmi_name}'s MemTotal to drop by {ballooned} kB")
        assert info["MemAvailable"] > 0
    # (The node state's guest sizes are details, written at most once a minute: the guests'
    # own MemTotal is the proof.)
    cluster.kubectl("delete", "mop", "static-60")
    for launcher in launchers.values():
        guest(cluster, launcher).wait_meminfo(
            shrunk_within(launcher, 0, MIB_KB), 60,
            f"{launcher.vmi_name}'s MemTotal back to its maximum")


def test_auto_mode_takes_from_the_idle_guest_down_to_its_floor_only(
        cluster: LocalCluster, launchers: dict[str, Launcher]) -> None:
    """The host is made to look short (MemAvailable below 99 % counts as short): the idle
    guest gives down to its floor (50 % of its maximum) and the busy one only what it does
    not use; inside the guests MemTotal never goes below those floors."""
    busy, idle = launchers["root-vm"], launchers["nonroot-vm"]
    busy_guest, idle_guest = guest(cluster, busy), guest(cluster, idle)
    busy_guest.eat(200)
    # The planner sees a guest through its balloon statistics (every 10 s here: no policy sets
    # the period): the host turns short once they show the busy guest's use. (On a sample
    # that predates the allocation the planner would take the busy guest for an idle one.)
    wait_for(lambda: busy_guest.balloon_stats(busy.root).get("usable", 1 << 30)
             < 200 * MIB_KB, 30, "the busy guest's use in its balloon statistics")
    floor_kb = kb_at(100) - kb_at(50)  # the most a guest may give: down to 50 %
    balloon_policy(cluster, "auto-short", {
        "mode": "Auto",
        "auto": {"hostAvailableLowPercent": 99, "hostAvailableHighPercent": 100,
                 "maxStepPercent": 100},
        # A free margin of 25 %: with the default 10 % this guest (no swap, no disk, every
        # page anonymous) was OOM-killed in 2 of 3 runs once its balloon reached its use plus
        # the margin (reported; the test is about floors, not the margin's size).
        "floor": {"minPercent": 50, "guestFreeMarginPercent": 25}})
    lowest: dict[str, int] = {}

    def settled() -> bool:
        infos = {lr.vmi_name: g.meminfo() or {} for lr, g in ((busy, busy_guest),
                                                                (idle, idle_guest))}
        for name, info in infos.items():
            if "MemTotal" in info:
                lowest[name] = min(lowest.get(name, info["MemTotal"]), info["MemTotal"])
        return shrunk_by(idle, infos[idle.vmi_name]) >= floor_kb - 2 * MIB_KB

    try:
        wait_for(settled, 150, "the idle guest to give down to its floor", interval=1)
        busy_gave = shrunk_by(busy, busy_guest.meminfo() or {})
        # Watch a few more cycles: nothing goes below a floor.
        end = time.monotonic() + 35
        while time.monotonic() < end:
            settled()
            time.sleep(1)
        for launcher in (busy, idle):
            at_floor = FULL[launcher.vmi_name]["MemTotal"] - floor_kb
            assert lowest[launcher.vmi_name] >= at_floor - 2 * MIB_KB, (
                launcher.vmi_name, lowest, at_floor)
        busy_info = busy_guest.meminfo() or {}
        # The busy guest kept what it uses plus its margin: it gave less than the idle one,
        # and still has memory available.
        assert shrunk_by(busy, busy_info) < floor_kb - 16 * MIB_KB, (busy_gave, busy_info)
        assert busy_info["MemAvailable"] >= 8 * MIB_KB, busy_info
        assert "Out of memory" not in busy_guest.console()
    finally:
        busy_guest.stop_eating()
        cluster.kubectl("delete", "mop", "auto-short")
    for launcher in (busy, idle):
        guest(cluster, launcher).wait_meminfo(
            shrunk_within(launcher, 0, MIB_KB), 60,
            f"{launcher.vmi_name}'s MemTotal back to its maximum")


def test_real_pressure_asks_kubevirt_once_to_migrate_the_guest_that_can_move(
        pytestconfig: pytest.Config, cluster: LocalCluster,
        launchers: dict[str, Launcher]) -> None:
    """Relief under real pressure: the memory rig holds host memory nothing can reclaim or
    merge until the real MemAvailable is below the policy's minimum (Critical). The agent, as
    shipped (its RBAC, the admission policy keeping it to its node's guests, a pod-bound
    token), creates one VirtualMachineInstanceMigration for the guest KubeVirt says can move,
    none for the one it says cannot, none again within the cooldown; it taints its Node
    NoSchedule while Critical lasts, PreferNoSchedule in Hard once the rig lets go, and
    removes the taint with the policy."""
    movable, pinned = launchers["root-vm"], launchers["nonroot-vm"]
    set_vmi_status(cluster.kubectl, VM_NS, pinned.vmi_name,
                   vmi_status(cluster.node_name, live_migratable=False))
    start = mem_available()
    need = DEFAULT_FLOOR + 3 * GIB
    if start < need:
        pytest.fail(f"this test needs {need >> 20} MiB MemAvailable on the host (the rig's "
                    f"floor plus room for Critical), and has {start >> 20} MiB: stop other "
                    "work on the machine", pytrace=False)
    minimum = start - GIB  # Critical below it: the rig takes MemAvailable 512 MiB below
    policy = {"apiVersion": "memoryovercommit.io/v1alpha1", "kind": "MemoryOvercommitPolicy",
              "metadata": {"name": "relief"},
              "spec": {"nodeSelector": {"matchLabels": {"kubevirt.io/schedulable": "true"}},
                       # Balloons nobody: relief is the only thing under test.
                       "balloon": {"mode": "Static", "static": {"targetPercent": 100},
                                   "vmSelector": {"matchLabels": {"overcommit-e2e": "none"}}},
                       # Critical is left above minimum + 1 %: with the default 25 % the
                       # node could never leave it here (minimum is MemAvailable less 1 GiB).
                       "ladder": {"minimumAvailable": f"{minimum >> 20}Mi",
                                  "exitMarginPercent": 1,
                                  "relief": {"cooldownSeconds": 120, "taint": True}}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(policy))

    def ladder() -> dict[str, Any]:
        found: dict[str, Any] = node_state(cluster).get("ladder") or {}
        return found

    def ours() -> list[dict[str, Any]]:
        taints = get(cluster, "node", cluster.node_name)["spec"].get("taints") or []
        return [t for t in taints if t["key"] == "memoryovercommit.io/memory-pressure"]

    def migrations() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = get(cluster, "vmim", "-n", VM_NS)["items"]
        return found

    try:
        with MemoryRig() as rig:
            reached = rig.fill_to(minimum - 512 * MIB)
            say(pytestconfig, f"\nrelief: MemAvailable {start >> 20} -> {reached >> 20} MiB, "
                              f"minimum {minimum >> 20} MiB")
            poke(cluster)
            critical_at = time.monotonic()
            wait_for(lambda: ladder().get("state") == "Critical", 60, "Critical")
            wait_for(migrations, 60, "relief to ask for a migration")
            say(pytestconfig, f"\nrelief: a migration {time.monotonic() - critical_at:.1f} s "
                              "after the rig reached its level")
            made = migrations()
            assert len(made) == 1, made
            assert made[0]["spec"] == {"vmiName": movable.vmi_name}
            assert made[0]["metadata"]["labels"]["memoryovercommit.io/node"] == \
                cluster.node_name
            shown = wait_for(lambda: ladder() if ladder().get("lastRelief") else None, 30,
                             "the node state to show the request")
            assert shown["lastRelief"]["migration"] == made[0]["metadata"]["name"]
            assert shown["taint"] == "NoSchedule" and ours()[0]["effect"] == "NoSchedule"
            # Still Critical, cycles every 2 s: nothing more is asked within the cooldown.
            end = time.monotonic() + 20
            while time.monotonic() < end:
                assert len(migrations()) == 1
                time.sleep(1)
            assert ladder().get("state") == "Critical", ladder()
            assert str(ladder().get("reliefStatus")).startswith("waiting: cooldown"), ladder()
            assert rig.tripped is None
        # The pressure went: out of Critical into Hard (MemAvailable cannot reach the 2 x
        # minimum that leaves Hard on this host), where the taint only prefers no scheduling.
        poke(cluster)
        wait_for(lambda: ladder().get("state") == "Hard"
                 and [t["effect"] for t in ours()] == ["PreferNoSchedule"], 60,
                 "Hard and a PreferNoSchedule taint once the pressure went")
        # No policy, no taint: the agent takes it off when the policy goes.
        cluster.kubectl("delete", "mop", "relief")
        poke(cluster)
        wait_for(lambda: not ours(), 60, "the taint to go with the policy")
    finally:
        cluster.kubectl("delete", "mop", "relief", "--ignore-not-found")
        cluster.kubectl("delete", "vmim", "-n", VM_NS, "--all")
        set_vmi_status(cluster.kubectl, VM_NS, pinned.vmi_name,
                       vmi_status(cluster.node_name))


def test_a_deleted_launcher_fails_only_its_own_guest(
        pytestconfig: pytest.Config, cluster: LocalCluster, agent: dict[str, Any],
        launchers: dict[str, Launcher]) -> None:
    gone, kept = launchers["root-vm"], launchers["nonroot-vm"]
    gone_pod = gone.pod_uid(cluster.kubectl)
    balloon_policy(cluster, "static-70", {"mode": "Static", "static": {"targetPercent": 70}})
    # Moved, not necessarily to 70 %: right after the Auto test the planner may still count
    # a recent (or, after the release, a phantom) use toward a guest's floor for a minute.
    guest(cluster, kept).wait_meminfo(lambda m: shrunk_by(kept, m) > 16 * MIB_KB, 60,
                                      f"{kept.vmi_name}'s balloon to move")
    cluster.kubectl("delete", "pod", "-n", VM_NS, gone.pod_name, "--wait=false")
    # The remaining guest keeps being managed: a changed policy reaches it at once (95 %: above
    # any floor the planner may still hold it at).
    balloon_policy(cluster, "static-70", {"mode": "Static", "static": {"targetPercent": 95}})
    guest(cluster, kept).wait_meminfo(
        lambda m: abs(shrunk_by(kept, m) - (kb_at(100) - kb_at(95))) < 2 * MIB_KB, 60,
        "the remaining guest to follow the changed policy")
    # While the pod terminates, its socket may still be there with no daemon behind it: the
    # policy balloons, so that endpoint is reported down; once the pod is gone it is not.
    down_seen: set[str] = set()

    def recovered() -> dict[str, Any] | None:
        poke(cluster)
        status = node_state(cluster)
        down_seen.update(status.get("endpointsDown") or [])
        domains = {g.get("domain") for g in status.get("guests") or []}
        ready = {c["type"]: c["status"] for c in status.get("conditions") or []}
        return status if (domains == {kept.domain} and not status.get("endpointsDown")
                          and ready.get("Ready") == "True") else None

    status = wait_for(recovered, 90, "the node state without the deleted launcher", interval=1)
    assert all(gone_pod in entry for entry in down_seen), down_seen
    assert not status.get("lastErrors"), status
    cluster.kubectl("wait", "--for=delete", "-n", VM_NS, f"pod/{gone.pod_name}",
                    "--timeout=60s", timeout=90)
    agent_now = get(cluster, "pod", "-n", AGENT_NS, agent["metadata"]["name"])
    assert agent_now["status"]["containerStatuses"][0]["restartCount"] == 0
    kept_pod = get(cluster, "pod", "-n", VM_NS, kept.pod_name)
    assert kept_pod["status"]["containerStatuses"][0]["restartCount"] == 0
    cluster.kubectl("delete", "mop", "static-70")
    guest(cluster, kept).wait_meminfo(lambda m: abs(shrunk_by(kept, m)) < MIB_KB, 60,
                                      "the remaining guest back to its maximum")
    # What the remaining launcher's pod cost (QEMU with the guest, the daemon): its memory
    # cgroup's peak, against the limit testkit.kubevirt gives it.
    say_peak(pytestconfig, cluster, kept)


def test_stop_leaves_no_guest_or_cluster_behind(cluster: LocalCluster,
                                                launchers: dict[str, Launcher]) -> None:
    cluster.stop()
    assert leftovers() == []
    qemus = subprocess.run(["pgrep", "-a", "-f", f"guest=({VM_NS}_)"], capture_output=True,
                           text=True, check=False).stdout
    assert qemus == "", qemus
