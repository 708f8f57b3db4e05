"""Local mode on the real /sys/kernel/mm/ksm (root): apply, read back, crash, restore, merge."""

from __future__ import annotations

import json
import mmap
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from overcommit.api.policy import KsmAdaptive
from overcommit.demo.workload import MergeWorkload
from overcommit.localcluster.processes import stop_process
from testkit.cases import policy_document
from testkit.waiting import wait_for
from tests.integration.conftest import ksm_value

KSM = "sys/kernel/mm/ksm"


def overcommit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "overcommit.cli", *args], capture_output=True,
                          text=True, timeout=120)


def write_policy(path: Path, spec: dict[str, Any], name: str = "real") -> str:
    path.write_text(yaml.safe_dump(policy_document(name, spec)))
    return str(path)


def differ(original: str) -> str:
    return "1" if original == "0" else "0"


def test_run_once_applies_and_restore_brings_back_every_original(
        real_ksm: dict[str, str], tmp_path: Path) -> None:
    spec = {"ksm": {"enabled": True, "pagesToScan": 1234, "sleepMillisecs": 37,
                    "useZeroPages": ksm_value("use_zero_pages") == "0",
                    "stableNodeChainsPruneMillisecs": 2345}}
    policy = write_policy(tmp_path / "p.yaml", spec)
    state = ["--state-dir", str(tmp_path / "state")]
    done = overcommit("run", "--once", "-f", policy, *state, "-o", "json")
    assert done.returncode == 0, done.stderr + done.stdout
    assert (ksm_value("pages_to_scan"), ksm_value("sleep_millisecs"), ksm_value("run")) == \
        ("1234", "37", "1")
    assert ksm_value("use_zero_pages") == differ(real_ksm[f"{KSM}/use_zero_pages"])
    assert ksm_value("stable_node_chains_prune_millisecs") == "2345"
    recorded = json.loads((tmp_path / "state/originals.json").read_text())["originals"]
    # KSM is machine-wide: another tenant may already run it or use one of our values, and
    # only what the run changed is an original to keep
    targets = {"pages_to_scan": "1234", "sleep_millisecs": "37", "run": "1",
               "use_zero_pages": differ(real_ksm[f"{KSM}/use_zero_pages"]),
               "stable_node_chains_prune_millisecs": "2345"}
    changed = {f"{KSM}/{name}": real_ksm[f"{KSM}/{name}"] for name, value in targets.items()
               if real_ksm[f"{KSM}/{name}"] != value}
    assert recorded == changed

    restored = overcommit("restore", *state, "-o", "json")
    assert restored.returncode == 0, restored.stderr
    for path, value in real_ksm.items():
        assert ksm_value(path.rsplit("/", 1)[1]) == value, path


def test_killed_agent_then_restart_keeps_true_originals(real_ksm: dict[str, str],
                                                        tmp_path: Path) -> None:
    first = write_policy(tmp_path / "a.yaml", {"ksm": {"enabled": True, "pagesToScan": 777}})
    state = ["--state-dir", str(tmp_path / "state")]
    loop = subprocess.Popen([sys.executable, "-m", "overcommit.cli", "run", "-f", first,
                             "--interval", "0.2", *state], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: ksm_value("pages_to_scan") == "777", 30, "the loop to apply")
    finally:
        loop.send_signal(signal.SIGKILL)  # no cleanup at all: a crash
        loop.wait()
    # a restarted agent with another policy must not take our 777 for the original
    second = write_policy(tmp_path / "b.yaml", {"ksm": {"enabled": True, "pagesToScan": 888,
                                                         "sleepMillisecs": 55}})
    again = overcommit("run", "--once", "-f", second, *state)
    assert again.returncode == 0, again.stderr
    assert ksm_value("pages_to_scan") == "888"
    recorded = json.loads((tmp_path / "state/originals.json").read_text())["originals"]
    assert recorded[f"{KSM}/pages_to_scan"] == real_ksm[f"{KSM}/pages_to_scan"]
    assert overcommit("restore", *state).returncode == 0
    for path, value in real_ksm.items():
        assert ksm_value(path.rsplit("/", 1)[1]) == value, path


