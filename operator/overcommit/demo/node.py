"""``overcommit demo`` on a real single-node cluster: the operator as users install it.

As root on a machine with KSM: a real kubelet node on this machine (``localcluster.node``), the
operator's image built with docker and loaded into the node's containerd, installed exactly as
the README's Quick start says (``kubectl apply --server-side -k`` of an overlay that names the
image), the DaemonSet and the Deployment rolled out, the example policy applied with a real
merge workload on this machine's KSM; then the policy deleted, the restore waited for, the
operator uninstalled and the cluster stopped. Each phase's duration is printed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from overcommit.api.status import find_condition
from overcommit.demo.report import describe_node_state
from overcommit.localcluster.node import LocalCluster, LocalClusterError

NAMESPACE = "memory-overcommit"
IMAGE = "memory-overcommit"
STATE_DIR = Path("/var/lib/memory-overcommit")  # the DaemonSet's hostPath for the originals
ROLLOUT_TIMEOUT_S = 180


class DemoError(RuntimeError):
    """Something the demo needs is missing or failed; the message says what to do."""


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def checkout_of(assets: Path) -> Path | None:
    """The source checkout the demo's manifests come from (their ``deploy/`` is a link into
    it), when there is one with a Dockerfile to build the image from."""
    root = (assets / "deploy").resolve().parent
    return root if (root / "Dockerfile").is_file() and (root / "operator").is_dir() else None


def docker_has(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True,
                          check=False).returncode == 0


class NodeDemo:
    """One run of the demo on a LocalCluster (started by the caller)."""

    def __init__(self, cluster: LocalCluster, work: Path, assets: Path, policy_file: Path,
                 tag: str = "demo") -> None:
        self.cluster, self.work, self.assets = cluster, work, assets
        self.policy_file = policy_file
        self.image = f"{IMAGE}:{tag}"
        self.overlay = work / "overlay"
        self.node = cluster.node_name
        self.policy_names: list[str] = []
        self.timings: dict[str, float] = {}
        self.installed = False
        self.state_dir_existed = STATE_DIR.exists()

    # -- phases ----------------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        took = self.timings[name] = time.monotonic() - started
        print(f"[{took:6.1f} s] {name}")

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120.0) -> str:
        return self.cluster.kubectl(*args, input=input, check=check, timeout=timeout).stdout

    def build_image(self) -> None:
        """docker build from the checkout; from an installed package (no checkout), an image
        built beforehand under the same tag."""
        if shutil.which("docker") is None:
            raise DemoError("docker is needed to build the operator's image (Debian's docker.io)")
        source = checkout_of(self.assets)
        if source is None:
            if docker_has(self.image):
                return
            raise DemoError(f"no image {self.image} in docker and no checkout to build it from: "
                            f"docker build -t {self.image} <a checkout of the project>")
        proc = subprocess.run(["docker", "build", "-q", "-t", self.image, str(source)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise DemoError(f"docker build failed (is the base image there? "
                            f"scripts/docker-base-image makes it):\n{proc.stderr[-2000:]}")

    def write_overlay(self, base: str = "deploy/manifests") -> Path:
        """The Quick start's overlay: the shipped manifests, the image named."""
        self.overlay.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath((self.assets / base).resolve(), self.overlay)
        name, tag = self.image.split(":")
        (self.overlay / "kustomization.yaml").write_text(
            f"resources: [{target}]\nimages:\n- name: {IMAGE}\n  newName: {name}\n"
            f"  newTag: \"{tag}\"\n")
        return self.overlay

    def install(self) -> None:
        if (STATE_DIR / "originals.json").exists() and not self.state_dir_is_empty():
            raise DemoError(f"{STATE_DIR}/originals.json records settings of an earlier "
                            "installation of the operator on this host: restore them first "
                            f"(overcommit restore --state-dir {STATE_DIR})")
        self.kubectl("apply", "--server-side", "-k", str(self.write_overlay()))
        self.installed = True

    def state_dir_is_empty(self) -> bool:
        try:
            data = json.loads((STATE_DIR / "originals.json").read_text())
        except (OSError, ValueError):
            return False
        return not (data.get("originals") or data.get("guests") or data.get("statsPeriods"))

    def rolled_out(self) -> None:
        for kind in ("daemonset/overcommit-agent", "deployment/overcommit-controller"):
            self.kubectl("-n", NAMESPACE, "rollout", "status", kind,
                         f"--timeout={ROLLOUT_TIMEOUT_S}s", timeout=ROLLOUT_TIMEOUT_S + 30)

    def apply_policy(self) -> None:
        applied = self.kubectl("apply", "-f", str(self.policy_file), "-o", "name")
        self.policy_names = [line.rsplit("/", 1)[-1] for line in applied.split()]
        print("applied " + ", ".join(applied.split()))

    # -- what the cluster says -------------------------------------------------------------
    def node_state(self) -> dict[str, Any]:
        out = self.cluster.kubectl("get", "mons", self.node, "-o", "json", check=False)
        if out.returncode != 0:
            return {}
        status: dict[str, Any] = json.loads(out.stdout).get("status") or {}
        return status

    def applied(self) -> bool:
        status = self.node_state()
        return bool(status.get("policy")) and \
            find_condition(status, "Ready").get("status") == "True"

    def policy_ready(self) -> bool:
        out = self.cluster.kubectl("get", "mop", *self.policy_names, "-o", "json", check=False)
        if not self.policy_names or out.returncode != 0:
            return False
        found = json.loads(out.stdout)
        return all(find_condition(item.get("status"), "Ready").get("status") == "True"
                   for item in found.get("items", [found]))

    def merged(self) -> bool:
        return bool((self.node_state().get("saved") or {}).get("mergedBytes"))

    def policy_saved(self) -> bool:
        """The controller folded the node's saving into the policy (SAVED is not 0B)."""
        out = self.cluster.kubectl("get", "mop", *self.policy_names, "-o", "json", check=False)
        if not self.policy_names or out.returncode != 0:
            return False
        found = json.loads(out.stdout)
        return all(((item.get("status") or {}).get("saved") or {}).get("totalBytes")
                   for item in found.get("items", [found]))

    def released(self) -> bool:
        status = self.node_state()
        return bool(status) and not status.get("originals") and not status.get("policy")

    def show(self) -> None:
        print(self.kubectl("get", "overcommit", "-o", "wide"))
        print(self.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide"))
        print(describe_node_state(self.node, self.node_state()))

    # -- the end ---------------------------------------------------------------------------
    def release(self) -> None:
        """Delete the policy, wait for the agent pod to put every original back, uninstall as
        docs/operations.md says. Not to be interrupted: the caller ignores signals meanwhile."""
        if not self.installed:
            return
        with self.phase("policy deleted, originals restored"):
            self.kubectl("delete", "-f", str(self.policy_file), "--ignore-not-found",
                         check=False)
            wait_until(self.released, 90, "the agent to restore")
        print("policy deleted: the agent restored every original setting")
        self.show()
        with self.phase("uninstalled"):
            self.kubectl("delete", "-k", str(self.overlay), "--ignore-not-found", "--wait=true",
                         check=False)
        self.installed = False

    def forget_state_dir(self) -> None:
        """The DaemonSet's hostPath for the originals appears on first use; remove it when the
        demo made it and it holds nothing to restore."""
        if not self.state_dir_existed and STATE_DIR.exists() and (
                not (STATE_DIR / "originals.json").exists() or self.state_dir_is_empty()):
            shutil.rmtree(STATE_DIR, ignore_errors=True)

    def report_timeout(self, exc: BaseException) -> None:
        print(f"overcommit demo: {exc}; what the cluster reported:", file=sys.stderr)
        for args in (("get", "overcommit", "-o", "wide"),
                     ("get", "pods", "-n", NAMESPACE, "-o", "wide"),
                     ("describe", "pods", "-n", NAMESPACE)):
            proc = self.cluster.kubectl(*args, check=False)
            print(proc.stdout[-3000:] + proc.stderr[-1000:], file=sys.stderr)
        for app in ("agent", "controller"):
            logs = self.cluster.kubectl("logs", "-n", NAMESPACE, "--tail=15", "-l",
                                        f"app.kubernetes.io/component={app}", check=False)
            print(f"--- last lines of the {app}'s log:\n{logs.stdout}", file=sys.stderr)


def run_on_node(assets: Path, policy_file: Path, once: bool) -> int:
    """The whole demo on a real node; 0 when it ran and restored, 1 when something failed."""
    from overcommit.demo.workload import MergeWorkload

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="overcommit-demo-") as tmp:
        cluster = LocalCluster()
        demo = NodeDemo(cluster, Path(tmp), assets, policy_file)
        workload = MergeWorkload(workers=4, size_mib=64)
        failed = True
        try:
            try:
                demo_phases(demo, cluster, workload, once)
                failed = False
            except KeyboardInterrupt:
                failed = False
            except (TimeoutError, DemoError, LocalClusterError,
                    subprocess.SubprocessError) as exc:
                if isinstance(exc, TimeoutError) and cluster.running:
                    demo.report_timeout(exc)
                else:
                    print(f"overcommit demo: {exc}", file=sys.stderr)
        finally:  # whatever happened, also an unexpected error: restore, uninstall, stop
            code = finish(demo, cluster, workload, started, failed)
        return code


