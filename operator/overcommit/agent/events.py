"""What a cycle tells the cluster through Events, and which of it is new (pure logic).

Every change and every error becomes an Event, but a steady state must not post one per cycle:

- *changes* (settings written, originals restored, balloons moved) happened in this cycle, so
  each is posted (a dry run's planned changes are a fact: they repeat every cycle);
- *facts* (the policy in force, an error, a problem, the adaptive phase, relief wanted) are
  posted when they appear or their message changes, and forgotten when they go away, so a
  problem that comes back is posted again;
- every move of the node's reclamation ladder is a change: ``LadderWorsened`` (a Warning when
  it reaches Hard or Critical), ``LadderImproved``, and ``LadderStarted`` for the state the
  agent found at its start;
- when the last warning goes away, one ``Recovered`` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from overcommit.api.model import PolicyError
from overcommit.kube.events import NORMAL, WARNING, EventIntent
from overcommit.planning.ladder import State
from overcommit.reconcile.node import CycleResult
from overcommit.units import rfc3339


def cycle_news(report: CycleResult, invalid: Sequence[PolicyError] = ()) -> list[EventIntent]:
    """Everything this cycle has to say, changes first."""
    return [*_ladder(report), *_changes(report), *_policy(report), *_errors(report, invalid),
            *_adaptive(report)]


def failure_news(message: str) -> EventIntent:
    """A cycle that could not complete (API unreachable, host unreadable, a bug)."""
    return EventIntent(WARNING, "CycleFailed", message)


def _changes(report: CycleResult) -> list[EventIntent]:
    news = []
    # A tuner (Adaptive KSM) moves its settings every few seconds; its phase is reported
    # instead.
    changes = [c for c in report.changes if c.path not in report.plan.tuned]
    if changes:
        text = ", ".join(f"{c.path.rsplit('/', 1)[-1]} {c.before}->{c.after}" for c in changes)
        reason = "OriginalsRestored" if report.restored else "SettingsApplied"
        policy = report.selection.winner.name if report.selection.winner else "none"
        if report.plan.dry_run:
            news.append(EventIntent(NORMAL, "DryRunPlanned", f"policy {policy} (dry run, nothing "
                                                      f"written) would change: {text}"))
        else:
            news.append(EventIntent(NORMAL, reason, f"policy {policy}: {text}", change=True))
    if report.guests.applied:
        news.append(EventIntent(NORMAL, "BalloonsSet", "; ".join(
            f"{t.domain} {t.from_kib >> 10}->{t.to_kib >> 10} MiB ({t.reason})"
            for t in report.guests.applied), change=True))
    return news


def _policy(report: CycleResult) -> list[EventIntent]:
    policy = report.selection.winner
    if policy is None:
        return [EventIntent(NORMAL, "NoPolicy", "no policy selects this node")]
    lost = "".join(f"; {loser.name} lost: {loser.reason}" for loser in report.selection.losers)
    return [EventIntent(NORMAL, "PolicyInForce",
                 f"policy {policy.name} generation {policy.generation} is in force{lost}")]


def _errors(report: CycleResult, invalid: Sequence[PolicyError]) -> list[EventIntent]:
    news = []
    if report.errors:
        news.append(EventIntent(WARNING, "ApplyFailed", "; ".join(
            f"{e.path}: {e.errno_name}: {e.reason}" for e in report.errors)))
    if report.guests.trouble:
        news.append(EventIntent(WARNING, "GuestsFailed", "; ".join(report.guests.trouble)))
    if invalid:
        news.append(EventIntent(WARNING, "InvalidPolicy", "; ".join(
            line for err in invalid for line in err.lines())))
    news += [EventIntent(WARNING, p.reason, p.message) for p in report.problems]
    return news


def _ladder(report: CycleResult) -> list[EventIntent]:
    ladder = report.plan.ladder
    if ladder is None:
        return []
    news = []
    moved = ladder.transition
    if moved is not None:
        severe = moved.worsened and ladder.at_least(State.HARD)
        if moved.from_state is None:
            reason, text = "LadderStarted", f"the node is in {moved.to_state.value}"
        else:
            reason = "LadderWorsened" if moved.worsened else "LadderImproved"
            text = f"{moved.from_state.value} -> {moved.to_state.value}"
        news.append(EventIntent(WARNING if severe else NORMAL, reason,
                                f"{text}: {moved.reason}", change=True))
    if ladder.relief:
        news.append(EventIntent(WARNING, "ReliefWanted",
                                f"the node is in Critical since "
                                f"{rfc3339(ladder.since) or 'the agent started'}: relief "
                                f"wanted ({ladder.reason})"))
    return news


def _adaptive(report: CycleResult) -> list[EventIntent]:
    adaptive = report.plan.adaptive
    if adaptive is None:
        return []
    return [EventIntent(NORMAL, "AdaptiveKsm", f"{adaptive.phase.value}: {adaptive.reason}")]


@dataclass
class EventMemory:
    """The facts already posted, by reason; decides what of a cycle's news to post."""

    posted: dict[str, EventIntent] = field(default_factory=dict)

    def to_post(self, news: Sequence[EventIntent], *,
                whole_picture: bool = True) -> list[EventIntent]:
        """What of ``news`` to post now. Without ``whole_picture`` (a failed cycle says only
        that it failed), facts not repeated in ``news`` are kept, not forgotten."""
        out = [n for n in news if n.change or self.posted.get(n.reason) != n]
        warned = any(n.type == WARNING for n in self.posted.values())
        if whole_picture:
            self.posted = {}
        self.posted.update({n.reason: n for n in news if not n.change})
        if warned and whole_picture and not any(n.type == WARNING for n in news):
            out.append(EventIntent(NORMAL, "Recovered", "no errors or problems any more"))
        return out
