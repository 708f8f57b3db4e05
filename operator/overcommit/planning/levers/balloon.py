"""The balloon's planner: the policy's targets for the guests it selects (``planning.balloon``),
or, once no policy balloons, the release of the guests whose balloon we moved."""

from __future__ import annotations

from dataclasses import dataclass, replace

from overcommit.api.policy import BalloonAuto, BalloonMode, BalloonSpec
from overcommit.planning import ladder as node_ladder
from overcommit.planning.balloon import BalloonState, plan_balloons, release_targets, select_guests
from overcommit.planning.ladder import Ladder
from overcommit.planning.levers.base import LeverInput, LeverPlan
from overcommit.virt.model import BalloonTarget, GuestDecision

LEFT_ALONE = "no balloon policy applies: left alone"
# Cycles are not exactly periodic: a decision due within this much is made now.
DUE_SLACK_S = 0.5


@dataclass(frozen=True)
class BalloonLeverPlan(LeverPlan):
    targets: tuple[BalloonTarget, ...] = ()  # only the balloons that move this cycle
    decisions: tuple[GuestDecision, ...] = ()  # one per guest seen
    # The guests the policy's vmSelector picks: only they get the policy's statistics period.
    selected: frozenset[tuple[str, str]] = frozenset()


class BalloonLever:
    name = "balloon"

    def plan(self, given: LeverInput) -> BalloonLeverPlan:
        spec = given.spec.balloon if given.spec is not None else None
        if spec is not None and spec.mode is not BalloonMode.OFF:
            chosen, _ = select_guests(spec.vm_selector, given.guests)
            selected = frozenset(g.key for g in chosen)
            previous = given.previous if isinstance(given.previous, BalloonState) else None
            if previous is not None and not _decision_due(spec, previous, given.obs.time):
                return _held(previous, given, selected)
            plan = plan_balloons(spec, given.guests, given.obs, previous,
                                 ladder=given.ladder or _judged(given))
            state = replace(plan.state, decided_at=given.obs.time, last_decisions={
                d.guest.key: (d.target_kib, d.reason) for d in plan.decisions})
            return BalloonLeverPlan(memory=state, targets=plan.targets,
                                    decisions=plan.decisions, selected=selected)
        ours = [g for g in given.guests if g.key in given.touched]
        return BalloonLeverPlan(
            targets=tuple(release_targets(ours, given.restore_on_release)),
            decisions=tuple(GuestDecision(g, None, LEFT_ALONE) for g in given.guests))


def _decision_due(spec: BalloonSpec, previous: BalloonState, now: float) -> bool:
    """Static targets are set every cycle (idempotent); Auto decides every
    ``auto.intervalSeconds``, so its per-decision step limits hold whatever the cycle's pace
    (Adaptive KSM cycles every 2 s)."""
    if spec.mode is not BalloonMode.AUTO or previous.decided_at is None:
        return True
    interval = (spec.auto or BalloonAuto()).interval_seconds
    return now - previous.decided_at >= interval - DUE_SLACK_S


def _held(previous: BalloonState, given: LeverInput,
          selected: frozenset[tuple[str, str]]) -> BalloonLeverPlan:
    """Between two Auto decisions: nothing moves, each guest shows the last decision."""
    decisions = []
    for guest in given.guests:
        target, reason = previous.last_decisions.get(
            guest.key, (None, "seen since the last Auto decision: decided at the next one"))
        decisions.append(GuestDecision(guest, target, reason))
    return BalloonLeverPlan(memory=previous, decisions=tuple(decisions), selected=selected)


def _judged(given: LeverInput) -> Ladder:
    """A caller that judged no ladder (a preview without a node plan) gets a fresh one."""
    return node_ladder.step(None, given.obs, given.spec)
