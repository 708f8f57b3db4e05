"""Random policy sequences through the engine on the fake kernel, then restore: no cycle makes
a write the kernel refuses, and every setting ends exactly where it started."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overcommit.api.model import policy_from_object
from overcommit.reconcile.node import CycleResult, NodeReconciler
from testkit.cases import policy_document
from testkit.fakes.kernel import FakeKernel, scratch_parent

KSM = "sys/kernel/mm/ksm"
UKSM = "sys/kernel/mm/uksm"
GOVERNORS = ("full", "medium", "low", "quiet")
RATIOS = ["30", "60", "MAX/2", "MAX/1"]


def optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict holding any subset of ``fields``."""
    return st.fixed_dictionaries({}, optional=fields)


static = optional(enabled=st.booleans(), pagesToScan=st.sampled_from([300, 1250, 4000]),
                  sleepMillisecs=st.sampled_from([10, 20, 200]))
adaptive = st.just({"mode": "Adaptive"})
advisor = st.builds(
    lambda tuning: {"mode": "KernelAdvisor", **({"advisor": tuning} if tuning else {})},
    optional(minPagesToScan=st.sampled_from([500, 800]),
             targetScanTimeSeconds=st.sampled_from([60, 200])))
ksm_specs = st.builds(lambda ksm: {"ksm": ksm}, st.one_of(static, adaptive, advisor))
uksm_specs = st.builds(lambda uksm: {"uksm": uksm}, optional(
    cpuGovernor=st.sampled_from(GOVERNORS), maxCpuPercentage=st.sampled_from([30, 60]),
    cpuRatios=st.just(RATIOS), thrashThreshold=st.sampled_from([0, 30])))
# A step: a policy, None (nothing selects the node: restore), or "restart" (a new agent).
Step = dict[str, Any] | Literal["restart"] | None


def steps(specs: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[list[Step]]:
    return st.lists(st.one_of(specs, st.none(), st.just("restart")), min_size=1, max_size=6)


ksm_start = optional(pages=st.sampled_from(["500", "1250"]), advisor=st.just("scan-time"),
                     advisor_min=st.sampled_from(["500", "900"]))
# No custom eval_intervals: the engine never writes them unless a policy names them (the
# patch's bug), so after a governor change they end at the original governor's preset.
uksm_start = optional(governor=st.sampled_from(GOVERNORS), max_cpu=st.just("50"),
                      ratios=st.just("30 60 MAX/2 MAX/1"))


def ksm_kernel(root: Path, start: dict[str, str]) -> FakeKernel:
    kernel = FakeKernel(root)
    for name, key in (("pages_to_scan", "pages"), ("advisor_min_pages_to_scan", "advisor_min"),
                      ("advisor_mode", "advisor")):  # advisor last: it resets pages_to_scan
        if key in start:
            kernel.write(f"{KSM}/{name}", start[key])
    return kernel


def uksm_kernel(root: Path, start: dict[str, str]) -> FakeKernel:
    kernel = FakeKernel(root, uksm=True)
    for name, key in (("cpu_governor", "governor"), ("max_cpu_percentage", "max_cpu"),
                      ("cpu_ratios", "ratios"), ("eval_intervals", "intervals")):
        if key in start:  # governor first: it resets the other three
            kernel.write(f"{UKSM}/{name}", start[key])
    return kernel


def assert_accepted(report: CycleResult, kernel: FakeKernel) -> None:
    assert report.ok, [e.as_json() for e in report.errors]
    assert kernel.failed == []


def run_then_restore(kernel: FakeKernel, state: Path, sequence: list[Step]) -> None:
    kernel.writes.clear()
    engine = NodeReconciler(state_dir=state, fs=kernel)
    before = engine.host.current_settings()
    for step in sequence:
        if step == "restart":
            engine = NodeReconciler(state_dir=state, fs=kernel)
            continue
        policies = [] if step is None else [policy_from_object(policy_document("p", step))]
        for _ in range(2):  # a refused write shows up from the second cycle on
            assert_accepted(engine.cycle(policies, {}), kernel)
    assert_accepted(engine.restore(), kernel)
    after = engine.host.current_settings()
    if before.get(f"{KSM}/advisor_mode") == "scan-time":
        del before[f"{KSM}/pages_to_scan"], after[f"{KSM}/pages_to_scan"]  # the advisor's
    assert after == before
    assert engine.store.load().originals == {}
    assert engine.restore().changes == []


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(start=ksm_start, sequence=steps(ksm_specs))
def test_ksm_policy_sequences_restore_exactly(start: dict[str, str],
                                              sequence: list[Step]) -> None:
    with tempfile.TemporaryDirectory(dir=scratch_parent()) as root:
        run_then_restore(ksm_kernel(Path(root) / "host", start), Path(root) / "state",
                         sequence)


@SETTINGS
@given(start=uksm_start, sequence=steps(uksm_specs))
def test_uksm_policy_sequences_restore_exactly(start: dict[str, str],
                                               sequence: list[Step]) -> None:
    with tempfile.TemporaryDirectory(dir=scratch_parent()) as root:
        run_then_restore(uksm_kernel(Path(root) / "host", start), Path(root) / "state",
                         sequence)
