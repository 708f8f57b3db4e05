"""Helpers for tests that run the agent against the real API server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from overcommit.localcluster import ControlPlane
from overcommit.localcluster.processes import stop_process
from testkit.cases import policy_document

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "deploy" / "crds"


def fetch(port: int, path: str) -> tuple[int, str] | None:
    """(HTTP status, body) from a server on loopback, or None while nothing answers yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:  # refused, reset or timed out: not (yet) serving
        return None


def probe(port: int, path: str) -> tuple[int, dict[str, Any]] | None:
    """(HTTP status, JSON body) of a health endpoint, or None while nothing listens yet."""
    answer = fetch(port, path)
    return None if answer is None else (answer[0], json.loads(answer[1]))


def apply(cp: ControlPlane, *objects: dict[str, Any]) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    cp.kubectl("apply", "-f", "-", input=body)


def install_crds(cp: ControlPlane) -> None:
    for path in sorted(CRDS.glob("memoryovercommit.io_*.yaml")):
        cp.kubectl("apply", "--server-side", "-f", str(path))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s",
               "crd/memoryovercommitpolicies.memoryovercommit.io",
               "crd/memoryovercommitnodestates.memoryovercommit.io")


def get_json(cp: ControlPlane, *args: str) -> Any:
    proc = cp.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def node(name: str, labels: dict[str, str] | None = None,
         annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels or {},
                         "annotations": annotations or {}}}


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return policy_document(name, spec)


def node_state(cp: ControlPlane, name: str) -> dict[str, Any] | None:
    state: dict[str, Any] | None = get_json(cp, "mons", name)
    return state


@contextmanager
def agent_process(cp: ControlPlane, node_name: str, host_root: Path, state_dir: Path,
                  kubeconfig: Path | None = None, env: dict[str, str] | None = None,
                  interval: float = 1.0, status_interval: float = 1.0,
                  extra_args: list[str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """``overcommit agent`` as its own process (so tests can kill it like a node would).
    Without ``--metrics-port`` in ``extra_args`` it serves no metrics: agents running side by
    side would all ask for the default port 9464."""
    log = open(state_dir.parent / f"agent-{node_name}.log", "a")  # noqa: SIM115
    extra = list(extra_args or [])
    if not any(arg == "--metrics-port" or arg.startswith("--metrics-port=") for arg in extra):
        extra = ["--metrics-port", "0", *extra]
    argv = [sys.executable, "-m", "overcommit.cli", "agent", "--node-name", node_name,
            "--kubeconfig", str(kubeconfig or cp.admin_kubeconfig), "--host-root",
            str(host_root), "--state-dir", str(state_dir), "--interval", str(interval),
            "--status-interval", str(status_interval), "-v", *extra]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    try:
        yield proc
    finally:
        stop_process(proc)
        log.close()


def agent_log(state_dir: Path, node_name: str) -> str:
    path = state_dir.parent / f"agent-{node_name}.log"
    return path.read_text() if path.exists() else ""
