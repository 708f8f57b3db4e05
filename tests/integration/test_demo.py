"""The README's main job, ``overcommit demo --once``, end to end on a simulated host root."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from typing import IO

import pytest

from tests.integration.conftest import ksm_value

pytestmark = pytest.mark.slow


def test_the_demo_applies_reports_cluster_wide_and_restores() -> None:
    proc = subprocess.run([sys.executable, "-m", "overcommit.cli", "demo", "--once",
                           "--simulate"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # The controller folded the node state into the policy: 1 of 1 node applied, Ready.
    policy_row = next(line for line in out.splitlines()
                      if line.startswith("memoryovercommitpolicy.memoryovercommit.io/"))
    assert re.search(r"\s1/1\s.*\sTrue\s", policy_row), policy_row
    assert "ready=True (Applied)" in out
    assert "policy deleted: the agent restored every original setting" in out
    assert out.rstrip().endswith("originals (restored on exit): {}"), out[-400:]


def test_the_demo_on_the_real_ksm_restores_it(real_ksm: dict[str, str]) -> None:
    """The README's main command as root: the real /sys/kernel/mm/ksm, a real merge workload;
    on exit every KSM setting is what it was before (checked before the fixture's own restore)."""
    proc = subprocess.run([sys.executable, "-m", "overcommit.cli", "demo", "--once"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "host: this machine (real KSM)" in out, out
    applied = next(line for line in out.splitlines() if line.startswith("node state ")
                   and "ready=True" in line)
    assert re.search(r"saved=\d+\.\d(Ki|Mi|Gi)", applied), applied  # KSM merged the workload
    assert "policy deleted: the agent restored every original setting" in out
    for path, value in real_ksm.items():
        assert ksm_value(path.rsplit("/", 1)[1]) == value, path


class Lines:
    """The demo's output, line by line as it comes, read by a thread: ``select`` on a buffered
    pipe misses lines already in Python's buffer and would wait for the next write."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.seen: list[str] = []
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put("")  # the end

    def until(self, prefix: str, timeout: float) -> None:
        """Collect lines until one starts with ``prefix``; fail with all seen if none does."""
        deadline = time.monotonic() + timeout
        while not any(line.startswith(prefix) for line in self.seen):
            try:
                line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {prefix!r} within {timeout}s:\n" + "".join(self.seen))
            if not line:
                pytest.fail(f"the demo ended before {prefix!r}:\n" + "".join(self.seen))
            self.seen.append(line)

    def rest(self, timeout: float) -> str:
        """Everything, once the demo has closed its output (within ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"the demo still runs after {timeout}s:\n" + "".join(self.seen))
            if not line:
                return "".join(self.seen)
            self.seen.append(line)


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM,)],
                         ids=["ctrl-c-twice", "sigterm"])
def test_interrupted_demo_restores_and_exits_cleanly(signals: tuple[int, ...]) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group: the demo must still
    delete the policy, see the agent restore the host and exit 0 (its children may not die
    first). A second Ctrl-C while it restores is ignored; SIGTERM does what Ctrl-C does.
    The demo starts with SIGINT ignored, as a shell without job control starts an `&` job
    (this suite run from a script with `&`, say): it must honour SIGINT all the same."""
    proc = subprocess.Popen([sys.executable, "-m", "overcommit.cli", "demo", "--simulate"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,  # its own group, as a terminal gives it
                            preexec_fn=ignore_sigint)
    lines = Lines(proc)
    try:
        lines.until("running; Ctrl-C", 240)
        os.killpg(proc.pid, signals[0])
        if len(signals) > 1:
            lines.until("restoring the host", 60)
            os.killpg(proc.pid, signals[1])
        out = lines.rest(timeout=120)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    assert "policy deleted: the agent restored every original setting" in out, out
    assert "Traceback" not in out, out
    assert out.rstrip().endswith("originals (restored on exit): {}"), out[-400:]
