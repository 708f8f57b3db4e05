"""The README's main job, ``overcommit demo --once``, end to end on a simulated host root (the
real node's demo, as root, is tests/e2e/test_demo.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from testkit.lines import Lines

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
