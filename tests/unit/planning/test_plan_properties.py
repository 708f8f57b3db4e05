"""Properties of the planner over random valid policies and random kernels.

1. Applying any plan to a kernel that enforces the real kernel's rules is never refused for a
   bad value (EINVAL/ERANGE): the planner emits only values the kernel takes.
2. The plan touches only settings the policy names (plus what a named setting implies:
   advisor_mode for pagesToScan, run/pages_to_scan/sleep for the managed modes).
"""

from __future__ import annotations

import errno
import tempfile
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overcommit.api.model import policy_from_object
from overcommit.host.sources import HostAdapter
from overcommit.planning.observation import Observation
from overcommit.planning.plan import plan_node
from testkit.cases import policy_document
from testkit.fakes.kernel import FakeKernel
from tests.unit.planning.strategies import valid_specs

KSM = "sys/kernel/mm/ksm"
UKSM = "sys/kernel/mm/uksm"
ZSWAP = "sys/module/zswap/parameters"

FILES = {
    ("ksm", "sleepMillisecs"): f"{KSM}/sleep_millisecs",
    ("ksm", "pagesToScan"): f"{KSM}/pages_to_scan",
    ("ksm", "maxPageSharing"): f"{KSM}/max_page_sharing",
    ("ksm", "mergeAcrossNodes"): f"{KSM}/merge_across_nodes",
    ("ksm", "useZeroPages"): f"{KSM}/use_zero_pages",
    ("ksm", "smartScan"): f"{KSM}/smart_scan",
    ("ksm", "stableNodeChainsPruneMillisecs"): f"{KSM}/stable_node_chains_prune_millisecs",
    ("ksm", "enabled"): f"{KSM}/run",
    ("ksm.advisor", "maxCpuPercent"): f"{KSM}/advisor_max_cpu",
    ("ksm.advisor", "targetScanTimeSeconds"): f"{KSM}/advisor_target_scan_time",
    ("ksm.advisor", "minPagesToScan"): f"{KSM}/advisor_min_pages_to_scan",
    ("ksm.advisor", "maxPagesToScan"): f"{KSM}/advisor_max_pages_to_scan",
    ("uksm", "enabled"): f"{UKSM}/run",
    ("uksm", "cpuGovernor"): f"{UKSM}/cpu_governor",
    ("uksm", "maxCpuPercentage"): f"{UKSM}/max_cpu_percentage",
    ("uksm", "cpuRatios"): f"{UKSM}/cpu_ratios",
    ("uksm", "evalIntervals"): f"{UKSM}/eval_intervals",
    ("uksm", "abundantThreshold"): f"{UKSM}/abundant_threshold",
    ("uksm", "thrashThreshold"): f"{UKSM}/thrash_threshold",
    ("uksm", "sleepMillisecs"): f"{UKSM}/sleep_millisecs",
    ("swap", "swappiness"): "proc/sys/vm/swappiness",
    ("zswap", "enabled"): f"{ZSWAP}/enabled",
    ("zswap", "compressor"): f"{ZSWAP}/compressor",
    ("zswap", "maxPoolPercent"): f"{ZSWAP}/max_pool_percent",
    ("zswap", "acceptThresholdPercent"): f"{ZSWAP}/accept_threshold_percent",
    ("zswap", "shrinkerEnabled"): f"{ZSWAP}/shrinker_enabled",
}


def named_paths(spec: dict[str, Any]) -> set[str]:
    """The files a spec names, computed independently of the planner."""
    named = set()
    for (section, key), path in FILES.items():
        node: Any = spec
        for part in section.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and key in node:
            named.add(path)
    ksm = spec.get("ksm")
    if isinstance(ksm, dict):
        mode = ksm.get("mode", "Static")
        if mode == "Adaptive":
            named |= {f"{KSM}/run", f"{KSM}/pages_to_scan", f"{KSM}/sleep_millisecs"}
        if mode == "KernelAdvisor":
            named |= {f"{KSM}/run"}
        if mode != "Static" or "pagesToScan" in ksm:
            named.add(f"{KSM}/advisor_mode")
    zswap = spec.get("zswap")
    if isinstance(zswap, dict) and zswap.get("onlyUnderPressure"):
        named.add(f"{ZSWAP}/enabled")  # turned on when the ladder reaches Hard
    return named


kernels = st.fixed_dictionaries({
    "uksm": st.booleans(),
    "advisor_on": st.booleans(),
    "merged": st.booleans(),
    "missing": st.sets(st.sampled_from([f"{KSM}/smart_scan", f"{KSM}/advisor_mode",
                                        f"{KSM}/ksm_zero_pages", f"{ZSWAP}/shrinker_enabled"]),
                       max_size=2),
})


def _observe(kernel: FakeKernel, adapter: HostAdapter) -> Observation:
    return Observation(time=1.0, readings=adapter.read_all(), ksmd_cpu_seconds=0.0)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(spec=valid_specs(), kernel_state=kernels)
def test_plans_are_always_accepted_by_the_kernel(spec: dict[str, Any],
                                                  kernel_state: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as root:
        kernel = FakeKernel(root, uksm=kernel_state["uksm"], missing=kernel_state["missing"])
        if not kernel_state["uksm"]:
            if kernel_state["advisor_on"] and kernel.exists(f"{KSM}/advisor_mode"):
                kernel.set_advisor("scan-time")
            if kernel_state["merged"]:
                kernel.merge(shared=100, sharing=300)
        adapter = HostAdapter(kernel)
        policy = policy_from_object(policy_document("p", spec))
        plan = plan_node(policy, _observe(kernel, adapter))
        touched = set(plan.desired)
        assert touched <= named_paths(spec), touched - named_paths(spec)
        result = adapter.apply(plan.desired, allow_unmerge=plan.allow_unmerge)
        for error in result.errors:
            assert error.errno not in (errno.EINVAL, errno.ERANGE), error
            if error.errno == errno.EBUSY:
                assert kernel_state["merged"] and not plan.allow_unmerge
        # What the plan asked for is what the kernel now says (where no error was reported).
        failed = {e.path for e in result.errors}
        now = adapter.current_settings()
        for path, value in plan.desired.items():
            if path in failed or (path.endswith("/run") and value == "2"):
                continue
            if path.startswith(UKSM) and path.endswith(("/sleep_millisecs",)):
                continue  # UKSM adapts its sleep by itself
            assert now.get(path) == value, (path, value, now.get(path))


def test_the_cycle_comes_as_often_as_the_levers_decide() -> None:
    """Adaptive KSM's and Auto ballooning's intervals shorten the cycle; a policy without them
    keeps the agent's interval; no policy, the interval too."""
    from overcommit.api.model import policy_from_object
    from overcommit.planning.plan import NodePlan, cycle_interval
    from testkit.cases import policy_document

    auto = policy_from_object(policy_document("p", {"balloon": {
        "mode": "Auto", "auto": {"intervalSeconds": 7}}}))
    static = policy_from_object(policy_document("q", {"ksm": {"enabled": True}}))
    assert cycle_interval(NodePlan(auto), 30.0) == 7.0
    assert cycle_interval(NodePlan(static), 30.0) == 30.0
    assert cycle_interval(NodePlan(None), 30.0) == 30.0
