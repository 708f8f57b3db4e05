"""The agent's probes as the DaemonSet's kubelet sees them: a real agent process against the real
API server, on a simulated host root (the real /sys is never touched)."""

from __future__ import annotations

import uuid
from pathlib import Path

from overcommit.testing import ControlPlane
from tests.fakes.kernel import FakeKernel
from tests.integration.conftest import wait_for
from tests.integration.kube import agent_process, apply, free_port, install_crds, node, probe

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
        assert first == (503, {"cyclesCompleted": 0, "secondsSinceLastCycle": None,
                               "cycleRunningSeconds": None, "ok": False,
                               "problem": "no cycle has completed yet"})
        assert probe(port, "/healthz") == (200, {**first[1], "ok": True, "problem": None})

        apply(control_plane, node(name))
        wait_for(lambda: (probe(port, "/readyz") or (0,))[0] == 200, 60,
                 "readiness once the first cycle completed")
        ready = probe(port, "/readyz")
        assert ready is not None and ready[1]["cyclesCompleted"] >= 1 and ready[1]["ok"] is True
        assert agent.poll() is None
