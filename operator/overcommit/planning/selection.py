"""Which policy governs a node: label-selector matching and a deterministic winner."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from overcommit.api.model import Policy
from overcommit.api.policy import LabelSelectorRequirement, SelectorOperator


class LabelTerms(Protocol):
    """The two label-selector fields, shared by ``LabelSelector`` (nodes) and ``VmSelector``
    (guests), so both match with one implementation."""

    @property
    def match_labels(self) -> Mapping[str, str] | None: ...

    @property
    def match_expressions(self) -> Sequence[LabelSelectorRequirement] | None: ...


def selector_matches(selector: LabelTerms | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics; an absent or empty selector matches everything.
    Only the label terms count: a ``VmSelector``'s namespaces and name pattern are the
    balloon planner's business."""
    if selector is None:
        return True
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    return all(_requirement_holds(req, labels) for req in selector.match_expressions or [])


def _requirement_holds(req: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    values = req.values or []
    if req.operator is SelectorOperator.IN:
        return req.key in labels and labels[req.key] in values
    if req.operator is SelectorOperator.NOT_IN:
        return req.key not in labels or labels[req.key] not in values
    if req.operator is SelectorOperator.EXISTS:
        return req.key in labels
    return req.key not in labels


def precedence_key(policy: Policy) -> tuple[int, str, str]:
    """Sort key: highest priority first, then oldest creationTimestamp, then name."""
    # An object without a timestamp (a local file) sorts after every dated one.
    stamp = policy.creation_timestamp or "~"
    return (-policy.spec.priority, stamp, policy.name)


@dataclass(frozen=True)
class Loser:
    name: str
    reason: str


@dataclass(frozen=True)
class Selection:
    winner: Policy | None
    losers: tuple[Loser, ...] = ()


def select_policy(policies: Sequence[Policy], labels: Mapping[str, str]) -> Selection:
    """The policy in force on a node with these labels, and why every other match lost."""
    matching = sorted((p for p in policies if selector_matches(p.spec.node_selector, labels)),
                      key=precedence_key)
    if not matching:
        return Selection(None)
    winner, *rest = matching
    return Selection(winner, tuple(Loser(p.name, _why_lost(p, winner)) for p in rest))


def _why_lost(loser: Policy, winner: Policy) -> str:
    if loser.spec.priority != winner.spec.priority:
        return (f"priority {loser.spec.priority} is lower than {winner.name}'s "
                f"{winner.spec.priority}")
    if (loser.creation_timestamp or "~") != (winner.creation_timestamp or "~"):
        return f"same priority; {winner.name} is older"
    return f"same priority and age; {winner.name} comes first by name"
