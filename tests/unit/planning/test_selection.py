from __future__ import annotations

from typing import Any

from overcommit.api.model import Policy, policy_from_object
from overcommit.planning.selection import select_policy, selector_matches
from testkit.cases import policy_document


def _policy(name: str, priority: int = 0, selector: dict[str, Any] | None = None,
            created: str = "") -> Policy:
    doc = policy_document(name, {"priority": priority, "ksm": {"enabled": True},
                                 **({"nodeSelector": selector} if selector is not None else {})})
    if created:
        doc["metadata"]["creationTimestamp"] = created
    return policy_from_object(doc)


def test_empty_selector_matches_every_node() -> None:
    assert selector_matches(_policy("a", selector={}).spec.node_selector, {})
    assert selector_matches(_policy("a").spec.node_selector, {"x": "y"})


def test_match_labels_and_expressions() -> None:
    sel = _policy("a", selector={
        "matchLabels": {"virt": "yes"},
        "matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["a", "b"]},
            {"key": "tier", "operator": "NotIn", "values": ["db"]},
            {"key": "gpu", "operator": "DoesNotExist"},
            {"key": "kvm", "operator": "Exists"},
        ]}).spec.node_selector
    base = {"virt": "yes", "zone": "a", "kvm": ""}
    assert selector_matches(sel, base)
    assert selector_matches(sel, {**base, "tier": "web"})
    assert not selector_matches(sel, {**base, "virt": "no"})
    assert not selector_matches(sel, {**base, "zone": "c"})
    assert not selector_matches(sel, {**base, "tier": "db"})
    assert not selector_matches(sel, {**base, "gpu": "1"})
    assert not selector_matches(sel, {k: v for k, v in base.items() if k != "kvm"})


def test_highest_priority_wins_and_losers_say_why() -> None:
    low = _policy("low", priority=1)
    high = _policy("high", priority=5)
    selection = select_policy([low, high], {})
    assert selection.winner is high
    assert [(loser.name, "priority 1 is lower" in loser.reason) for loser in selection.losers] == \
        [("low", True)]


def test_ties_go_to_the_oldest_then_the_name() -> None:
    old = _policy("zeta", created="2026-01-01T00:00:00Z")
    new = _policy("alpha", created="2026-02-01T00:00:00Z")
    same_age = _policy("beta", created="2026-01-01T00:00:00Z")
    selection = select_policy([new, same_age, old], {})
    assert selection.winner is same_age  # same age as zeta, "beta" < "zeta"
    reasons = {loser.name: loser.reason for loser in selection.losers}
    assert "comes first by name" in reasons["zeta"]
    assert "is older" in reasons["alpha"]


def test_selection_is_independent_of_input_order() -> None:
    policies = [_policy(n, priority=p, created=c) for n, p, c in [
        ("a", 1, "2026-01-02T00:00:00Z"), ("b", 1, "2026-01-01T00:00:00Z"), ("c", 0, "")]]
    winners = {select_policy(list(order), {}).winner.name  # type: ignore[union-attr]
               for order in (policies, policies[::-1], policies[1:] + policies[:1])}
    assert winners == {"b"}


def test_non_matching_policies_are_not_losers() -> None:
    sel = _policy("other", priority=100, selector={"matchLabels": {"role": "db"}})
    mine = _policy("mine")
    selection = select_policy([sel, mine], {"role": "virt"})
    assert selection.winner is mine
    assert selection.losers == ()
    assert select_policy([sel], {}).winner is None
