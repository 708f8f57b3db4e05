"""What a change of a policy's status tells humans through Events (pure logic).

The controller compares the status it is about to write with the one the policy carries (the
last one written, by this replica or by a previous leader) and posts only the differences a
human acts on:

- the ``Ready`` condition's status changes: ``PolicyReady`` / ``PolicyNotReady``;
- ``Stalled`` turns True or back: ``PolicyStalled`` / ``PolicyNotStalled``; a failure that
  makes the policy both stalled and not ready is one ``PolicyStalled``, and a policy that goes
  from stalled to ready is one ``PolicyReady``;
- a node enters the problem list, or its problem's reason changes: ``NodeProblem``; it leaves
  the list: ``NodeRecovered``.

The written status is the memory, so an unchanged fact is never posted twice, not even by a new
leader, and nothing has to survive a failover. ``status.problems`` lists only the first
``MAX_PROBLEMS`` failed nodes by name: a node is said to enter or leave only when the list
proves it, and what the list cannot show (or more than ``MAX_NODE_EVENTS`` nodes moving at
once) becomes one summary Event per direction, so a fold posts at most ``MAX_EVENTS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from overcommit.api.status import PolicyStatus, condition_of
from overcommit.kube.events import NORMAL, WARNING, EventIntent

MAX_NODE_EVENTS = 3  # per direction and fold; more nodes moving at once become one summary
NAMES_SHOWN = 5
MAX_EVENTS = 2 + 2 * MAX_NODE_EVENTS  # Ready and Stalled, then nodes in each direction


def policy_news(old: PolicyStatus, new: PolicyStatus) -> list[EventIntent]:
    """The Events that going from status ``old`` to status ``new`` deserves, policy first."""
    return [*condition_news(old, new), *node_news(old, new)]


# -- conditions ------------------------------------------------------------------------------


def condition_news(old: PolicyStatus, new: PolicyStatus) -> list[EventIntent]:
    was_ready, ready = condition_of(old, "Ready"), condition_of(new, "Ready")
    was_stalled, stalled = condition_of(old, "Stalled"), condition_of(new, "Stalled")
    news = []
    stalls = stalled.holds and not was_stalled.holds
    if stalls:
        news.append(EventIntent(WARNING, "PolicyStalled", stalled.text()))
    if ready.status != was_ready.status:
        if ready.holds:
            news.append(EventIntent(NORMAL, "PolicyReady", ready.text()))
        elif not stalls:  # PolicyStalled already says why it is not ready
            news.append(EventIntent(NORMAL, "PolicyNotReady", ready.text()))
    if was_stalled.holds and not stalled.holds and not ready.holds:
        news.append(EventIntent(NORMAL, "PolicyNotStalled",
                                f"{stalled.text()}; Ready is {ready.status}: {ready.text()}"))
    return news


# -- nodes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problems:
    """A status's problem list (node -> (reason, message)) and how many nodes failed in all."""

    listed: dict[str, tuple[str, str]]
    failed: int
    generation: int | None

    def surely_fine(self, node: str) -> bool:
        """``node`` does not fail here: the list holds every failed node, or, sorted by name
        and cut short, it would have shown this one."""
        if node in self.listed:
            return False
        return self.failed <= len(self.listed) or (bool(self.listed) and node < max(self.listed))


def problems(status: PolicyStatus) -> Problems:
    listed = {p.node: (p.reason or "", p.message or "") for p in status.problems or () if p.node}
    failed = status.nodes.failed if status.nodes else None
    count = failed if failed is not None else len(listed)
    return Problems(listed, max(count, len(listed)), status.observed_generation)


def node_news(old: PolicyStatus, new: PolicyStatus) -> list[EventIntent]:
    before, after = problems(old), problems(new)
    entered = sorted(n for n in after.listed if before.surely_fine(n))
    changed = sorted(n for n in after.listed
                     if n in before.listed and before.listed[n][0] != after.listed[n][0])
    left = sorted(n for n in before.listed if after.surely_fine(n))
    # Nodes the list cannot show: the counts moved more than the proven moves explain.
    unseen = (after.failed - before.failed) - (len(entered) - len(left))
    news = _problem_news(before, after, entered, changed, unseen)
    # At a new generation every node is pending until it reports again: leaving the list then
    # is no recovery (the policy's PolicyNotReady / PolicyNotStalled say what happened).
    if after.generation == before.generation:
        news += _recovery_news(before, after, left, unseen)
    return news


def _problem_news(before: Problems, after: Problems, entered: Sequence[str],
                  changed: Sequence[str], unseen: int) -> list[EventIntent]:
    moved = sorted({*entered, *changed})
    if unseen > 0 or len(moved) > MAX_NODE_EVENTS:
        return [EventIntent(WARNING, "NodeProblem",
                            _summary(before, after, "newly failing", moved))]
    news = []
    for node in moved:
        reason, message = after.listed[node]
        was = f" (was {before.listed[node][0]})" if node in before.listed else ""
        news.append(EventIntent(WARNING, "NodeProblem", f"{node}: {reason}{was}: {message}"))
    return news


def _recovery_news(before: Problems, after: Problems, left: Sequence[str],
                   unseen: int) -> list[EventIntent]:
    if unseen < 0 or len(left) > MAX_NODE_EVENTS:
        return [EventIntent(NORMAL, "NodeRecovered", _summary(before, after, "recovered", left))]
    return [EventIntent(NORMAL, "NodeRecovered", f"{node} no longer reports a problem (was "
                                                 f"{before.listed[node][0]})") for node in left]


def _summary(before: Problems, after: Problems, what: str, nodes: Sequence[str]) -> str:
    text = f"{after.failed} node(s) report problems now ({before.failed} before)"
    # Only listed nodes have names; the counts cover the rest.
    return f"{text}; {what} include {', '.join(nodes[:NAMES_SHOWN])}" if nodes else text
