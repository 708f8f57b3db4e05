"""``overcommit demo``: the whole operator on this one machine, start to restore.

As root on a machine with KSM (``demo.node``): a real single-node Kubernetes (kubelet,
containerd, kube-proxy, control plane) on this machine runs the operator's image, installed as
the README's Quick start says, against the real ``/sys/kernel/mm/ksm`` with a real merge
workload; Ctrl-C (or, with ``--once``, the policy applied, Ready and merging) deletes the policy,
waits for the agent pod to restore every original, uninstalls and stops the cluster.

Otherwise (or with ``--simulate``), a lighter demo on a simulated host root:

1. starts a real kube-apiserver + etcd on loopback (binaries from ``scripts/install-kube``),
2. installs the CRDs and ``deploy/manifests`` (namespace, RBAC, the node-restricted admission
   policy),
3. registers this machine as a Node and a Pod of the agent's ServiceAccount bound to it, and
   runs ``overcommit agent`` with that pod-bound token (so the shipped RBAC and admission policy
   are what it runs under), and ``overcommit controller`` under its own ServiceAccount,
4. applies ``examples/adaptive-ksm.yaml`` to a simulated host root,
5. prints ``kubectl get overcommit`` (the policy's status is the controller's fold of the node
   state) and the node state until Ctrl-C (or, with ``--once``, until the policy is applied
   and the controller marks it Ready), then deletes the policy, waits for the agent to restore
   every original setting, and stops everything.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overcommit.api.status import find_condition
from overcommit.demo.report import describe_node_state
from overcommit.localcluster.controlplane import ControlPlane, ControlPlaneError, find_binaries
from overcommit.localcluster.processes import dies_with_this_process, stop_process

# What the demo applies ships with the package (package data; in a checkout these are links to
# the repository's deploy/ and examples/), so an installed wheel runs it as a checkout does.
ASSETS = Path(__file__).resolve().parent
EXAMPLE = ASSETS / "examples" / "adaptive-ksm.yaml"
NAMESPACE = "memory-overcommit"
SIMULATED_KSM = {
    "run": "0", "pages_to_scan": "100", "sleep_millisecs": "20", "max_page_sharing": "256",
    "merge_across_nodes": "1", "use_zero_pages": "0", "smart_scan": "1",
    "advisor_mode": "[none] scan-time", "pages_shared": "0", "pages_sharing": "0",
    "full_scans": "0", "pages_scanned": "0", "ksm_zero_pages": "0",
}


class DemoError(RuntimeError):
    """Something the demo needs is missing; the message says what and where it looked."""


def asset(relative: str) -> Path:
    """A file or directory the demo ships (deploy/, examples/), or DemoError saying where."""
    path = ASSETS / relative
    if not path.exists():
        raise DemoError(f"{relative} is missing: looked for {path} (package data of "
                        "memory-overcommit-operator: reinstall it, or run from a checkout)")
    return path


def simulated_host(root: Path) -> None:
    """A host root with KSM files and this machine's /proc/meminfo, for runs without root."""
    ksm = root / "sys/kernel/mm/ksm"
    ksm.mkdir(parents=True)
    for name, value in SIMULATED_KSM.items():
        (ksm / name).write_text(value + "\n")
    (root / "proc").mkdir()
    (root / "proc/meminfo").write_text(Path("/proc/meminfo").read_text())


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


