"""The README's main job, ``overcommit demo --once``, end to end on a simulated host root."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

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
