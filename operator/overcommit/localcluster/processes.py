"""Starting and stopping the subprocesses tests, benchmarks and the demo run (control plane,
agents, controllers)."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Sequence
from typing import Any


def dies_with_this_process(argv: Sequence[str], signal_name: str = "KILL") -> list[str]:
    """``argv`` run through ``setpriv --pdeathsig``, so the kernel signals the child when this
    process dies, even killed hard (unchanged without setpriv). PR_SET_PDEATHSIG fires when the
    forking *thread* exits, so only the main thread (whose end is the process's) may use it."""
    setpriv = shutil.which("setpriv")
    if setpriv and threading.current_thread() is threading.main_thread():
        return [setpriv, "--pdeathsig", signal_name, "--", *argv]
    return list(argv)


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
