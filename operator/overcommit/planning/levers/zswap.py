"""zswap's planner: the compressed swap cache's parameters."""

from __future__ import annotations

from overcommit.api.policy import ZswapSpec
from overcommit.host.zswap import ZSWAP
from overcommit.planning.levers.base import LeverInput, LeverPlan, Problem, SectionLever
from overcommit.planning.levers.values import Settings, named, yes_no


class ZswapLever(SectionLever[ZswapSpec]):
    name = "zswap"

    def plan_section(self, section: ZswapSpec, given: LeverInput) -> LeverPlan:
        if not given.obs.present("zswap"):
            return LeverPlan(problems=(Problem("ZswapMissing", "the policy configures zswap but "
                                               "this node's kernel has no zswap"),))
        return LeverPlan(settings(section))


def settings(zswap: ZswapSpec) -> Settings:
    out = named(ZSWAP, {
        "compressor": zswap.compressor.value if zswap.compressor else None,
        "max_pool_percent": zswap.max_pool_percent,
        "accept_threshold_percent": zswap.accept_threshold_percent,
    })
    out |= named(ZSWAP, {"shrinker_enabled": zswap.shrinker_enabled,
                         "enabled": zswap.enabled}, yes_no)
    return out
