"""The README's main job as root, ``overcommit demo --once``: the operator's image on a real
kubelet node, installed as the Quick start says, on this machine's real KSM with a merge
workload; then restored, uninstalled and stopped, leaving the host as it was."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from overcommit.localcluster.node import leftovers
from testkit.cluster import host_file, require_parts
from testkit.lines import Lines

pytestmark = [pytest.mark.slow, pytest.mark.root]

KSM = ("run", "pages_to_scan", "sleep_millisecs", "max_page_sharing", "merge_across_nodes",
       "use_zero_pages", "smart_scan", "advisor_mode")
STATE_DIR = Path("/var/lib/memory-overcommit")
# What the demo runs and must stop: the node's components, its containerd instance, the
# control plane, and any guest.
OURS = re.compile(r"(^|/)(kubelet|kube-proxy|kube-apiserver|kube-controller-manager|"
                  r"kube-scheduler|etcd|qemu-system-[^ ]*)( |$)|containerd --config "
                  r"/var/lib/overcommit-localcluster")


def ksm() -> dict[str, str]:
    return {name: host_file(f"sys/kernel/mm/ksm/{name}") for name in KSM
            if Path("/sys/kernel/mm/ksm", name).exists()}


def our_processes() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if OURS.search(argv):
            found.append(f"{entry.name}: {argv[:120]}")
    return found


def test_the_demo_runs_the_operator_on_a_real_node_and_leaves_the_host_as_it_was() -> None:
    require_parts()
    before = ksm()
    state_dir_before = STATE_DIR.exists()
    proc = subprocess.run([sys.executable, "-m", "overcommit.cli", "demo", "--once"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OVERCOMMIT_LOCALCLUSTER_WAIT": os.environ.get(
                              "OVERCOMMIT_LOCALCLUSTER_WAIT", "0")})
    out = proc.stdout
    assert proc.returncode == 0, out[-6000:] + proc.stderr[-3000:]
    # The agent and both controller replicas ran on the node, as pods.
    pods = [line for line in out.splitlines() if line.startswith("overcommit-")]
    agents = [p for p in pods if p.startswith("overcommit-agent-")]
    controllers = [p for p in pods if p.startswith("overcommit-controller-")]
    assert agents and controllers, out
    assert all(re.search(r"\s1/1\s+Running\s", p) for p in agents + controllers), pods
    # The controller marked the policy Ready; the node merged the workload.
    policy_row = next(line for line in out.splitlines()
                      if line.startswith("memoryovercommitpolicy.memoryovercommit.io/"))
    assert re.search(r"\s1/1\s.*\sTrue\s", policy_row), policy_row
    # ...and shows what the node saves at once (SAVED was 0B for a minute: the savings pace).
    assert not re.search(r"\s0B\s", policy_row), policy_row
    # -o wide: the overcommit ratio the node supports, and the node that limits it.
    assert re.search(r"\s\d{3,}%\s+vm\s", policy_row), policy_row
    merged = next(line for line in out.splitlines() if line.startswith("node state ")
                  and "ready=True (Applied)" in line)
    assert re.search(r"saved=\d+\.\d(Ki|Mi|Gi)", merged), merged
    assert "policy deleted: the agent restored every original setting" in out
    timings = out.splitlines()[-1]
    assert timings.startswith("demo finished in ") and "cluster stopped" in timings, timings
    # Afterwards: KSM as it was, nothing of the cluster or the operator left.
    assert ksm() == before
    assert our_processes() == []
    assert leftovers() == []
    assert STATE_DIR.exists() == state_dir_before


def test_ctrl_c_while_the_demo_runs_restores_uninstalls_and_stops() -> None:
    """The demo without --once runs until Ctrl-C (here SIGINT to its process group, as a
    terminal sends it): then the policy goes, the agent pod restores the host, the operator is
    uninstalled and the cluster stopped; a second Ctrl-C meanwhile is ignored."""
    require_parts()
    before = ksm()
    proc = subprocess.Popen([sys.executable, "-m", "overcommit.cli", "demo"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = Lines(proc)
    try:
        lines.until("running; Ctrl-C", 400)
        os.killpg(proc.pid, signal.SIGINT)
        lines.until("restoring the host", 60)
        os.killpg(proc.pid, signal.SIGINT)
        out = lines.rest(timeout=240)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-5000:]
    assert "policy deleted: the agent restored every original setting" in out
    assert "Traceback" not in out, out[-5000:]
    assert ksm() == before
    assert our_processes() == [] and leftovers() == []
