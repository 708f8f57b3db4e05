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

import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from overcommit.api.model import PolicyError, policy_from_object
from overcommit.api.policy import LabelSelector
from overcommit.planning.selection import selector_matches
from overcommit.report import human_bytes

JSON = dict[str, Any]
Labels = Mapping[str, str]

MAX_PROBLEMS = 20  # the CRD's bound on status.problems
MAX_PROBLEM_MESSAGE = 1024
MAX_CONDITION_MESSAGE = 32768
NAMES_IN_MESSAGE = 5
# A node's Degraded=InvalidPolicy is about some *other* policy the agent could not parse; that
# policy gets its own Stalled=InvalidPolicy from the controller's own parse.
FOREIGN_REASONS = frozenset({"InvalidPolicy"})
CONDITION_TYPES = ("Ready", "Reconciling", "Stalled")


def _intern(text: Any) -> str | None:
    # Thousands of reports repeat the same policy names and reasons: keep one copy of each.
    return sys.intern(text) if isinstance(text, str) else None


# -- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Savings:
    """Bytes saved on one node, or summed over many."""

    merged: int = 0
    profit: int = 0
    ballooned: int = 0
    compressed: int = 0

    @property
    def total(self) -> int:
        return self.merged + self.ballooned + self.compressed

    def __add__(self, other: Savings) -> Savings:
        return Savings(self.merged + other.merged, self.profit + other.profit,
                       self.ballooned + other.ballooned, self.compressed + other.compressed)


@dataclass(frozen=True, slots=True)
class NodeReport:
    """The few fields the controller keeps of one node state, whatever that object's size."""

    node: str
    uid: str = ""
    policy: str | None = None
    policy_uid: str | None = None
    generation: int | None = None
    overridden: tuple[str, ...] = ()
    ready: bool | None = None  # the node's Ready condition; None: not reported (yet)
    problem: tuple[str, str] | None = None  # (reason, message) when the node has a problem
    saved: Savings = Savings()

    def policies(self) -> set[str]:
        """Every policy whose status this report can change."""
        return {*self.overridden, *([self.policy] if self.policy else [])}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def node_report(obj: Mapping[str, Any]) -> NodeReport:
    """The summary of one MemoryOvercommitNodeState object (as the API server returns it)."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    policy = status.get("policy") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []
                  if isinstance(c, Mapping)}
    ready, degraded = conditions.get("Ready") or {}, conditions.get("Degraded") or {}
    problem = None
    if ready.get("status") == "False":
        problem = (str(ready.get("reason") or "NotReady"), str(ready.get("message") or ""))
    elif degraded.get("status") == "True" and degraded.get("reason") not in FOREIGN_REASONS:
        problem = (str(degraded.get("reason") or "Degraded"), str(degraded.get("message") or ""))
    saved = status.get("saved") or {}
    generation = policy.get("generation")
    return NodeReport(
        node=sys.intern(str(meta.get("name", ""))),
        uid=str(meta.get("uid", "")),
        policy=_intern(policy.get("name")),
        policy_uid=_intern(policy.get("uid")),
        generation=generation if isinstance(generation, int) else None,
        overridden=tuple(n for n in (_intern(o.get("name")) for o in status.get("overridden")
                                     or [] if isinstance(o, Mapping)) if n),
        ready={"True": True, "False": False}.get(str(ready.get("status"))),
        problem=None if problem is None else (sys.intern(problem[0]),
                                              problem[1][:MAX_PROBLEM_MESSAGE]),
        saved=Savings(_int(saved.get("mergedBytes")), _int(saved.get("mergingProfitBytes")),
                      _int(saved.get("balloonedBytes")), _int(saved.get("compressedBytes"))),
    )


@dataclass(frozen=True)
class PolicyView:
    """What folding needs of a policy: identity, generation, selector, and its last status."""

    name: str
    uid: str = ""
    generation: int = 0
    selector: LabelSelector | None = None
    dry_run: bool = False
    error: str | None = None  # why the spec is invalid (admission bypassed); None when valid
    status: Mapping[str, Any] = field(default_factory=dict)

    def matches(self, labels: Labels) -> bool:
        return self.error is None and selector_matches(self.selector, labels)


def policy_view(obj: Mapping[str, Any]) -> PolicyView:
    meta = obj.get("metadata") or {}
    name, uid = str(meta.get("name", "")), str(meta.get("uid", ""))
    generation = int(meta.get("generation") or 0)
    status = obj.get("status") or {}
    try:
        policy = policy_from_object(obj, "")
    except PolicyError as err:
        return PolicyView(name, uid, generation, error="; ".join(err.errors)[:1024],
                          status=status)
    return PolicyView(name, uid, generation, policy.spec.node_selector, policy.spec.dry_run,
                      status=status)


# -- tally -----------------------------------------------------------------------------------


@dataclass
class Tally:
    """The policy's nodes, bucketed."""

    matched: int = 0
    applied: int = 0
    overridden: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # node, reason, message
    pending: list[str] = field(default_factory=list)
    saved: Savings = Savings()


