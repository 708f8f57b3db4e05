"""Pure folding: a policy, the nodes and their node states -> that policy's status.

No I/O and no clock (the caller passes ``now``), so every rule here is unit-tested directly.

Each node lands in one bucket per policy: *applied* (the node runs the policy's current
generation without problems), *failed* (it runs it but reports a problem: Ready=False, or
Degraded=True), *pending* (the selector matches but the node has not reported the current
generation yet) or *overridden* (a higher-priority policy won there). The conditions follow
kstatus: ``Stalled`` when a node failed, ``Reconciling`` while nodes are pending, ``Ready`` when
neither; each carries the generation it describes.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from overcommit.api.model import PolicyError, policy_from_object
from overcommit.api.policy import CapacitySpec, LabelSelector
from overcommit.api.schema import fit, meta_of, parse
from overcommit.api.status import (
    FALSE,
    TRUE,
    Condition,
    NodeCapacity,
    NodeCounts,
    NodeProblem,
    NodeStateStatus,
    PolicyCapacity,
    PolicyRef,
    PolicyStatus,
    Saved,
    condition,
    condition_of,
    without_timestamps,
)
from overcommit.planning.selection import selector_matches
from overcommit.units import human_bytes

Labels = Mapping[str, str]

MAX_PROBLEMS = meta_of(PolicyStatus, "problems").max_items or 0
NAMES_IN_MESSAGE = 5
# A node's Degraded=InvalidPolicy is about some *other* policy the agent could not parse; that
# policy gets its own Stalled=InvalidPolicy from the controller's own parse.
FOREIGN_REASONS = frozenset({"InvalidPolicy"})
CONDITION_TYPES = ("Ready", "Reconciling", "Stalled")
NO_SAVINGS = Saved(0, 0, 0, 0, 0)


# -- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CapacitySummary:
    """What folding keeps of a node's capacity (bytes; the ratio in percent)."""

    supported_percent: int
    settled: bool
    physical: int = 0
    committed: int = 0
    counted: int = 0
    headroom: int = 0


def capacity_summary(capacity: NodeCapacity | None) -> CapacitySummary | None:
    if capacity is None or capacity.supported_percent is None:
        return None
    evidence = capacity.evidence
    return CapacitySummary(
        supported_percent=capacity.supported_percent,
        settled=bool(evidence is not None and evidence.settled),
        physical=capacity.physical_bytes or 0, committed=capacity.guest_committed_bytes or 0,
        counted=capacity.counted_bytes or 0, headroom=capacity.headroom_bytes or 0)


@dataclass(frozen=True, slots=True)
class NodeSummary:
    """What the controller keeps of one node state, whatever that object's size."""

    node: str
    uid: str = ""
    policy: PolicyRef | None = None
    overridden: tuple[str, ...] = ()
    ready: bool | None = None  # the node's Ready condition; None: not reported (yet)
    problem: tuple[str, str] | None = None  # (reason, message) when the node has a problem
    saved: Saved = NO_SAVINGS
    capacity: CapacitySummary | None = None

    def policies(self) -> set[str]:
        """Every policy whose status this summary can change."""
        return {*self.overridden, *([self.policy.name] if self.policy and self.policy.name
                                    else [])}


def node_summary(obj: Mapping[str, Any]) -> NodeSummary:
    """The summary of one MemoryOvercommitNodeState object (as the API server returns it)."""
    meta = obj.get("metadata") or {}
    status = _folded_part(obj.get("status"))
    ready = condition_of(status, "Ready")
    return NodeSummary(
        node=_intern(str(meta.get("name", ""))), uid=str(meta.get("uid", "")),
        policy=_interned(status.policy),
        overridden=tuple(_intern(o.name) for o in status.overridden or () if o.name),
        ready=READY.get(ready.status),
        problem=_problem(ready, condition_of(status, "Degraded")),
        saved=status.saved or NO_SAVINGS, capacity=capacity_summary(status.capacity))


# The part of a node state folding reads; the rest (settings, counters, guests) can be large.
_WIRE_FOLDED = frozenset({"policy", "overridden", "conditions", "saved", "capacity"})
READY = {TRUE: True, FALSE: False}  # else: not reported (yet)


def _folded_part(raw: Any) -> NodeStateStatus:
    """The fields folding reads, typed; what the schema cannot vouch for reads as nothing."""
    if not isinstance(raw, Mapping):
        return NodeStateStatus()
    return parse(NodeStateStatus, {k: v for k, v in raw.items() if k in _WIRE_FOLDED}) \
        or NodeStateStatus()


def _interned(policy: PolicyRef | None) -> PolicyRef | None:
    if policy is None:
        return None
    return PolicyRef(_intern(policy.name), _intern(policy.uid), policy.generation)


