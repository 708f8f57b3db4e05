"""Swap's planner: ``vm.swappiness`` when the policy names it (swap devices are only reported)."""

from __future__ import annotations

from overcommit.host.swap import SWAP
from overcommit.planning.levers.base import LeverInput, LeverPlan
from overcommit.planning.levers.values import named


class SwapLever:
    name = "swap"

    def plan(self, given: LeverInput) -> LeverPlan:
        spec = given.spec
        if spec is None or spec.swap is None:
            return LeverPlan()
        return LeverPlan(named(SWAP, {"swappiness": spec.swap.swappiness}))