def tally(policy: PolicyView, reports: Mapping[str, NodeReport],
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


def _in_force(policy: PolicyView, report: NodeReport) -> bool:
    return report.policy == policy.name and report.policy_uid in (None, "", policy.uid)


def _classify(policy: PolicyView, report: NodeReport, result: Tally) -> None:
    current = report.generation == policy.generation and report.ready is not None
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


def conditions(policy: PolicyView, outcome: Verdict, now: str) -> list[JSON]:
    """The three kstatus conditions; a condition keeps its lastTransitionTime while its status
    stays the same."""
    previous = {c.get("type"): c for c in policy.status.get("conditions") or []
                if isinstance(c, Mapping)}
    out = []
    for kind, (status, reason, message) in zip(
            CONDITION_TYPES, (outcome.ready, outcome.reconciling, outcome.stalled), strict=True):
        old = previous.get(kind) or {}
        unchanged = old.get("status") == status and old.get("lastTransitionTime")
        out.append({"type": kind, "status": status, "reason": reason,
                    "message": message[:MAX_CONDITION_MESSAGE],
                    "observedGeneration": policy.generation,
                    "lastTransitionTime": old["lastTransitionTime"] if unchanged else now})
    return out


# -- the status ------------------------------------------------------------------------------


def fold(policy: PolicyView, reports: Mapping[str, NodeReport], nodes: Mapping[str, Labels],
         now: str) -> JSON:
    """The policy's whole status (``now``: RFC 3339, for conditions that change status)."""
    counts = tally(policy, reports, nodes)
    node_counts: JSON = {"applied": counts.applied, "failed": len(counts.failed),
                         "overridden": counts.overridden}
    if policy.error is None:
        node_counts["matched"] = counts.matched
        node_counts["summary"] = f"{counts.applied}/{counts.matched}"
    saved = counts.saved
    return {
        "observedGeneration": policy.generation,
        "conditions": conditions(policy, verdict(policy, counts), now),
        "nodes": node_counts,
        "saved": {"mergedBytes": saved.merged, "mergingProfitBytes": saved.profit,
                  "balloonedBytes": saved.ballooned, "compressedBytes": saved.compressed,
                  "totalBytes": saved.total, "summary": human_bytes(saved.total)},
        "problems": [{"node": node, "reason": reason, "message": message}
                     for node, reason, message in sorted(counts.failed)[:MAX_PROBLEMS]],
    }


def comparable(status: Mapping[str, Any]) -> JSON:
    """The status without timestamps: equal comparables mean there is nothing to write."""
    out = dict(status)
    out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                         for c in status.get("conditions") or [] if isinstance(c, Mapping)]
    return out


def without_savings(comparable_status: Mapping[str, Any]) -> JSON:
    """A comparable() status but the savings, whose churn is written at a slower pace."""
    return {k: v for k, v in comparable_status.items() if k != "saved"}


def significant(status: Mapping[str, Any]) -> JSON:
    """Everything but the savings and the timestamps."""
    return without_savings(comparable(status))