def _intern(text: str | None) -> str:
    # Thousands of summaries repeat the same policy names and reasons: keep one copy of each.
    return sys.intern(text or "")


def _problem(ready: Condition, degraded: Condition) -> tuple[str, str] | None:
    """(reason, message) of what is wrong on the node: Ready=False, else Degraded=True about
    this node (not about some other policy it could not parse)."""
    if ready.status == FALSE:
        found = (ready.reason or "NotReady", ready.message or "")
    elif degraded.holds and degraded.reason not in FOREIGN_REASONS:
        found = (degraded.reason or "Degraded", degraded.message or "")
    else:
        return None
    return sys.intern(found[0]), found[1]


@dataclass(frozen=True)
class PolicyView:
    """What folding needs of a policy: identity, generation, selector, and its last status."""

    name: str
    uid: str = ""
    generation: int = 0
    selector: LabelSelector | None = None
    dry_run: bool = False
    error: str | None = None  # why the spec is invalid (admission bypassed); None when valid
    status: PolicyStatus = field(default_factory=PolicyStatus)
    capacity: CapacitySpec | None = None

    def matches(self, labels: Labels) -> bool:
        return self.error is None and selector_matches(self.selector, labels)


def policy_view(obj: Mapping[str, Any]) -> PolicyView:
    meta = obj.get("metadata") or {}
    name, uid = str(meta.get("name", "")), str(meta.get("uid", ""))
    generation = int(meta.get("generation") or 0)
    status = parse(PolicyStatus, obj.get("status") or {}) or PolicyStatus()
    try:
        policy = policy_from_object(obj, "")
    except PolicyError as err:
        return PolicyView(name, uid, generation, error="; ".join(err.errors), status=status)
    return PolicyView(name, uid, generation, policy.spec.node_selector, policy.spec.dry_run,
                      status=status, capacity=policy.spec.capacity)


# -- tally -----------------------------------------------------------------------------------


@dataclass
class Tally:
    """The policy's nodes, bucketed."""

    matched: int = 0
    applied: int = 0
    overridden: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # node, reason, message
    pending: list[str] = field(default_factory=list)
    saved: Saved = NO_SAVINGS
    capacity: dict[str, CapacitySummary] = field(default_factory=dict)  # by node


def tally(policy: PolicyView, reports: Mapping[str, NodeSummary],
          nodes: Mapping[str, Labels]) -> Tally:
    """Bucket every existing node for ``policy`` (reports of vanished nodes are ignored)."""
    result = Tally()
    seen: set[str] = set()
    for report in reports.values():
        if report.node not in nodes:
            continue
        if _in_force(policy, report):
            seen.add(report.node)
            result.saved += report.saved
            if report.capacity is not None:
                result.capacity[report.node] = report.capacity
            _classify(policy, report, result)
        elif policy.name in report.overridden:
            seen.add(report.node)
            result.overridden += 1
    for name, labels in nodes.items():
        if policy.matches(labels):
            result.matched += 1
            if name not in seen:
                result.pending.append(name)
    return result


def _in_force(policy: PolicyView, report: NodeSummary) -> bool:
    ref = report.policy
    return ref is not None and ref.name == policy.name and ref.uid in (None, "", policy.uid)


def _classify(policy: PolicyView, report: NodeSummary, result: Tally) -> None:
    generation = report.policy.generation if report.policy else None
    current = generation == policy.generation and report.ready is not None
    if not current:
        result.pending.append(report.node)
    elif report.problem is not None:
        result.failed.append((report.node, *report.problem))
    else:
        result.applied += 1


# -- conditions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """(status, reason, message) for each kstatus condition."""

    ready: tuple[str, str, str]
    reconciling: tuple[str, str, str]
    stalled: tuple[str, str, str]


NOT_RECONCILING = ("False", "UpToDate", "every matched node reports the current generation")
NOT_STALLED = ("False", "NoFailures", "no node reports a problem")


def verdict(policy: PolicyView, counts: Tally) -> Verdict:
    if policy.error is not None:
        why = f"the policy is invalid and no node applies it: {policy.error}"
        return Verdict(("False", "InvalidPolicy", why),
                       ("False", "InvalidPolicy", "nothing to reconcile until the spec is fixed"),
                       ("True", "InvalidPolicy", why))
    if counts.failed:
        reason = _top_reason(r for _, r, _ in counts.failed)
        message = _failure_message(counts)
        return Verdict(("False", reason, message), ("False", "Failed", message),
                       ("True", reason, message))
    if counts.pending:
        message = (f"{len(counts.pending)} node(s) have not reported generation "
                   f"{policy.generation} yet ({counts.matched} matched): "
                   f"{_names(counts.pending)}")
        return Verdict(("False", "Progressing", message), ("True", "Progressing", message),
                       NOT_STALLED)
    return Verdict(_ready(policy, counts), NOT_RECONCILING, NOT_STALLED)


