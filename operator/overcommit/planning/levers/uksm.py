"""UKSM's planner: the patch's settings, on nodes whose kernel has UKSM instead of KSM."""

from __future__ import annotations

from overcommit.api.policy import UksmSpec
from overcommit.host.uksm import UKSM, canonical_cpu_ratios
from overcommit.planning.levers.base import LeverInput, LeverPlan, SectionLever
from overcommit.planning.levers.ksm import engine_missing
from overcommit.planning.levers.values import Settings, flag, named

EVAL_INTERVALS_NOTE = ("uksm eval_intervals is written only when it differs: the UKSM patch's "
                       "store function has a memory-safety bug")


class UksmLever(SectionLever[UksmSpec]):
    name = "uksm"

    def plan_section(self, section: UksmSpec, given: LeverInput) -> LeverPlan:
        engine = given.obs.merge_engine
        if engine != "uksm":
            # A policy naming both engines is fine where KSM runs (and the KSM lever speaks
            # for a node that has neither).
            named_ksm = given.spec is not None and given.spec.ksm is not None
            return LeverPlan() if named_ksm else LeverPlan(
                problems=(engine_missing("uksm", engine),))
        notes = (EVAL_INTERVALS_NOTE,) if section.eval_intervals is not None else ()
        return LeverPlan(settings(section), notes=notes)


def settings(uksm: UksmSpec) -> Settings:
    out = named(UKSM, {"run": uksm.enabled}, flag)
    out |= named(UKSM, {
        "cpu_governor": uksm.cpu_governor.value if uksm.cpu_governor else None,
        "max_cpu_percentage": uksm.max_cpu_percentage,
        "abundant_threshold": uksm.abundant_threshold,
        "thrash_threshold": uksm.thrash_threshold,
        "sleep_millisecs": uksm.sleep_millisecs,
    })
    if uksm.cpu_ratios is not None:
        # MAX/n is stored as a ratio of 10000 and reads back rounded; plan what will read back
        # so a correct node never shows a pending change.
        out[UKSM.path("cpu_ratios")] = canonical_cpu_ratios(" ".join(uksm.cpu_ratios))
    if uksm.eval_intervals is not None:
        out[UKSM.path("eval_intervals")] = " ".join(str(v) for v in uksm.eval_intervals)
    return out
