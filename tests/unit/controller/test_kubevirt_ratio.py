"""controller.kubevirt_ratio: KubeVirt's memoryOvercommit from what the nodes support."""

from __future__ import annotations

from typing import Any

import pytest

from overcommit.api.policy import CapacityKubeVirt
from overcommit.api.status import KubeVirtRatio
from overcommit.controller.kubevirt_ratio import (
    NodeView,
    configured_percent,
    decide,
    merge_patch,
)

VM = {"kubevirt.io/schedulable": "true"}
NODES = {"a": VM, "b": VM, "infra": {}}
NOW = 1_800_000_000.0
MANAGE = CapacityKubeVirt(manage=True, min_percent=100, max_percent=200, step_up_percent=10,
                          step_up_interval_seconds=3600)


def kubevirt(percent: int | None = None) -> dict[str, Any]:
    config = {} if percent is None else {"memoryOvercommit": percent}
    return {"spec": {"configuration": {"developerConfiguration": config}}}


def views(a: int | None = 130, b: int | None = 120, settled: bool = True,
          policy_b: str = "p") -> dict[str, NodeView]:
    return {"a": NodeView("p", a, settled), "b": NodeView(policy_b, b, settled),
            "infra": NodeView("other", 300, True)}


def test_the_crs_ratio_and_the_patch() -> None:
    assert configured_percent(kubevirt()) == 100  # KubeVirt's default
    assert configured_percent(kubevirt(150)) == 150
    assert merge_patch(120) == {"spec": {"configuration": {"developerConfiguration": {
        "memoryOvercommit": 120}}}}


def test_lowered_at_once_to_the_least_supported_ratio_of_kubevirts_nodes() -> None:
    decision = decide("p", MANAGE, NODES, views(), kubevirt(150), None, NOW)
    assert decision is not None and decision.set_to == 120
    assert decision.status.managed and decision.status.configured_percent == 120
    assert "b the least" in (decision.status.reason or "")
    assert decision.status.last_change == "2027-01-15T08:00:00Z"


def test_raised_by_one_step_when_settled_and_then_held_for_the_interval() -> None:
    decision = decide("p", MANAGE, NODES, views(a=190, b=180), kubevirt(100), None, NOW)
    assert decision is not None and decision.set_to == 110
    held = decide("p", MANAGE, NODES, views(a=190, b=180), kubevirt(110), decision.status,
                  NOW + 600)
    assert held is not None and held.set_to is None
    assert "held at 110% until" in (held.status.reason or "")
    assert held.recheck_in == 60.0
    later = decide("p", MANAGE, NODES, views(a=190, b=180), kubevirt(110), decision.status,
                   NOW + 3600)
    assert later is not None and later.set_to == 120


def test_not_raised_while_a_node_has_not_covered_its_window() -> None:
    decision = decide("p", MANAGE, NODES, views(a=190, b=180, settled=False), kubevirt(100),
                      None, NOW)
    assert decision is not None and decision.set_to is None
    assert "evidence" in (decision.status.reason or "")


def test_lowering_does_not_wait_for_settled_evidence_or_the_interval() -> None:
    previous = KubeVirtRatio(last_change="2027-01-15T07:59:00Z")
    decision = decide("p", MANAGE, NODES, views(a=105, settled=False), kubevirt(150),
                      previous, NOW)
    assert decision is not None and decision.set_to == 105


@pytest.mark.parametrize("low,high,supported,expected", [
    (100, 150, 300, 150), (120, 200, 105, 120), (100, 200, 160, 160)])
def test_bounds(low: int, high: int, supported: int, expected: int) -> None:
    spec = CapacityKubeVirt(manage=True, min_percent=low, max_percent=high,
                            step_up_percent=900)
    decision = decide("p", spec, NODES, views(a=supported, b=supported), kubevirt(100), None,
                      NOW)
    assert decision is not None
    assert decision.status.target_percent == expected


def test_not_managed_unless_the_policy_is_in_force_on_every_vm_node() -> None:
    decision = decide("p", MANAGE, NODES, views(policy_b="q"), kubevirt(150), None, NOW)
    assert decision is not None and decision.set_to is None and not decision.status.managed
    assert "not in force on 1 of the 2 nodes" in (decision.status.reason or "")
    silent = decide("p", MANAGE, NODES, views(b=None), kubevirt(150), None, NOW)
    assert silent is not None and silent.set_to is None
    assert "report no capacity" in (silent.status.reason or "")
    none = decide("p", MANAGE, {"infra": {}}, views(), kubevirt(150), None, NOW)
    assert none is not None and "no node" in (none.status.reason or "")


def test_without_management_the_ratio_is_reported_not_set() -> None:
    decision = decide("p", None, NODES, views(), kubevirt(150), None, NOW)
    assert decision is not None and decision.set_to is None
    assert (decision.status.managed, decision.status.configured_percent,
            decision.status.target_percent) == (False, 150, 120)
    # a policy that neither manages nor covers KubeVirt's nodes has nothing to say
    assert decide("p", None, NODES, views(policy_b="q"), kubevirt(150), None, NOW) is None


def test_no_kubevirt_cr() -> None:
    decision = decide("p", MANAGE, NODES, views(), None, None, NOW)
    assert decision is not None and decision.set_to is None
    assert decision.status.reason == "no KubeVirt CR found"