def _ready(policy: PolicyView, counts: Tally) -> tuple[str, str, str]:
    overridden = (f"; overridden by higher-priority policies on {counts.overridden}"
                  if counts.overridden else "")
    if counts.applied == 0 and counts.overridden == 0:
        return ("True", "NoMatchingNodes", "no node matches the nodeSelector")
    if counts.applied == 0:
        return ("True", "Overridden", f"higher-priority policies win on all "
                f"{counts.overridden} matched node(s)")
    if policy.dry_run:
        return ("True", "DryRun", f"dry run: planned on {counts.applied} node(s), nothing "
                f"changed{overridden}")
    return ("True", "Applied", f"generation {policy.generation} applied on {counts.applied} "
            f"of {counts.matched} matched node(s){overridden}")


def _top_reason(reasons: Iterable[str]) -> str:
    """The most frequent reason; ties go to the alphabetically first, so the result is stable."""
    counted = Counter(reasons)
    return min(counted, key=lambda r: (-counted[r], r))


def _failure_message(counts: Tally) -> str:
    node, reason, message = min(counts.failed)
    return (f"{len(counts.failed)} node(s) report problems ({counts.applied} applied), e.g. "
            f"{node}: {reason}: {message}")


def _names(names: list[str]) -> str:
    shown = sorted(names)[:NAMES_IN_MESSAGE]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def conditions(policy: PolicyView, outcome: Verdict, now: str) -> list[Condition]:
    """The three kstatus conditions; a condition keeps its lastTransitionTime while its status
    stays the same."""
    return [condition(kind, *verdict, now, policy.status.conditions, policy.generation)
            for kind, verdict in zip(CONDITION_TYPES, (outcome.ready, outcome.reconciling,
                                                       outcome.stalled), strict=True)]


# -- the status ------------------------------------------------------------------------------


def fold(policy: PolicyView, reports: Mapping[str, NodeSummary], nodes: Mapping[str, Labels],
         now: str) -> PolicyStatus:
    """The policy's whole status (``now``: RFC 3339, for conditions that change status)."""
    counts = tally(policy, reports, nodes)
    valid = policy.error is None
    saved = counts.saved
    return fit(PolicyStatus(
        observed_generation=policy.generation,
        conditions=conditions(policy, verdict(policy, counts), now),
        nodes=NodeCounts(matched=counts.matched if valid else None, applied=counts.applied,
                         failed=len(counts.failed), overridden=counts.overridden,
                         summary=f"{counts.applied}/{counts.matched}" if valid else None),
        saved=dataclasses.replace(saved, summary=human_bytes(saved.total_bytes or 0)),
        problems=[NodeProblem(node, reason, message)
                  for node, reason, message in sorted(counts.failed)],
        capacity=fold_capacity(counts.capacity),
    ))


def fold_capacity(nodes: Mapping[str, CapacitySummary]) -> PolicyCapacity | None:
    """The least supported ratio of the nodes (ties: the first name), which node that is, and
    the sums; None when no node reports its capacity."""
    if not nodes:
        return None
    limiting = min(nodes, key=lambda name: (nodes[name].supported_percent, name))
    least = nodes[limiting].supported_percent
    return PolicyCapacity(
        supported_percent=least, limiting_node=limiting, nodes=len(nodes),
        settled_nodes=sum(1 for c in nodes.values() if c.settled),
        physical_bytes=sum(c.physical for c in nodes.values()),
        guest_committed_bytes=sum(c.committed for c in nodes.values()),
        counted_bytes=sum(c.counted for c in nodes.values()),
        headroom_bytes=sum(c.headroom for c in nodes.values()),
        summary=f"{least}%")


def comparable(status: PolicyStatus) -> PolicyStatus:
    """The status without timestamps: equal comparables mean there is nothing to write."""
    return without_timestamps(status)


def without_savings(status: PolicyStatus) -> PolicyStatus:
    """A status but what churns and is written at a slower pace: the savings' sums and the
    capacity's figures. Which levers save anything at all, whether capacity is reported and
    KubeVirt's ratio stay: a lever's first saving is news (the demo's SAVED column), its growth
    is not."""
    saved = status.saved
    levers = None if saved is None else Saved(
        merged_bytes=int(bool(saved.merged_bytes)),
        ballooned_bytes=int(bool(saved.ballooned_bytes)),
        compressed_bytes=int(bool(saved.compressed_bytes)),
        total_bytes=int(bool(saved.total_bytes)))
    capacity = status.capacity
    kept = None if capacity is None else PolicyCapacity(kubevirt=capacity.kubevirt)
    return dataclasses.replace(status, saved=levers, capacity=kept)