class Demo:
    def __init__(self, cp: ControlPlane, work: Path, policy_file: Path) -> None:
        self.cp, self.work, self.policy_file = cp, work, policy_file
        self.node = socket.gethostname().lower()
        self.host_root = work / "host"
        self.state_dir = work / "state"
        self.agent: subprocess.Popen[bytes] | None = None
        self.controller: subprocess.Popen[bytes] | None = None
        self.policy_names: list[str] = []

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.cp.kubectl(*args, input=input).stdout

    def install(self) -> None:
        for crd in sorted((asset("deploy/crds")).glob("memoryovercommit.io_*.yaml")):
            self.kubectl("apply", "--server-side", "-f", str(crd))
        for plural in ("memoryovercommitpolicies", "memoryovercommitnodestates"):
            self._wait_established(f"{plural}.memoryovercommit.io")
        self.kubectl("apply", "--server-side", "-k", str(asset("deploy/manifests")))
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": self.node, "labels": {"kubernetes.io/hostname": self.node}}}
        self.kubectl("apply", "-f", "-", input=json.dumps(node))

    def _wait_established(self, crd: str, timeout: float = 60.0) -> None:
        """Until the CRD is served. Polled, not ``kubectl wait``: that fails at once on a CRD
        the API server has not given a status yet (seen once in the demo's tests)."""
        query = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
        deadline = time.monotonic() + timeout
        while self.cp.kubectl("get", "crd", crd, "-o", query,
                              check=False).stdout.strip() != "True":
            if time.monotonic() > deadline:
                raise DemoError(f"CRD {crd} not Established after {timeout:.0f} s")
            time.sleep(0.2)

    def agent_kubeconfig(self) -> Path:
        """A token bound to a Pod on this node, exactly what the DaemonSet's pod would hold."""
        pod_name = f"overcommit-agent-{self.node}"
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": pod_name, "namespace": NAMESPACE},
            "spec": {"nodeName": self.node, "serviceAccountName": "overcommit-agent",
                     "containers": [{"name": "agent", "image": "memory-overcommit:dev"}]}}
        self.kubectl("apply", "-f", "-", input=json.dumps(pod))
        return self.cp.service_account_kubeconfig(NAMESPACE, "overcommit-agent",
                                                  bound_pod=pod_name)

    @staticmethod
    def ours(argv: list[str]) -> list[str]:
        """``overcommit <argv>`` stopped (SIGTERM) when the demo dies: in its own session it
        misses the terminal's Ctrl-C, so it would otherwise outlive a demo killed hard."""
        return dies_with_this_process([sys.executable, "-m", "overcommit.cli", *argv], "TERM")

    def start_agent(self) -> None:
        log = (self.work / "agent.log").open("ab")
        argv = ["agent", "--node-name", self.node,
                "--kubeconfig", str(self.agent_kubeconfig()),
                "--host-root", str(self.host_root), "--state-dir", str(self.state_dir),
                "--interval", "5", "--status-interval", "5", "-v"]
        # In its own session: a terminal's Ctrl-C is the demo's to handle, not the agent's.
        self.agent = subprocess.Popen(
            self.ours(argv),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_controller(self) -> None:
        """The controller under its own ServiceAccount (shipped RBAC): it folds the node state
        into the policy's status, which is what `kubectl get mop` shows."""
        kubeconfig = self.cp.service_account_kubeconfig(NAMESPACE, "overcommit-controller")
        log = (self.work / "controller.log").open("ab")
        argv = ["controller", "--kubeconfig", str(kubeconfig),
                "--lease-namespace", NAMESPACE, "--status-interval", "2",
                "--savings-interval", "5", "--health-port", "0", "--metrics-port", "0"]
        self.controller = subprocess.Popen(
            self.ours(argv),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def apply_policy(self) -> None:
        applied = self.kubectl("apply", "-f", str(self.policy_file), "-o", "name")
        self.policy_names = [line.rsplit("/", 1)[-1] for line in applied.split()]
        print("applied " + ", ".join(applied.split()))

    def policy_ready(self) -> bool:
        """The controller has marked every applied policy Ready (one kubectl per poll)."""
        out = self.cp.kubectl("get", "mop", *self.policy_names, "-o", "json", check=False)
        if not self.policy_names or out.returncode != 0:
            return False
        found = json.loads(out.stdout)
        items = found.get("items", [found])
        return all(find_condition(item.get("status"), "Ready").get("status") == "True"
                   for item in items)

    def status(self) -> dict[str, Any]:
        out = self.cp.kubectl("get", "mons", self.node, "-o", "json", check=False)
        if out.returncode != 0:
            return {}
        data: dict[str, Any] = json.loads(out.stdout).get("status") or {}
        return data

    def show(self) -> None:
        print(self.kubectl("get", "overcommit"))
        print(describe_node_state(self.node, self.status()))

    def applied(self) -> bool:
        status = self.status()
        return bool(status.get("policy")) and \
            find_condition(status, "Ready").get("status") == "True"

    def released(self) -> bool:
        status = self.status()
        return not status.get("originals") and not status.get("policy")

    def release(self) -> None:
        """Delete the policy and wait for the agent to put every original back. Not to be
        interrupted: a second Ctrl-C here would leave the host changed."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        print("restoring the host (Ctrl-C is ignored until this is done)", file=sys.stderr)
        self.cp.kubectl("delete", "-f", str(self.policy_file), "--ignore-not-found", check=False)
        try:
            wait_until(self.released, 60, "the agent to restore")
            print("policy deleted: the agent restored every original setting")
            self.show()
        finally:
            for process in (self.agent, self.controller):
                if process is not None:
                    stop_process(process, timeout=30)
            # Belt and braces: whatever the agent left recorded goes back now.
            from overcommit.reconcile.node import NodeReconciler

            NodeReconciler(self.host_root, self.state_dir).restore()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="overcommit demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true", help="exit once the policy is applied")
    parser.add_argument("--simulate", action="store_true",
                        help="the light demo on a simulated host root, even as root (no "
                             "kubelet, no docker image)")
    parser.add_argument("-f", "--file", default=str(EXAMPLE), help="the policy to apply")
    args = parser.parse_args(argv)
    try:
        find_binaries()
        asset("deploy/manifests")
        if args.file == str(EXAMPLE):
            asset("examples/adaptive-ksm.yaml")
    except (ControlPlaneError, DemoError) as exc:
        print(f"overcommit demo: {exc}", file=sys.stderr)
        return 2
    # SIGTERM and a closed terminal (SIGHUP) end the demo as Ctrl-C does: restore, stop.
    # SIGINT is set too: a shell without job control (a script) starts `&` jobs with it
    # ignored, and Python keeps an inherited "ignore": `kill -INT` would do nothing.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    # Each line as it is printed, also into a pipe (`scripts/demo | tee demo.log`); stderr is
    # line-buffered already.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        return run_demo(args)
    except KeyboardInterrupt:  # while starting up, before anything was changed
        print("interrupted", file=sys.stderr)
        return 130
    except TimeoutError as exc:  # the restore itself did not finish
        print(f"overcommit demo: {exc}", file=sys.stderr)
        return 1


def run_demo(args: argparse.Namespace) -> int:
    if os.geteuid() == 0 and Path("/sys/kernel/mm/ksm/run").exists() and not args.simulate:
        from overcommit.demo.node import run_on_node

        return run_on_node(ASSETS, Path(args.file), args.once)
    return run_simulated(args)


def run_simulated(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="overcommit-demo-") as tmp, ControlPlane() as cp:
        demo = Demo(cp, Path(tmp), Path(args.file))
        simulated_host(demo.host_root)
        print(f"control plane: {cp.url}; host: simulated at {demo.host_root}")
        demo.install()
        try:
            demo.start_agent()
            demo.start_controller()
            demo.apply_policy()
            wait_until(demo.applied, 60, "the agent to apply the policy")
            wait_until(demo.policy_ready, 60, "the controller to mark the policy Ready")
            if args.once:
                demo.show()
            else:
                print("running; Ctrl-C to restore and stop\n")
                while True:
                    time.sleep(10)
                    demo.show()
        except KeyboardInterrupt:
            pass
        except TimeoutError as exc:
            # What the cluster and the components said, before the temp dir goes with them.
            print(f"overcommit demo: {exc}; what they reported:\n"
                  f"{demo.kubectl('get', 'overcommit', '-o', 'wide')}", file=sys.stderr)
            for log in ("agent.log", "controller.log"):
                lines = (demo.work / log).read_text(errors="replace").splitlines()[-15:]
                print(f"--- last lines of {log}:", *lines, sep="\n", file=sys.stderr)
            return 1
        finally:
            demo.release()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
