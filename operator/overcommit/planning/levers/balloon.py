"""The balloon's planner: the policy's targets for the guests it selects (``planning.balloon``),
or, once no policy balloons, the release of the guests whose balloon we moved."""

from __future__ import annotations

from dataclasses import dataclass

from overcommit.api.policy import BalloonMode
from overcommit.planning import ladder as node_ladder
from overcommit.planning.balloon import BalloonState, plan_balloons, release_targets, select_guests
from overcommit.planning.ladder import Ladder
from overcommit.planning.levers.base import LeverInput, LeverPlan
from overcommit.virt.model import BalloonTarget, GuestDecision

LEFT_ALONE = "no balloon policy applies: left alone"


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
            previous = given.previous if isinstance(given.previous, BalloonState) else None
            plan = plan_balloons(spec, given.guests, given.obs, previous,
                                 ladder=given.ladder or _judged(given))
            return BalloonLeverPlan(memory=plan.state, targets=plan.targets,
                                    decisions=plan.decisions,
                                    selected=frozenset(g.key for g in chosen))
        ours = [g for g in given.guests if g.key in given.touched]
        return BalloonLeverPlan(
            targets=tuple(release_targets(ours, given.restore_on_release)),
            decisions=tuple(GuestDecision(g, None, LEFT_ALONE) for g in given.guests))


def _judged(given: LeverInput) -> Ladder:
    """A caller that judged no ladder (a preview without a node plan) gets a fresh one."""
    return node_ladder.step(None, given.obs, given.spec)
