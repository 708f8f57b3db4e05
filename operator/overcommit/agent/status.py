"""The node state's status after a cycle (pure: the caller passes the time), and when to write it.

The status is the API's typed ``NodeStateStatus``: built here, cut to the CRD's bounds
(``schema.fit``), and sent as ``schema.to_json`` of it.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from overcommit.api.model import PolicyError
from overcommit.api.schema import fit, parse
from overcommit.api.status import (
    FALSE,
    TRUE,
    Condition,
    Engine,
    NodeStateStatus,
    OverriddenPolicy,
    PolicyRef,
    PolicyStatus,
    ReliefRequest,
    condition,
    without_timestamps,
)
from overcommit.reconcile.capacity import ksmd_budget
from overcommit.reconcile.node import CycleResult
from overcommit.reconcile.summary import (
    capacity_status,
    guest_entries,
    host_memory,
    ksmd_status,
    ladder_status,
    savings,
)

# Fields whose change is news (written at once); everything else is refreshed at most once per
# status interval, so steady counters never cause a write storm.
NEWS_FIELDS = ("policy", "overridden", "conditions", "engine", "engines", "originals",
               "last_errors", "endpoints_down", "guest_count", "ladder")
SUMMARISED = ("meminfo", "psi")  # reported under memory, not as counters


def node_status(report: CycleResult, invalid: Sequence[PolicyError] = (),
                previous: NodeStateStatus | None = None, *, now: str) -> NodeStateStatus:
    """The node state's status after ``report``; conditions keep their transition time while
    their status holds (``previous``), else take ``now``."""
    obs = report.observation
    policy = report.selection.winner
    errors = [f"{e.path}: {e.errno_name}: {e.reason}" for e in report.errors]
    errors += report.guests.trouble
    errors += [line for err in invalid for line in err.lines()]
    guests = [entry for _, entry in guest_entries(report.guests)]
    return fit(NodeStateStatus(
        policy=None if policy is None else PolicyRef(policy.name, policy.uid, policy.generation),
        overridden=[OverriddenPolicy(loser.name, loser.reason)
                    for loser in report.selection.losers],
        conditions=_conditions(report, invalid, previous, now),
        engine=obs.merge_engine,
        engines=[Engine(name, reading.present) for name, reading in sorted(obs.readings.items())],
        settings=dict(sorted(report.settings_after.items())),
        counters=_counters(report),
        originals=dict(sorted(report.originals.items())),
        saved=savings(obs, report.guests),
        memory=host_memory(obs),
        ladder=ladder_status(report.plan.ladder),
        ksmd=ksmd_status(report.ksmd_percent,
                         ksmd_budget(policy.spec if policy is not None else None)),
        capacity=capacity_status(report.capacity),
        guest_count=len(guests),
        guests=guests,
        endpoints_down=list(report.guests.endpoints_down),
        last_errors=errors,
    ))


def _counters(report: CycleResult) -> dict[str, int]:
    return {f"{name}.{key}": value
            for name, reading in sorted(report.observation.readings.items())
            if name not in SUMMARISED
            for key, value in sorted(reading.counters.items())}


def _problems(report: CycleResult, invalid: Sequence[PolicyError]) -> list[tuple[str, str]]:
    """Every (reason, message) the node has, the one that makes it not ready first."""
    problems = [(p.reason, p.message) for p in report.problems]
    if report.guests.trouble:
        problems.append(("GuestsFailed", "; ".join(report.guests.trouble)))
    if invalid:
        problems.append(("InvalidPolicy", "; ".join(e.lines()[0] for e in invalid)))
    if report.errors:
        first = report.errors[0]
        problems.insert(0, ("ApplyFailed", f"{len(report.errors)} setting(s) could not be "
                            f"written; first: {first.path}: {first.errno_name}: {first.reason}"))
    return problems


def _conditions(report: CycleResult, invalid: Sequence[PolicyError],
                previous: NodeStateStatus | None, now: str) -> list[Condition]:
    policy = report.selection.winner
    generation = policy.generation if policy else None
    problems = _problems(report, invalid)
    if policy is None:
        ready = (TRUE, "NoPolicy", "no policy selects this node; the node's own settings "
                 "are in place")
    elif report.errors:
        ready = (FALSE, *problems[0])
    elif report.plan.dry_run:
        ready = (TRUE, "DryRun", f"policy {policy.name} is in dry-run mode: "
                 f"{len(report.changes)} change(s) planned, none made")
    else:
        ready = (TRUE, "Applied", f"policy {policy.name} generation {generation} is applied")
    degraded = (TRUE, *problems[0]) if problems else (FALSE, "AsExpected", "no problems")
    before = previous.conditions if previous else None
    return [condition("Ready", *ready, now, before, generation),
            condition("Degraded", *degraded, now, before, generation)]


def news_of(status: NodeStateStatus) -> tuple[object, ...]:
    """The part of a status whose change must be written at once (timestamps aside), and which
    levers save anything at all: a lever's first saving is news, its growth is not."""
    bare = without_timestamps(status)
    saved = status.saved
    saving = tuple(bool(saved and getattr(saved, f"{lever}_bytes"))
                   for lever in ("merged", "ballooned", "compressed"))
    return (*(getattr(bare, name) for name in NEWS_FIELDS), saving)