def demo_phases(demo: NodeDemo, cluster: LocalCluster, workload: Any, once: bool) -> None:
    with demo.phase("image built"):
        demo.build_image()
    with demo.phase("cluster up (etcd, kube-apiserver, containerd, kubelet, ...)"):
        cluster.start()
    print(f"node {demo.node} is Ready; API server {cluster.api_url}; "
          f"admin kubeconfig {cluster.admin_kubeconfig}")
    print(f"the agent records the host's originals in {STATE_DIR}; should the demo be "
          f"killed hard: overcommit restore --state-dir {STATE_DIR}")
    with demo.phase("image loaded into the node's containerd"):
        cluster.load_image(demo.image)
    with demo.phase("installed (kubectl apply --server-side -k)"):
        demo.install()
    with demo.phase("agent DaemonSet and controller Deployment rolled out"):
        demo.rolled_out()
    with demo.phase("merge workload started"):
        workload.start()
    with demo.phase("policy applied by the agent, Ready by the controller"):
        demo.apply_policy()
        wait_until(demo.applied, 90, "the agent to apply the policy")
        wait_until(demo.policy_ready, 60, "the controller to mark the policy Ready")
    with demo.phase("KSM merging the workload"):
        wait_until(demo.merged, 90, "KSM to merge the workload")
        # A new policy's savings are folded at the status pace (5 s), not once a minute.
        wait_until(demo.policy_saved, 30, "the controller to show the saving on the policy")
    demo.show()
    if not once:
        print("running; Ctrl-C to restore, uninstall and stop\n")
        while True:
            time.sleep(10)
            demo.show()


def finish(demo: NodeDemo, cluster: LocalCluster, workload: Any, started: float,
           failed: bool) -> int:
    """Restore, uninstall and stop whatever ran, whatever happened before. Not to be
    interrupted: a second Ctrl-C here would leave the host changed."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    print("restoring the host, uninstalling, stopping the cluster (Ctrl-C is ignored until "
          "this is done)", file=sys.stderr)
    try:
        workload.stop()
        if cluster.running:
            demo.release()
        with demo.phase("cluster stopped"):
            cluster.stop()
        demo.forget_state_dir()
    finally:
        total = time.monotonic() - started
        print(f"demo finished in {total:.1f} s: "
              + ", ".join(f"{name} {took:.1f} s" for name, took in demo.timings.items()))
    return 1 if failed else 0