def test_real_merging_is_reported_as_saved_bytes(real_ksm: dict[str, str],
                                                 tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "p.yaml", {"ksm": {"enabled": True, "pagesToScan": 2000,
                                                          "sleepMillisecs": 10}})
    state = ["--state-dir", str(tmp_path / "state")]
    with MergeWorkload(workers=3, size_mib=32) as workload:
        assert overcommit("run", "--once", "-f", policy, *state).returncode == 0
        target = workload.achievable_sharing
        wait_for(lambda: int(ksm_value("pages_sharing")) >= 0.95 * target, 90,
                 f"pages_sharing to reach 95% of {target}")
        before = int(ksm_value("pages_sharing")) + int(ksm_value("ksm_zero_pages"))
        status = overcommit("status", *state, "-o", "json")
        after = int(ksm_value("pages_sharing")) + int(ksm_value("ksm_zero_pages"))
    data = json.loads(status.stdout)
    saved = data["saved"]["mergedBytes"]
    assert min(before, after) * mmap.PAGESIZE <= saved <= max(before, after) * mmap.PAGESIZE
    assert saved >= 0.95 * target * mmap.PAGESIZE
    # nothing but the workload's identical pages can merge this much: no over-reporting
    assert data["counters"]["ksm"]["pages_sharing"] <= target * 1.05
    assert overcommit("restore", *state).returncode == 0


def test_adaptive_mode_merges_then_idles(real_ksm: dict[str, str], tmp_path: Path) -> None:
    # This machine has most of its memory free: the ladder would call that Plenty and keep
    # KSM at its idle trickle (tests/integration/test_ladder_real.py); Plenty only above
    # 100 x M keeps the node in Clear, where Adaptive scans while merging pays.
    policy = write_policy(tmp_path / "p.yaml", {"ksm": {"mode": "Adaptive",
                                                          "adaptive": {"intervalSeconds": 1}},
                                                  "ladder": {"plentyPercent": 10000}})
    state = ["--state-dir", str(tmp_path / "state")]
    with MergeWorkload(workers=3, size_mib=32) as workload:
        # Its per-cycle reports go to a file: a pipe nobody reads fills up and blocks the loop.
        with open(tmp_path / "run.log", "w") as log:
            loop = subprocess.Popen([sys.executable, "-m", "overcommit.cli", "run", "-f",
                                     policy, *state, "-o", "json"], stdout=log,
                                    stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: int(ksm_value("pages_sharing")) >= 0.9 *
                     workload.achievable_sharing, 90, "adaptive KSM to merge 90%")
            idle = KsmAdaptive()
            wait_for(lambda: ksm_value("pages_to_scan") == str(idle.min_pages_to_scan), 90,
                     "adaptive KSM to back off to its idle trickle once merging stops paying")
            assert ksm_value("sleep_millisecs") == str(idle.idle_sleep_millisecs)
        finally:
            stop_process(loop, timeout=30)
    assert overcommit("restore", *state).returncode == 0
    for path, value in real_ksm.items():
        assert ksm_value(path.rsplit("/", 1)[1]) == value, path


def test_policy_switches_through_the_advisor_restore_exactly_on_the_real_kernel(
        real_ksm: dict[str, str], tmp_path: Path) -> None:
    """The real kernel resets pages_to_scan when advisor_mode changes and refuses it (EINVAL)
    while the advisor runs: Static -> KernelAdvisor -> Static -> restore must see no refused
    write and bring every original back, pages_to_scan included."""
    if not Path("/sys/kernel/mm/ksm/advisor_mode").exists():
        pytest.fail("this kernel has no KSM advisor (advisor_mode, Linux 6.9+): this test "
                    "needs one", pytrace=False)
    # A host tuned by hand: the advisor's resets would put 100 (the default) back instead.
    Path("/sys/kernel/mm/ksm/pages_to_scan").write_text("1250")
    originals = {**real_ksm, f"{KSM}/pages_to_scan": "1250"}
    state = ["--state-dir", str(tmp_path / "state")]
    static = write_policy(tmp_path / "static.yaml",
                          {"ksm": {"enabled": True, "pagesToScan": 1111}})
    advisor = write_policy(tmp_path / "advisor.yaml",
                           {"ksm": {"enabled": True, "mode": "KernelAdvisor"}})
    for policy, expected in ((static, "1111"), (advisor, None), (advisor, None),
                             (static, "1111")):
        done = overcommit("run", "--once", "-f", policy, *state, "-o", "json")
        assert done.returncode == 0, done.stderr + done.stdout
        if expected is None:
            assert ksm_value("advisor_mode") == "scan-time"
        else:
            assert (ksm_value("advisor_mode"), ksm_value("pages_to_scan")) == ("none", expected)
    assert overcommit("run", "--once", "-f", advisor, *state).returncode == 0
    restored = overcommit("restore", *state, "-o", "json")
    assert restored.returncode == 0, restored.stderr
    for path, value in originals.items():
        assert ksm_value(path.rsplit("/", 1)[1]) == value, path