def detail_of(status: NodeStateStatus) -> NodeStateStatus:
    """Everything else (settings, counters, savings, memory, guests, capacity), timestamps
    aside, and the capacity without its evidence's clock: how long the node has been watched
    grows every cycle, which alone is no reason to write, nor is ksmd's CPU share (both ride
    along with other changes; the metrics follow them every cycle)."""
    bare = dataclasses.replace(without_timestamps(status), **dict.fromkeys(NEWS_FIELDS, None))
    if bare.ksmd is not None:  # ksmd's CPU share: known from the second cycle, then noisy
        bare = dataclasses.replace(bare, ksmd=None if bare.ksmd.budget_percent is None
                                   else dataclasses.replace(bare.ksmd, cpu_percent=None))
    capacity = bare.capacity
    if capacity is None:
        return bare
    evidence = capacity.evidence
    steady = dataclasses.replace(
        capacity, reason=None, evidence=None if evidence is None else dataclasses.replace(
            evidence, observed_seconds=None, samples=None, since=None))
    return dataclasses.replace(bare, capacity=steady)


def should_write(new: NodeStateStatus, last: NodeStateStatus | None, since_write_s: float,
                 status_interval_s: float) -> bool:
    """The agent's write gate: news at once, counter-only changes at most once per interval,
    nothing when nothing changed."""
    if last is None:
        return True
    if news_of(new) != news_of(last):
        return True
    return since_write_s >= status_interval_s and detail_of(new) != detail_of(last)


def policy_news(new: NodeStateStatus, last: NodeStateStatus | None) -> bool:
    """Whether ``new`` reports another policy in force, or another generation of it, than the
    last write: news that every agent the policy reaches learns of at the same moment."""
    return last is not None and new.policy != last.policy


def largest_node_count(policies: Iterable[Mapping[str, Any]]) -> int | None:
    """The largest node count (``status.nodes.matched``, the controller's) of any of these
    policy objects: how many agents one policy change can reach at once, as far as an agent
    can tell (it does not list Nodes). None when no policy has a count yet."""
    counts = [status.nodes.matched for body in policies
              if (status := parse(PolicyStatus, body.get("status") or {})) is not None
              and status.nodes is not None and status.nodes.matched]
    return max(counts, default=None)


def counter_interval(nodes: int | None, writes_per_second: float, floor_s: float) -> float:
    """The least seconds between one agent's counter-only writes: ``nodes`` at
    ``writes_per_second`` for them all, never under ``floor_s`` (the status interval); the
    floor alone when no count is known or the budget is off."""
    if not nodes or writes_per_second <= 0:
        return floor_s
    return max(floor_s, nodes / writes_per_second)


def policy_news_window(nodes: int | None, writes_per_second: float, cap_s: float) -> float:
    """The seconds over which the agents spread their writes of a policy change: ``nodes``
    at ``writes_per_second``, at most ``cap_s``; 0 when no count is known or the spread is
    off."""
    if not nodes or writes_per_second <= 0:
        return 0.0
    return min(cap_s, nodes / writes_per_second)


def policy_news_delay(nodes: int | None, writes_per_second: float, cap_s: float,
                      draw: Callable[[], float] = random.random) -> float:
    """How long one agent holds back its write of a policy change: a uniform moment of
    ``policy_news_window``; ``draw`` returns a number in [0, 1) (tests pass their own)."""
    return draw() * policy_news_window(nodes, writes_per_second, cap_s)


def with_relief(status: NodeStateStatus, relief_status: str, last: ReliefRequest | None,
                taint: str | None) -> NodeStateStatus:
    """``status`` with what relief did this cycle in its ladder (agent.relief)."""
    if status.ladder is None:
        return status
    return fit(dataclasses.replace(status, ladder=dataclasses.replace(
        status.ladder, relief_status=relief_status or None, last_relief=last, taint=taint)))
