"""KSM's planner: modes Static (the values as given), KernelAdvisor (the kernel's scan-time
advisor owns the rate) and Adaptive (``planning.adaptive`` tunes the rate every cycle)."""

from __future__ import annotations

from overcommit.api.policy import KsmAdaptive, KsmMode, KsmSpec
from overcommit.host.ksm import ADVISOR_SCAN_TIME, KSM, RUN_MERGING, RUN_STOPPED, RUN_UNMERGE
from overcommit.planning import adaptive
from overcommit.planning.levers.base import LeverInput, LeverPlan, Problem, SectionLever
from overcommit.planning.levers.values import Settings, flag, named

TUNED = frozenset({KSM.path("pages_to_scan"), KSM.path("sleep_millisecs")})


class KsmLever(SectionLever[KsmSpec]):
    name = "ksm"

    def plan_section(self, section: KsmSpec, given: LeverInput) -> LeverPlan:
        engine = given.obs.merge_engine
        if engine != "ksm":
            covered = given.spec is not None and given.spec.uksm is not None \
                and engine == "uksm"
            return LeverPlan() if covered else LeverPlan(problems=(engine_missing("ksm",
                                                                                  engine),))
        if owner := given.owners.get(self.name):
            return LeverPlan(problems=(Problem(
                "KsmManagedElsewhere", f"KSM on this node is managed by {owner}; the policy's "
                "ksm section is not applied"),))
        return _plan_ksm(section, given)


def _plan_ksm(ksm: KsmSpec, given: LeverInput) -> LeverPlan:
    current = given.obs.settings()
    rate: Settings = {}
    notes: tuple[str, ...] = ()
    memory = None
    if ksm.mode is KsmMode.ADAPTIVE:
        previous = given.previous if isinstance(given.previous, adaptive.AdaptiveState) else None
        decision = adaptive.step(previous, given.obs, ksm.adaptive or KsmAdaptive(),
                                 given.state)
        rate = {KSM.path("run"): RUN_MERGING,
                KSM.path("pages_to_scan"): str(decision.pages_to_scan),
                KSM.path("sleep_millisecs"): str(decision.sleep_ms)}
        notes = (f"adaptive KSM: {decision.state.phase.value} ({decision.state.reason})",)
        memory = decision.state
    settings = static_settings(ksm)
    # What the named files need to be writable at all (pages_to_scan: the advisor off) — also
    # when it already holds, so a recorded original is not put back under the new rate.
    needed = KSM.requirements({KSM.name_of(path) or "": v for path, v in {**settings,
                                                                        **rate}.items()})
    settings |= {KSM.path(name): value for name, value in needed.items()
                 if KSM.path(name) in current and KSM.path(name) not in settings}
    settings |= rate
    problems: tuple[Problem, ...] = ()
    if ksm.mode is KsmMode.KERNEL_ADVISOR and KSM.path("advisor_mode") not in current:
        problems = (Problem("AdvisorMissing", "mode KernelAdvisor needs a kernel with KSM's "
                            "scan-time advisor (advisor_mode); this one has none"),)
    return LeverPlan(settings, problems, notes, TUNED if rate else frozenset(), memory)


def static_settings(ksm: KsmSpec) -> Settings:
    """Settings for modes Static and KernelAdvisor (Adaptive adds its own rate on top)."""
    out = named(KSM, {
        "sleep_millisecs": ksm.sleep_millisecs,
        "max_page_sharing": ksm.max_page_sharing,
        "stable_node_chains_prune_millisecs": ksm.stable_node_chains_prune_millisecs,
    })
    out |= named(KSM, {"merge_across_nodes": ksm.merge_across_nodes,
                       "use_zero_pages": ksm.use_zero_pages, "smart_scan": ksm.smart_scan}, flag)
    if ksm.enabled is not None:
        out[KSM.path("run")] = RUN_MERGING if ksm.enabled else (
            RUN_UNMERGE if ksm.unmerge_on_disable else RUN_STOPPED)
    if ksm.mode is KsmMode.KERNEL_ADVISOR:
        out |= _advisor_settings(ksm)
        out.setdefault(KSM.path("run"), RUN_MERGING)
    elif ksm.pages_to_scan is not None:
        out[KSM.path("pages_to_scan")] = str(ksm.pages_to_scan)
    return out


def _advisor_settings(ksm: KsmSpec) -> Settings:
    out = {KSM.path("advisor_mode"): ADVISOR_SCAN_TIME}
    advisor = ksm.advisor
    if advisor is not None:
        out |= named(KSM, {
            "advisor_max_cpu": advisor.max_cpu_percent,
            "advisor_target_scan_time": advisor.target_scan_time_seconds,
            "advisor_min_pages_to_scan": advisor.min_pages_to_scan,
            "advisor_max_pages_to_scan": advisor.max_pages_to_scan,
        })
    return out


def engine_missing(asked: str, engine: str) -> Problem:
    """The policy configures a merging engine (``asked``) this node's kernel lacks."""
    found = {"ksm": "KSM", "uksm": "UKSM", "none": "neither KSM nor UKSM"}[engine]
    message = f"the policy configures {asked} but this node's kernel has {found}"
    if engine != "none":
        message += f"; add a {engine} section to merge pages here"
    return Problem("EngineMissing", message)
