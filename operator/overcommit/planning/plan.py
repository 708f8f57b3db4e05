"""The planning core: policy + observation (+ what each lever and the ladder remembered) ->
the node's reclamation ladder state and its kernel settings. Pure. The ladder is judged first
(``planning.ladder``) and handed to every lever; each lever plans its own section
(``levers``); this module runs them in order, merges their settings and reports what the
node's kernel lacks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from overcommit.api.model import Policy
from overcommit.api.policy import BalloonAuto, BalloonMode, KsmAdaptive, KsmMode
from overcommit.planning import ladder as node_ladder
from overcommit.planning.adaptive import AdaptiveState
from overcommit.planning.ladder import Ladder
from overcommit.planning.levers.base import Lever, LeverInput, LeverPlan, Problem
from overcommit.planning.levers.ksm import KsmLever
from overcommit.planning.levers.swap import SwapLever
from overcommit.planning.levers.uksm import UksmLever
from overcommit.planning.levers.zswap import ZswapLever
from overcommit.planning.observation import Observation

__all__ = ["KERNEL_LEVERS", "NodePlan", "Problem", "plan_node"]

# In the order their settings are planned (and shown): merging engines, then swap.
KERNEL_LEVERS: tuple[Lever, ...] = (KsmLever(), UksmLever(), ZswapLever(), SwapLever())


@dataclass(frozen=True)
class NodePlan:
    policy: Policy | None
    desired: dict[str, str] = field(default_factory=dict)
    allow_unmerge: bool = False
    dry_run: bool = False
    merge_engine: str = "none"
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = ()
    tuned: frozenset[str] = frozenset()  # paths a lever moves every cycle by itself
    memory: Mapping[str, object] = field(default_factory=dict)  # by lever name
    ladder: Ladder | None = None  # the node's reclamation ladder this cycle

    @property
    def adaptive(self) -> AdaptiveState | None:
        """Adaptive KSM's state, when the KSM lever tunes the rate."""
        state = self.memory.get("ksm")
        return state if isinstance(state, AdaptiveState) else None


def plan_node(policy: Policy | None, obs: Observation,
              memory: Mapping[str, object] | None = None,
              owners: Mapping[str, str] | None = None,
              ladder: Ladder | None = None) -> NodePlan:
    """The ladder and the desired settings for this node under ``policy`` (None: nothing
    selects the node; the ladder is still judged, with its defaults, and reported).

    ``memory`` is what each lever remembered from its last plan under the same policy
    generation; ``owners`` names other managers of a lever on this node (KubeVirt's KSM handler
    for "ksm"): that lever then leaves the node alone and says so instead of fighting it.
    ``ladder`` is the last cycle's ladder (None at start), whatever the policy was.
    """
    judged = node_ladder.step(ladder, obs, policy.spec if policy is not None else None)
    if policy is None:
        return NodePlan(None, ladder=judged)
    plans = {lever.name: lever.plan(LeverInput(policy.spec, obs, (memory or {}).get(lever.name),
                                               owners or {}, ladder=judged))
             for lever in KERNEL_LEVERS}
    merged = _merged(plans.values())
    present, missing = _on_this_kernel(merged.settings, obs.settings())
    return NodePlan(
        policy, present, allow_unmerge=_allows_unmerge(policy), dry_run=policy.spec.dry_run,
        merge_engine=obs.merge_engine, problems=merged.problems + _missing(missing),
        notes=merged.notes, tuned=merged.tuned,
        memory={name: plan.memory for name, plan in plans.items() if plan.memory is not None},
        ladder=judged)


def _merged(plans: Iterable[LeverPlan]) -> LeverPlan:
    """The levers' plans as one, in lever order."""
    settings: dict[str, str] = {}
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = ()
    tuned: frozenset[str] = frozenset()
    for plan in plans:
        settings.update(plan.settings)
        problems, notes, tuned = problems + plan.problems, notes + plan.notes, tuned | plan.tuned
    return LeverPlan(settings, problems, notes, tuned)


def _on_this_kernel(desired: Mapping[str, str],
                    current: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The settings this node's kernel has, and the paths it lacks (skipped, reported)."""
    present = {path: value for path, value in desired.items() if path in current}
    return present, sorted(path for path in desired if path not in current)


def _missing(paths: list[str]) -> tuple[Problem, ...]:
    if not paths:
        return ()
    return (Problem("SettingMissing", "this node's kernel lacks " + ", ".join(paths)
                    + "; those settings are skipped"),)


def _allows_unmerge(policy: Policy) -> bool:
    ksm = policy.spec.ksm
    return ksm.allow_unmerge if ksm is not None else False


def cycle_interval(plan: NodePlan, interval: float) -> float:
    """Seconds to the next cycle: ``interval``, shorter while a lever has to decide more often
    (Adaptive KSM's ``adaptive.intervalSeconds``, Auto ballooning's ``auto.intervalSeconds``)
    and under memory pressure (the ladder in Soft or worse)."""
    policy = plan.policy
    if policy is None:
        return interval
    ksm, balloon = policy.spec.ksm, policy.spec.balloon
    if ksm is not None and ksm.mode is KsmMode.ADAPTIVE and plan.adaptive is not None:
        interval = min(interval, float((ksm.adaptive or KsmAdaptive()).interval_seconds))
    if balloon is not None and balloon.mode is BalloonMode.AUTO:
        interval = min(interval, float((balloon.auto or BalloonAuto()).interval_seconds))
    return node_ladder.next_interval(plan.ladder, interval)
