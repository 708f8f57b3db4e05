"""zswap's planner: the compressed swap cache's parameters, and with ``onlyUnderPressure``
zswap turned on only while the node's ladder is in Hard or Critical.

Outside Hard the plan does not name ``enabled`` at all, so the reconciler's usual restore rule
(``planning.restores.with_restores``: a setting the plan no longer names goes back to its
recorded original) gives the node back what it had: off on a node that had zswap off, on for
one that had it on. The original is recorded before the first write in Hard and forgotten once
restored, so each episode records the node's own value again.
"""

from __future__ import annotations

from overcommit.api.policy import ZswapSpec
from overcommit.host.zswap import ZSWAP
from overcommit.planning.ladder import State
from overcommit.planning.levers.base import LeverInput, LeverPlan, Problem, SectionLever
from overcommit.planning.levers.values import Settings, named, yes_no


class ZswapLever(SectionLever[ZswapSpec]):
    name = "zswap"

    def plan_section(self, section: ZswapSpec, given: LeverInput) -> LeverPlan:
        if not given.obs.present("zswap"):
            return LeverPlan(problems=(Problem("ZswapMissing", "the policy configures zswap but "
                                               "this node's kernel has no zswap"),))
        if not section.only_under_pressure:
            return LeverPlan(settings(section))
        out = settings(section)
        if given.state.at_least(State.HARD):
            out[ZSWAP.path("enabled")] = yes_no(True)
            note = f"zswap on while the ladder is {given.state.value} (onlyUnderPressure)"
        else:
            note = (f"zswap left as the node had it: the ladder is {given.state.value}, "
                    "onlyUnderPressure turns it on in Hard and Critical only")
        return LeverPlan(out, notes=(note,))


def settings(zswap: ZswapSpec) -> Settings:
    out = named(ZSWAP, {
        "compressor": zswap.compressor.value if zswap.compressor else None,
        "max_pool_percent": zswap.max_pool_percent,
        "accept_threshold_percent": zswap.accept_threshold_percent,
    })
    out |= named(ZSWAP, {"shrinker_enabled": zswap.shrinker_enabled,
                         "enabled": zswap.enabled}, yes_no)
    return out
