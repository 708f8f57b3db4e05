"""The planning core: policy + observation (+ adaptive state) -> desired node settings. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from overcommit.api.model import Policy
from overcommit.api.policy import KsmAdaptive, KsmMode
from overcommit.host.base import Change
from overcommit.planning import adaptive
from overcommit.planning.kernel import (
    ADVISOR_MODE,
    KSM_PAGES_TO_SCAN,
    KSM_RUN,
    KSM_SLEEP,
    advisor_on,
    ksm_static_settings,
    resetters_of,
    swap_settings,
    uksm_settings,
    zswap_settings,
)
from overcommit.planning.observation import Observation


@dataclass(frozen=True)
class Problem:
    """Something the node cannot do as asked; becomes a condition reason and message."""

    reason: str
    message: str


@dataclass(frozen=True)
class NodePlan:
    policy: Policy | None
    desired: dict[str, str] = field(default_factory=dict)
    allow_unmerge: bool = False
    dry_run: bool = False
    engine: str = "none"
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = ()
    adaptive: adaptive.AdaptiveState | None = None


def plan_node(policy: Policy | None, obs: Observation,
              adaptive_prev: adaptive.AdaptiveState | None = None,
              ksm_owner: str | None = None) -> NodePlan:
    """Desired settings for this node under ``policy`` (None: nothing selects the node).

    ``ksm_owner`` names another manager of KSM on this node (KubeVirt's KSM handler): the plan
    then leaves KSM alone and says so instead of fighting it every few minutes.
    """
    if policy is None:
        return NodePlan(None)
    spec = policy.spec
    current = obs.settings()
    desired: dict[str, str] = {}
    problems: list[Problem] = []
    notes: list[str] = []
    adaptive_state = None
    engine = obs.merge_engine

    if spec.ksm is not None and engine == "ksm" and ksm_owner:
        problems.append(Problem("KsmManagedElsewhere", f"KSM on this node is managed by "
                                f"{ksm_owner}; the policy's ksm section is not applied"))
    elif spec.ksm is not None and engine == "ksm":
        desired.update(ksm_static_settings(spec.ksm, current))
        if spec.ksm.mode is KsmMode.ADAPTIVE:
            cfg = spec.ksm.adaptive or KsmAdaptive()
            decision = adaptive.step(adaptive_prev, obs, cfg)
            adaptive_state = decision.state
            desired[KSM_RUN] = "1"
            desired[KSM_PAGES_TO_SCAN] = str(decision.pages_to_scan)
            desired[KSM_SLEEP] = str(decision.sleep_ms)
            notes.append(f"adaptive KSM: {decision.state.phase.value} "
                         f"({decision.state.reason})")
        if spec.ksm.mode is KsmMode.KERNEL_ADVISOR and \
                ADVISOR_MODE not in current:
            problems.append(Problem("AdvisorMissing", "mode KernelAdvisor needs a kernel with "
                                    "KSM's scan-time advisor (advisor_mode); this one has none"))
    if spec.uksm is not None and engine == "uksm":
        desired.update(uksm_settings(spec.uksm))
        if spec.uksm.eval_intervals is not None:
            notes.append("uksm eval_intervals is written only when it differs: the UKSM "
                         "patch's store function has a memory-safety bug")
    if (spec.ksm is not None or spec.uksm is not None) and not _named_engine_present(policy,
                                                                                     engine):
        problems.append(_engine_problem(policy, engine))
    if spec.zswap is not None:
        if obs.present("zswap"):
            desired.update(zswap_settings(spec.zswap))
        else:
            problems.append(Problem("ZswapMissing", "the policy configures zswap but this "
                                    "node's kernel has no zswap"))
    if spec.swap is not None:
        desired.update(swap_settings(spec.swap))
    missing = sorted(path for path in desired if path not in current)
    if missing:
        problems.append(Problem("SettingMissing", "this node's kernel lacks "
                                + ", ".join(missing) + "; those settings are skipped"))
    desired = {path: value for path, value in desired.items() if path in current}
    allow = spec.ksm.allow_unmerge if spec.ksm is not None else False
    return NodePlan(policy, desired, allow, spec.dry_run, engine, tuple(problems), tuple(notes),
                    adaptive_state)


def _named_engine_present(policy: Policy, engine: str) -> bool:
    return (policy.spec.ksm is not None and engine == "ksm") or \
        (policy.spec.uksm is not None and engine == "uksm")


def _engine_problem(policy: Policy, engine: str) -> Problem:
    asked = "ksm" if policy.spec.ksm is not None else "uksm"
    found = {"ksm": "KSM", "uksm": "UKSM", "none": "neither KSM nor UKSM"}[engine]
    message = f"the policy configures {asked} but this node's kernel has {found}"
    if engine != "none":
        message += f"; add a {engine} section to merge pages here"
    return Problem("EngineMissing", message)


def with_restores(desired: Mapping[str, str], originals: Mapping[str, str],
                  current: Mapping[str, str] | None = None) -> dict[str, str]:
    """What to apply: recorded originals for settings the plan no longer names, then the plan.

    A setting an earlier policy changed and the current one does not name goes back to what
    the node had, so "change only what the policy names" holds across policy changes too.
    ``current`` (the node now) lets a setting the agent never changed count as at its original.
    """
    before = {**(current or {}), **originals}
    merged = {path: value for path, value in originals.items()
              if path not in desired and not _held(path, desired, before)}
    merged.update(desired)
    return _writable(merged, current or {})


def _held(path: str, desired: Mapping[str, str], before: Mapping[str, str]) -> bool:
    """Whether ``path``'s original waits: the plan keeps a setting whose change resets it away
    from its original, so the kernel would undo the restore (UKSM's governor preset) or refuse
    it (pages_to_scan under the advisor). It comes back once that setting does."""
    return any(key in desired and desired[key] != before.get(key)
               for key in resetters_of(path))


def _writable(target: dict[str, str], current: Mapping[str, str]) -> dict[str, str]:
    """Without pages_to_scan when advisor_mode ends up scan-time: the kernel refuses it (EINVAL)
    and the advisor sets the rate itself."""
    if advisor_on({**current, **target}):
        target.pop(KSM_PAGES_TO_SCAN, None)
    return target


def preview(desired: Mapping[str, str], current: Mapping[str, str]) -> list[Change]:
    """The changes applying ``desired`` would make (run=2 on a stopped, unmerged KSM is none)."""
    changes = []
    for path, value in desired.items():
        before = current.get(path)
        if before == value or (path == KSM_RUN and value == "2" and before == "0"):
            continue
        changes.append(Change(path, before, value))
    return changes
