"""Settings the kernel resets as a side effect of another write (advisor_mode -> pages_to_scan,
cpu_governor -> its preset): recorded before that write, held while it lasts, restored after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overcommit.host.uksm import EVAL_INTERVALS_NOTE
from overcommit.reconcile.node import CycleResult, NodeReconciler
from testkit.fakes.kernel import FakeKernel
from tests.unit.reconcile.test_reconcile import engine_for, originals_file, policy

KSM = "sys/kernel/mm/ksm"
UKSM = "sys/kernel/mm/uksm"
ADVISOR = {"ksm": {"mode": "KernelAdvisor"}}


@pytest.fixture
def kernel(tmp_path: Path) -> FakeKernel:
    return FakeKernel(tmp_path / "host")


@pytest.fixture
def uksm_kernel(tmp_path: Path) -> FakeKernel:
    return FakeKernel(tmp_path / "host", uksm=True)


def cycles(engine: NodeReconciler, spec: dict[str, Any], times: int) -> Iterator[CycleResult]:
    for _ in range(times):
        yield engine.cycle([policy(spec)], {})


def assert_clean(report: CycleResult, kernel: FakeKernel) -> None:
    assert report.ok, [e.as_json() for e in report.errors]
    assert kernel.failed == []


# --- KSM: advisor_mode resets pages_to_scan ---


def test_advisor_switch_records_pages_to_scan_and_restore_brings_it_back(
        kernel: FakeKernel, tmp_path: Path) -> None:
    kernel.set(f"{KSM}/pages_to_scan", "1250")
    engine = engine_for(kernel, tmp_path)
    assert_clean(engine.cycle([policy(ADVISOR)], {}), kernel)
    assert originals_file(tmp_path)[f"{KSM}/pages_to_scan"] == "1250"
    assert kernel.get(f"{KSM}/pages_to_scan") == "500"  # the advisor's starting value
    kernel.writes.clear()
    restored = engine.restore()
    assert_clean(restored, kernel)
    assert kernel.get(f"{KSM}/pages_to_scan") == "1250"
    assert kernel.get(f"{KSM}/advisor_mode") == "[none] scan-time"
    written = [rel.rpartition("/")[2] for rel in kernel.written()]
    assert written.index("advisor_mode") < written.index("pages_to_scan")
    assert originals_file(tmp_path) == {}


def test_pages_to_scan_original_recorded_before_the_advisor_write(
        kernel: FakeKernel, tmp_path: Path) -> None:
    kernel.set(f"{KSM}/pages_to_scan", "1250")
    engine = engine_for(kernel, tmp_path)
    seen: list[dict[str, str]] = []
    real_write = kernel.write

    def spying_write(rel: str, value: str) -> None:
        if rel.endswith("/advisor_mode"):
            seen.append(originals_file(tmp_path))
        real_write(rel, value)

    kernel.write = spying_write  # type: ignore[method-assign]
    engine.cycle([policy(ADVISOR)], {})
    assert seen[0][f"{KSM}/pages_to_scan"] == "1250"


@pytest.mark.parametrize("before", [
    {"ksm": {"enabled": True, "pagesToScan": 700}},
    {"ksm": {"mode": "Adaptive"}},
])
def test_switch_to_advisor_never_writes_pages_to_scan(kernel: FakeKernel, tmp_path: Path,
                                                      before: dict[str, Any]) -> None:
    kernel.set(f"{KSM}/pages_to_scan", "1250")
    engine = engine_for(kernel, tmp_path)
    assert_clean(engine.cycle([policy(before)], {}), kernel)
    kernel.writes.clear()
    for report in cycles(engine, ADVISOR, 3):
        assert_clean(report, kernel)
        assert f"{KSM}/pages_to_scan" not in {c.path for c in report.changes}
    assert f"{KSM}/pages_to_scan" not in [rel for rel, _ in kernel.writes]
    assert originals_file(tmp_path)[f"{KSM}/pages_to_scan"] == "1250"
    assert_clean(engine.restore(), kernel)
    assert kernel.get(f"{KSM}/pages_to_scan") == "1250"
    assert kernel.get(f"{KSM}/advisor_mode") == "[none] scan-time"


def test_advisor_equal_to_the_original_rate_still_restores(kernel: FakeKernel,
                                                           tmp_path: Path) -> None:
    # The advisor starts at 500 = the admin's rate: the original must survive anyway, because
    # turning the advisor off resets pages_to_scan to 100.
    kernel.set(f"{KSM}/pages_to_scan", "500")
    engine = engine_for(kernel, tmp_path)
    for report in cycles(engine, ADVISOR, 2):
        assert_clean(report, kernel)
    assert_clean(engine.restore(), kernel)
    assert kernel.get(f"{KSM}/pages_to_scan") == "500"


def test_static_rate_on_an_advisor_host_does_not_flip_flop(kernel: FakeKernel,
                                                           tmp_path: Path) -> None:
    kernel.write(f"{KSM}/advisor_mode", "scan-time")
    engine = engine_for(kernel, tmp_path)
    static = {"ksm": {"enabled": True, "pagesToScan": 700}}
    reports = list(cycles(engine, static, 3))
    for report in reports:
        assert_clean(report, kernel)
    assert reports[1].changes == reports[2].changes == []
    assert kernel.get(f"{KSM}/pages_to_scan") == "700"
    assert_clean(engine.restore(), kernel)
    assert kernel.get(f"{KSM}/advisor_mode") == "none [scan-time]"
    assert originals_file(tmp_path) == {}  # pages_to_scan belongs to the advisor again


def test_advisor_host_static_then_new_rate_keeps_no_modified_original(
        kernel: FakeKernel, tmp_path: Path) -> None:
    kernel.write(f"{KSM}/advisor_mode", "scan-time")
    engine = engine_for(kernel, tmp_path)
    engine.cycle([policy({"ksm": {"enabled": True, "pagesToScan": 700}})], {})
    assert_clean(engine.cycle([policy({"ksm": {"enabled": True, "pagesToScan": 800}})], {}),
                 kernel)
    assert f"{KSM}/pages_to_scan" not in originals_file(tmp_path)
    assert_clean(engine.restore(), kernel)
    assert originals_file(tmp_path) == {}


def test_dry_run_preview_holds_pages_to_scan_under_the_advisor(kernel: FakeKernel,
                                                               tmp_path: Path) -> None:
    engine = engine_for(kernel, tmp_path)
    engine.cycle([policy({"ksm": {"enabled": True, "pagesToScan": 700}})], {})
    engine.cycle([policy(ADVISOR)], {})
    report = engine.cycle([policy({**ADVISOR, "dryRun": True})], {})
    assert f"{KSM}/pages_to_scan" not in {c.path for c in report.changes}


# --- UKSM: cpu_governor resets its preset ---


TUNED = {"max_cpu_percentage": "50", "cpu_ratios": "30 60 MAX/2 MAX/1",
         "eval_intervals": "900 400 200 50"}


def tune(kernel: FakeKernel) -> dict[str, str]:
    for name, value in TUNED.items():
        kernel.write(f"{UKSM}/{name}", value)
    kernel.writes.clear()
    return {name: kernel.get(f"{UKSM}/{name}") for name in ("cpu_governor", *TUNED)}


def test_governor_change_restores_the_tuned_preset(uksm_kernel: FakeKernel,
                                                   tmp_path: Path) -> None:
    before = tune(uksm_kernel)
    engine = engine_for(uksm_kernel, tmp_path)
    report = engine.cycle([policy({"uksm": {"cpuGovernor": "low"}})], {})
    assert_clean(report, uksm_kernel)
    assert uksm_kernel.get(f"{UKSM}/max_cpu_percentage") == "20"  # low's preset, kept
    # Not eval_intervals: the patch's store function for it is buggy, so it is never recorded
    # (and so never written back) unless a policy names it.
    assert set(originals_file(tmp_path)) == {f"{UKSM}/{n}" for n in (
        "cpu_governor", "max_cpu_percentage", "cpu_ratios")}
    assert_clean(engine.cycle([policy({"uksm": {"cpuGovernor": "low"}})], {}), uksm_kernel)
    assert uksm_kernel.get(f"{UKSM}/max_cpu_percentage") == "20"
    uksm_kernel.writes.clear()
    restored = engine.restore()
    assert_clean(restored, uksm_kernel)
    intervals = before.pop("eval_intervals")
    assert {n: uksm_kernel.get(f"{UKSM}/{n}") for n in before} == before
    assert uksm_kernel.written()[0] == f"{UKSM}/cpu_governor"
    assert f"{UKSM}/eval_intervals" not in uksm_kernel.written()
    assert EVAL_INTERVALS_NOTE not in restored.notes
    # The custom intervals end at the original governor's preset: the documented price.
    assert uksm_kernel.get(f"{UKSM}/eval_intervals") != intervals
    assert originals_file(tmp_path) == {}


def test_governor_dropped_from_the_policy_brings_the_tuning_back(uksm_kernel: FakeKernel,
                                                                 tmp_path: Path) -> None:
    before = tune(uksm_kernel)
    engine = engine_for(uksm_kernel, tmp_path)
    engine.cycle([policy({"uksm": {"cpuGovernor": "quiet"}})], {})
    assert_clean(engine.cycle([policy({"uksm": {"thrashThreshold": 30}})], {}), uksm_kernel)
    del before["eval_intervals"]  # never recorded, never written back (the patch's bug)
    assert {n: uksm_kernel.get(f"{UKSM}/{n}") for n in before} == before
    assert set(originals_file(tmp_path)) == {f"{UKSM}/thrash_threshold"}
