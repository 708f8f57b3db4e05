"""Stopping the subprocesses tests, benchmarks and the demo start (agents, controllers)."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds; its exit code.

    SIGTERM first because that is what the kubelet sends: the agent and the controller must
    leave their node and their lease consistent on it, and tests check that they do.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
