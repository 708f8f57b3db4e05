"""Swap's planner: ``vm.swappiness`` when the policy names it (swap devices are only reported)."""

from __future__ import annotations

from overcommit.api.policy import SwapSpec
from overcommit.host.swap import SWAP
from overcommit.planning.levers.base import LeverInput, LeverPlan, SectionLever
from overcommit.planning.levers.values import named


class SwapLever(SectionLever[SwapSpec]):
    name = "swap"

    def plan_section(self, section: SwapSpec, given: LeverInput) -> LeverPlan:
        return LeverPlan(named(SWAP, {"swappiness": section.swappiness}))
