"""The agent's probes as the DaemonSet's kubelet sees them: a real agent process against the real
API server, on a simulated host root (the real /sys is never touched)."""

from __future__ import annotations

import uuid
from pathlib import Path

from overcommit.localcluster import ControlPlane
from overcommit.localcluster.ports import free_port
from testkit.fakes.kernel import FakeKernel
from testkit.waiting import wait_for
from tests.integration.kube import (
    agent_log,
    agent_process,
    apply,
    install_crds,
    node,
    node_state,
    policy,
    probe,
)

REPO = Path(__file__).resolve().parents[2]






def test_ready_only_after_a_cycle_and_live_while_waiting_for_the_node(
        control_plane: ControlPlane, tmp_path: Path) -> None:
    install_crds(control_plane)
    name = f"node-{uuid.uuid4().hex[:6]}"
    host = FakeKernel(tmp_path / "host")
    port = free_port()
    args = ["--health-port", str(port), "--metrics-port", "0", "--no-libvirt"]
    with agent_process(control_plane, name, host.root, tmp_path / "state", extra_args=args,
                       env={"PYTHONPATH": str(REPO / "operator")}) as agent:
        # No Node yet: nothing to do, which is not being wedged.
        first = wait_for(lambda: probe(port, "/readyz"), 60, "the agent's probes to answer")
        assert first == (503, {"cyclesCompleted": 0, "reported": False,
                               "secondsSinceLastCycle": None,
                               "cycleRunningSeconds": None, "ok": False,
                               "problem": "no cycle has completed yet"})
        assert probe(port, "/healthz") == (200, {**first[1], "ok": True, "problem": None})

        apply(control_plane, node(name))
        wait_for(lambda: (probe(port, "/readyz") or (0,))[0] == 200, 60,
                 "readiness once the first cycle completed")
        ready = probe(port, "/readyz")
        assert ready is not None and ready[1]["cyclesCompleted"] >= 1 and ready[1]["ok"] is True
        # Ready promises the cycle's report is there to read.
        assert ready[1]["reported"] is True
        assert ((node_state(control_plane, name) or {}).get("status") or {}).get("conditions")
        assert agent.poll() is None


def test_started_while_the_api_server_is_down_it_is_live_and_applies_once_it_is_back(
        control_plane: ControlPlane, tmp_path: Path) -> None:
    """A node that boots before the API server is reachable: the agent serves its probes at
    once (live, not ready), keeps asking whether to watch VMIs rather than guessing, and
    applies the policy once the API server is back."""
    install_crds(control_plane)
    name = f"node-{uuid.uuid4().hex[:6]}"
    host = FakeKernel(tmp_path / "host")
    apply(control_plane, node(name, {"pool": name}))
    apply(control_plane, policy(f"boot-{name}", {"nodeSelector": {"matchLabels": {"pool": name}},
                                                 "ksm": {"enabled": True, "pagesToScan": 777}}))
    port = free_port()
    args = ["--health-port", str(port), "--metrics-port", "0", "--no-libvirt"]
    state = tmp_path / "state"
    control_plane.stop_apiserver()
    try:
        with agent_process(control_plane, name, host.root, state, extra_args=args) as agent:
            live = wait_for(lambda: probe(port, "/healthz"), 60, "the probes, API server down")
            assert live is not None and live[0] == 200, live
            assert (probe(port, "/readyz") or (0,))[0] == 503
            wait_for(lambda: "cannot ask the API server" in agent_log(state, name), 30,
                     "the agent to say it cannot ask yet")
            control_plane.start_apiserver()
            wait_for(lambda: host.get("sys/kernel/mm/ksm/pages_to_scan") == "777", 90,
                     "the policy applied once the API server is back")
            wait_for(lambda: (probe(port, "/readyz") or (0,))[0] == 200, 30, "readiness")
            assert agent.poll() is None
    finally:
        control_plane.start_apiserver()  # no-op when running: later tests need it
    control_plane.kubectl("delete", "mop", f"boot-{name}")
