"""The ladder through whole cycles on a fake kernel: it is judged every cycle (also without a
policy and in a dry run), keeps its hysteresis across cycles and policy changes, and gates the
kernel levers: zswap's onlyUnderPressure (and what restoring means for it), Adaptive KSM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from overcommit.api.model import Policy, policy_from_object
from overcommit.planning.adaptive import PLENTY_REASON, Phase
from overcommit.planning.ladder import State
from overcommit.reconcile.node import NodeReconciler
from testkit.cases import policy_document
from testkit.fakes.kernel import FakeKernel

KSM = "sys/kernel/mm/ksm"
ZSWAP = "sys/module/zswap/parameters"
GIB_KIB = 1 << 20
LADDER = {"minimumAvailable": "1Gi"}  # Critical < 1, Hard < 2, Soft < 4, Plenty > 8 GiB
PRESSURE_ZSWAP = {"zswap": {"onlyUnderPressure": True, "maxPoolPercent": 30},
                  "ladder": LADDER}


def policy(spec: dict[str, Any], name: str = "p") -> Policy:
    return policy_from_object(policy_document(name, spec))


@pytest.fixture
def kernel(tmp_path: Path) -> FakeKernel:
    return FakeKernel(tmp_path / "host")


@pytest.fixture
def engine(kernel: FakeKernel, tmp_path: Path) -> NodeReconciler:
    clock = iter(range(0, 10_000, 10))
    return NodeReconciler(state_dir=tmp_path / "state", fs=kernel,
                          clock=lambda: float(next(clock)), wall_clock=lambda: 1_700_000_000.0)


def originals(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "state/originals.json"
    if not path.exists():
        return {}
    data: dict[str, str] = json.loads(path.read_text())["originals"]
    return data


def at(kernel: FakeKernel, gib: float, *, some: float = 0.0, full: float = 0.0) -> None:
    kernel.set_memory(int(gib * GIB_KIB), some=some, full=full)


def test_zswap_only_under_pressure_is_on_in_hard_and_critical_and_restored_otherwise(
        kernel: FakeKernel, engine: NodeReconciler, tmp_path: Path) -> None:
    spec = [policy(PRESSURE_ZSWAP)]
    at(kernel, 6)
    report = engine.cycle(spec, {})
    assert report.plan.ladder is not None and report.plan.ladder.state is State.CLEAR
    assert kernel.get(f"{ZSWAP}/enabled") == "N"  # the node's own: untouched
    assert kernel.get(f"{ZSWAP}/max_pool_percent") == "30"  # the pool is ready in any state
    assert f"{ZSWAP}/enabled" not in originals(tmp_path)
    at(kernel, 3)  # Soft: still not
    assert engine.cycle(spec, {}).changes == []
    at(kernel, 1.5)  # Hard: on, and the node's value recorded first
    report = engine.cycle(spec, {})
    assert [(c.path, c.after) for c in report.changes] == [(f"{ZSWAP}/enabled", "Y")]
    assert originals(tmp_path)[f"{ZSWAP}/enabled"] == "N"
    assert any("zswap on while the ladder is Hard" in n for n in report.plan.notes)
    at(kernel, 2.2)  # above Hard's threshold, not above its exit (2.5 GiB): stays on
    assert engine.cycle(spec, {}).changes == []
    at(kernel, 2.6)  # Soft: the original back, and forgotten (the next episode records anew)
    report = engine.cycle(spec, {})
    assert [(c.path, c.after) for c in report.changes] == [(f"{ZSWAP}/enabled", "N")]
    assert f"{ZSWAP}/enabled" not in originals(tmp_path)
    assert originals(tmp_path)[f"{ZSWAP}/max_pool_percent"] == "20"
    at(kernel, 0.5)  # Critical
    assert kernel.get(f"{ZSWAP}/enabled") == "N"
    engine.cycle(spec, {})
    assert kernel.get(f"{ZSWAP}/enabled") == "Y"
    restored = engine.cycle([], {})  # the policy goes while zswap is on: everything back
    assert restored.restored and kernel.get(f"{ZSWAP}/enabled") == "N"
    assert kernel.get(f"{ZSWAP}/max_pool_percent") == "20" and originals(tmp_path) == {}


def test_a_node_that_had_zswap_on_keeps_it_on_in_every_state(
        kernel: FakeKernel, engine: NodeReconciler, tmp_path: Path) -> None:
    kernel.write(f"{ZSWAP}/enabled", "Y")
    spec = [policy(PRESSURE_ZSWAP)]
    for gib in (6, 1.5, 0.5, 3, 9):
        at(kernel, gib)
        engine.cycle(spec, {})
        assert kernel.get(f"{ZSWAP}/enabled") == "Y", gib
    assert f"{ZSWAP}/enabled" not in originals(tmp_path)


def test_plain_zswap_settings_ignore_the_ladder(kernel: FakeKernel,
                                                engine: NodeReconciler) -> None:
    at(kernel, 9)
    engine.cycle([policy({"zswap": {"enabled": True}})], {})
    assert kernel.get(f"{ZSWAP}/enabled") == "Y"


def test_the_ladder_is_judged_without_a_policy_and_in_a_dry_run(
        kernel: FakeKernel, engine: NodeReconciler) -> None:
    at(kernel, 0.9)  # defaults on 15.6 GiB: M ~500 MiB, Hard below ~1 GiB
    report = engine.cycle([], {})
    assert report.plan.ladder is not None and report.plan.ladder.state is State.HARD
    dry = policy({"dryRun": True, "ksm": {"enabled": True}, "ladder": LADDER})
    at(kernel, 0.5)
    report = engine.cycle([dry], {})
    assert report.plan.ladder is not None and report.plan.ladder.state is State.CRITICAL
    assert report.plan.ladder.relief
    assert [t.to_state for t in report.plan.ladder.transitions] == [State.CRITICAL, State.HARD]


def test_hysteresis_holds_across_cycles_and_policy_generations(
        kernel: FakeKernel, engine: NodeReconciler) -> None:
    first = policy({"ksm": {"enabled": True}, "ladder": LADDER})
    at(kernel, 1.5)
    engine.cycle([first], {})
    second = policy_from_object({**policy_document("p", {"ksm": {"enabled": False},
                                                         "ladder": LADDER}),
                                 "metadata": {"name": "p", "generation": 2}})
    at(kernel, 2.3)
    report = engine.cycle([second], {})
    assert report.plan.ladder is not None and report.plan.ladder.state is State.HARD
    assert report.plan.ladder.since == 1_700_000_000.0 and not report.plan.ladder.changed


def test_adaptive_ksm_idles_in_plenty_and_probes_under_pressure(
        kernel: FakeKernel, engine: NodeReconciler) -> None:
    adaptive = [policy({"ksm": {"mode": "Adaptive"}, "ladder": LADDER})]
    at(kernel, 12)  # Plenty (the Adaptive share of 20% of 15.6 GiB raises only Soft)
    report = engine.cycle(adaptive, {})
    assert report.plan.adaptive is not None
    assert report.plan.adaptive.phase is Phase.IDLE
    assert report.plan.adaptive.reason == PLENTY_REASON
    assert kernel.get(f"{KSM}/pages_to_scan") == "64"  # adaptive.minPagesToScan
    assert kernel.get(f"{KSM}/sleep_millisecs") == "500"  # adaptive.idleSleepMillisecs
    at(kernel, 2.5)  # Soft: 20% of MemTotal is 3.1 GiB; MemAvailable fell: probe
    report = engine.cycle(adaptive, {})
    assert report.plan.ladder is not None and report.plan.ladder.state is State.SOFT
    assert report.plan.adaptive is not None and report.plan.adaptive.phase is Phase.PROBE
