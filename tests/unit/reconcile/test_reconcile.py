"""The observe -> plan -> act cycle against a fake kernel: originals, restore, crashes, faults."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from overcommit.api.model import Policy, policy_from_object
from overcommit.reconcile.node import NodeReconciler
from testkit.cases import policy_document
from testkit.fakes.kernel import FakeKernel

KSM = "sys/kernel/mm/ksm"
ZSWAP = "sys/module/zswap/parameters"


def policy(spec: dict[str, Any], name: str = "p") -> Policy:
    return policy_from_object(policy_document(name, spec))


STATIC = {"ksm": {"enabled": True, "pagesToScan": 1000, "sleepMillisecs": 10},
          "zswap": {"enabled": True, "maxPoolPercent": 30}}


@pytest.fixture
def kernel(tmp_path: Path) -> FakeKernel:
    return FakeKernel(tmp_path / "host")


def engine_for(kernel: FakeKernel, tmp_path: Path) -> NodeReconciler:
    return NodeReconciler(state_dir=tmp_path / "state", fs=kernel)


def originals_file(tmp_path: Path) -> dict[str, str]:
    data: dict[str, str] = json.loads((tmp_path / "state/originals.json").read_text())["originals"]
    return data


def test_cycle_applies_and_restore_puts_everything_back(kernel: FakeKernel,
                                                        tmp_path: Path) -> None:
    engine = engine_for(kernel, tmp_path)
    report = engine.cycle([policy(STATIC)], {})
    assert report.ok, report.errors
    assert kernel.get(f"{KSM}/pages_to_scan") == "1000"
    assert kernel.get(f"{KSM}/run") == "1"
    assert kernel.get(f"{ZSWAP}/enabled") == "Y"
    assert originals_file(tmp_path) == {
        f"{KSM}/pages_to_scan": "100", f"{KSM}/sleep_millisecs": "20", f"{KSM}/run": "0",
        f"{ZSWAP}/enabled": "N", f"{ZSWAP}/max_pool_percent": "20"}
    # a second cycle changes nothing
    assert engine.cycle([policy(STATIC)], {}).changes == []
    restored = engine.restore()
    assert restored.ok and restored.restored
    assert kernel.get(f"{KSM}/pages_to_scan") == "100"
    assert kernel.get(f"{KSM}/run") == "0"
    assert kernel.get(f"{ZSWAP}/enabled") == "N"
    assert originals_file(tmp_path) == {}


def test_originals_are_recorded_before_the_first_write(kernel: FakeKernel,
                                                       tmp_path: Path) -> None:
    engine = engine_for(kernel, tmp_path)
    seen_at_first_write: list[dict[str, str]] = []
    real_write = kernel.write

    def spying_write(rel: str, value: str) -> None:
        if not seen_at_first_write:
            seen_at_first_write.append(originals_file(tmp_path))
        real_write(rel, value)

    kernel.write = spying_write  # type: ignore[method-assign]
    engine.cycle([policy(STATIC)], {})
    assert seen_at_first_write[0][f"{KSM}/pages_to_scan"] == "100"


def test_crash_after_apply_then_restart_keeps_true_originals(kernel: FakeKernel,
                                                             tmp_path: Path) -> None:
    engine_for(kernel, tmp_path).cycle([policy(STATIC)], {})
    # the process dies here; a new one starts with a different policy on the modified node
    changed = policy({"ksm": {"enabled": True, "pagesToScan": 2000, "maxPageSharing": 256}})
    restarted = engine_for(kernel, tmp_path)
    restarted.cycle([changed], {})
    assert originals_file(tmp_path)[f"{KSM}/pages_to_scan"] == "100"
    restarted.restore()
    assert kernel.get(f"{KSM}/pages_to_scan") == "100"
    assert kernel.get(f"{KSM}/sleep_millisecs") == "20"
    assert kernel.get(f"{ZSWAP}/max_pool_percent") == "20"


def test_crash_between_recording_and_writing(kernel: FakeKernel, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_for(kernel, tmp_path)

    def die(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt  # killed right after the originals were saved

    monkeypatch.setattr(engine.host, "apply", die)
    with pytest.raises(KeyboardInterrupt):
        engine.cycle([policy(STATIC)], {})
    assert originals_file(tmp_path)[f"{KSM}/run"] == "0"
    fresh = engine_for(kernel, tmp_path)
    assert fresh.restore().ok
    assert originals_file(tmp_path) == {}
    assert kernel.get(f"{KSM}/run") == "0"


def test_settings_the_new_policy_drops_go_back(kernel: FakeKernel, tmp_path: Path) -> None:
    engine = engine_for(kernel, tmp_path)
    engine.cycle([policy(STATIC)], {})
    narrower = policy({"ksm": {"enabled": True}})
    report = engine.cycle([narrower], {})
    assert report.ok
    assert kernel.get(f"{KSM}/pages_to_scan") == "100"
    assert kernel.get(f"{ZSWAP}/enabled") == "N"
    assert kernel.get(f"{KSM}/run") == "1"
    assert originals_file(tmp_path) == {f"{KSM}/run": "0"}


def test_no_matching_policy_restores(kernel: FakeKernel, tmp_path: Path) -> None:
    engine = engine_for(kernel, tmp_path)
    selective = policy({**STATIC, "nodeSelector": {"matchLabels": {"virt": "yes"}}})
    engine.cycle([selective], {"virt": "yes"})
    assert kernel.get(f"{KSM}/run") == "1"
    report = engine.cycle([selective], {"virt": "no"})
    assert report.restored and report.selection.winner is None
    assert kernel.get(f"{KSM}/run") == "0"
    assert engine.cycle([selective], {"virt": "no"}).changes == []


def test_dry_run_changes_nothing_and_previews(kernel: FakeKernel, tmp_path: Path) -> None:
    engine = engine_for(kernel, tmp_path)
    report = engine.cycle([policy({**STATIC, "dryRun": True})], {})
    assert kernel.written() == []
    assert {c.path for c in report.changes} >= {f"{KSM}/pages_to_scan", f"{KSM}/run"}
    assert not (tmp_path / "state/originals.json").exists()


def test_ebusy_without_permission_is_reported_and_the_rest_applies(kernel: FakeKernel,
                                                                   tmp_path: Path) -> None:
    kernel.merge(shared=10, sharing=40)
    spec = {"ksm": {"enabled": True, "maxPageSharing": 512, "pagesToScan": 500}}
    report = engine_for(kernel, tmp_path).cycle([policy(spec)], {})
    assert [(e.path, e.errno) for e in report.errors] == [(f"{KSM}/max_page_sharing",
                                                           errno.EBUSY)]
    assert "allowUnmerge" in report.errors[0].reason
    assert kernel.get(f"{KSM}/pages_to_scan") == "500"
    assert kernel.get(f"{KSM}/pages_sharing") == "40"  # nothing was unmerged


def test_ebusy_with_permission_unmerges_then_restores(kernel: FakeKernel,
                                                      tmp_path: Path) -> None:
    kernel.merge(shared=10, sharing=40)
    spec = {"ksm": {"enabled": True, "maxPageSharing": 512, "allowUnmerge": True}}
    engine = engine_for(kernel, tmp_path)
    report = engine.cycle([policy(spec)], {})
    assert report.ok, report.errors
    assert kernel.get(f"{KSM}/max_page_sharing") == "512"
    assert kernel.get(f"{KSM}/run") == "1"
    kernel.merge(shared=5, sharing=5)
    assert engine.restore().ok  # restoring needs the unmerge too: permission was recorded
    assert kernel.get(f"{KSM}/max_page_sharing") == "256"


def test_one_failing_engine_does_not_stop_the_others(kernel: FakeKernel,
                                                     tmp_path: Path) -> None:
    kernel.fail_always(f"{ZSWAP}/enabled", errno.EIO)
    report = engine_for(kernel, tmp_path).cycle([policy(STATIC)], {})
    assert [e.path for e in report.errors] == [f"{ZSWAP}/enabled"]
    assert kernel.get(f"{KSM}/pages_to_scan") == "1000"


def test_uksm_node_with_a_ksm_policy_reports_missing_engine(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path / "host", uksm=True)
    report = engine_for(kernel, tmp_path).cycle([policy(STATIC)], {})
    assert [p.reason for p in report.problems] == ["EngineMissing"]
    assert "UKSM" in report.problems[0].message
    assert kernel.get(f"{ZSWAP}/enabled") == "Y"  # the other sections still apply


def test_uksm_policy_on_uksm_node(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path / "host", uksm=True)
    spec = {"uksm": {"enabled": True, "cpuGovernor": "low", "thrashThreshold": 30}}
    report = engine_for(kernel, tmp_path).cycle([policy(spec)], {})
    assert report.ok and report.plan.merge_engine == "uksm"
    assert kernel.get("sys/kernel/mm/uksm/thrash_threshold") == "30"
    assert "[low]" in kernel.get("sys/kernel/mm/uksm/cpu_governor")


def test_missing_files_are_reported_not_fatal(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path / "host", missing=[f"{KSM}/smart_scan"])
    spec = {"ksm": {"enabled": True, "smartScan": False}}
    report = engine_for(kernel, tmp_path).cycle([policy(spec)], {})
    assert report.ok
    assert [p.reason for p in report.problems] == ["SettingMissing"]
    assert kernel.get(f"{KSM}/run") == "1"


def test_advisor_originals_restore_cleanly(kernel: FakeKernel, tmp_path: Path) -> None:
    kernel.set_advisor("scan-time")
    engine = engine_for(kernel, tmp_path)
    report = engine.cycle([policy({"ksm": {"enabled": True, "pagesToScan": 700}})], {})
    assert report.ok, report.errors
    assert kernel.get(f"{KSM}/pages_to_scan") == "700"
    assert f"{KSM}/pages_to_scan" not in originals_file(tmp_path)
    restored = engine.restore()
    assert restored.ok, restored.errors
    assert "[scan-time]" in kernel.get(f"{KSM}/advisor_mode")
    assert originals_file(tmp_path) == {}


def test_adaptive_mode_runs_and_turns_advisor_off(kernel: FakeKernel, tmp_path: Path) -> None:
    kernel.set_advisor("scan-time")
    report = engine_for(kernel, tmp_path).cycle([policy({"ksm": {"mode": "Adaptive"}})], {})
    assert report.ok, report.errors
    assert kernel.get(f"{KSM}/run") == "1"
    assert "[none]" in kernel.get(f"{KSM}/advisor_mode")
    assert report.plan.adaptive is not None
    assert int(kernel.get(f"{KSM}/pages_to_scan")) == report.plan.adaptive.pages_to_scan
