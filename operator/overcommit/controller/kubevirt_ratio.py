"""KubeVirt's cluster-wide memory overcommit ratio, kept in line with what the nodes support.
Pure: the caller reads the KubeVirt CR, passes the time, and patches what this decides.

KubeVirt has one ratio for the whole cluster (``spec.configuration.developerConfiguration.
memoryOvercommit`` of its KubeVirt CR, percent, default 100): a VMI's launcher pod requests its
guest memory divided by it, so the scheduler places more guest memory than a node has. The
nodes say what ratio they support (``status.capacity.supportedPercent``, docs/capacity.md). A
policy with ``spec.capacity.kubevirt.manage`` lets the controller set the ratio, and only when:

* the policy is in force on **every** node KubeVirt schedules VMs on (label
  ``kubevirt.io/schedulable=true``), and each of them reports its capacity: a ratio that one
  policy's nodes support says nothing about nodes it does not see;
* within ``minPercent``..``maxPercent``;
* **down at once** to the least supported ratio of those nodes;
* **up slowly**: at most ``stepUpPercent`` per ``stepUpIntervalSeconds`` (counted from the last
  change in either direction), and only while every node's evidence covers its whole window.

Running VMs keep the request they were scheduled with; KubeVirt recomputes it from the current
ratio when a VMI migrates (kubevirt/kubevirt#15681), new VMIs take it at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from overcommit.api.policy import CapacityKubeVirt
from overcommit.api.status import KubeVirtRatio
from overcommit.units import epoch_of, rfc3339

SCHEDULABLE = "kubevirt.io/schedulable"
DEFAULT_PERCENT = 100  # KubeVirt's default memoryOvercommit
RECHECK_SECONDS = 60.0  # a held raise is looked at again at least this often


@dataclass(frozen=True)
class NodeView:
    """One node as the ratio manager sees it."""

    policy: str | None  # the policy in force there
    supported_percent: int | None  # None: no capacity reported
    settled: bool = False


@dataclass(frozen=True)
class Decision:
    status: KubeVirtRatio
    set_to: int | None = None  # the memoryOvercommit to patch in, when it changes
    recheck_in: float | None = None  # seconds until a raise may be due (held: look again)


def schedulable(nodes: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The nodes KubeVirt schedules VMs on (virt-handler labels them)."""
    return sorted(name for name, labels in nodes.items() if labels.get(SCHEDULABLE) == "true")


def configured_percent(kubevirt: Mapping[str, Any]) -> int:
    """memoryOvercommit in a KubeVirt CR (KubeVirt's default 100 when unset)."""
    spec = kubevirt.get("spec") or {}
    config = (spec.get("configuration") or {}).get("developerConfiguration") or {}
    value = config.get("memoryOvercommit")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) \
        else DEFAULT_PERCENT


def merge_patch(percent: int) -> dict[str, Any]:
    """The merge patch that sets memoryOvercommit and nothing else."""
    return {"spec": {"configuration": {"developerConfiguration": {"memoryOvercommit": percent}}}}


def covers(policy: str, vm_nodes: list[str], views: Mapping[str, NodeView]) -> str | None:
    """None when ``policy`` is in force on every VM node and each reports capacity; else why
    not."""
    if not vm_nodes:
        return f"KubeVirt schedules VMs on no node (none is labelled {SCHEDULABLE}=true)"
    elsewhere = [n for n in vm_nodes if (views.get(n) or NodeView(None, None)).policy != policy]
    if elsewhere:
        return (f"the policy is not in force on {len(elsewhere)} of the {len(vm_nodes)} nodes "
                f"KubeVirt schedules VMs on (e.g. {elsewhere[0]})")
    silent = [n for n in vm_nodes if views[n].supported_percent is None]
    if silent:
        return f"{len(silent)} node(s) report no capacity yet (e.g. {silent[0]})"
    return None


def decide(policy: str, spec: CapacityKubeVirt | None, nodes: Mapping[str, Mapping[str, str]],
           views: Mapping[str, NodeView], kubevirt: Mapping[str, Any] | None,
           previous: KubeVirtRatio | None, now: float) -> Decision | None:
    """What KubeVirt's ratio should be for ``policy`` (None: the policy does not cover
    KubeVirt's nodes and does not manage: nothing to report)."""
    spec = spec or CapacityKubeVirt()
    vm_nodes = schedulable(nodes)
    why_not = covers(policy, vm_nodes, views)
    last_change = previous.last_change if previous is not None else None
    if why_not is not None:
        if not spec.manage:
            return None
        return Decision(KubeVirtRatio(managed=False, reason=f"not managed: {why_not}",
                                      last_change=last_change))
    if kubevirt is None:
        return Decision(KubeVirtRatio(managed=False, reason="no KubeVirt CR found",
                                      last_change=last_change))
    configured = configured_percent(kubevirt)
    supported = min(views[n].supported_percent or DEFAULT_PERCENT for n in vm_nodes)
    limiting = min(vm_nodes, key=lambda n: (views[n].supported_percent or 0, n))
    bounded = max(spec.min_percent, min(spec.max_percent, supported))
    target, why = _step(spec, configured, bounded, supported, limiting,
                        all(views[n].settled for n in vm_nodes), last_change, now)
    if not spec.manage:
        return Decision(KubeVirtRatio(managed=False, configured_percent=configured,
                                      target_percent=target,
                                      reason=f"reported only (capacity.kubevirt.manage is off): "
                                             f"{why}", last_change=last_change))
    changed = target != configured
    recheck = None
    if target < bounded:  # held below what the nodes support: a raise may come later
        since = epoch_of(rfc3339(now) if changed else last_change)
        recheck = float(spec.step_up_interval_seconds) if since is None else \
            max(1.0, since + spec.step_up_interval_seconds - now)
        recheck = min(recheck, RECHECK_SECONDS)
    return Decision(KubeVirtRatio(managed=True, configured_percent=target if changed
                                  else configured, target_percent=target, reason=why,
                                  last_change=rfc3339(now) if changed else last_change),
                    set_to=target if changed else None, recheck_in=recheck)


def _step(spec: CapacityKubeVirt, configured: int, bounded: int, supported: int,
          limiting: str, settled: bool, last_change: str | None,
          now: float) -> tuple[int, str]:
    basis = (f"the nodes support {supported}% ({limiting} the least), bounded to "
             f"{spec.min_percent}-{spec.max_percent}%: {bounded}%")
    if bounded < configured:
        return bounded, f"{basis}; lowered at once from {configured}%"
    if bounded == configured:
        return configured, f"{basis}; in line"
    if not settled:
        return configured, f"{basis}; held at {configured}% until every node's evidence " \
                           f"covers its window"
    since = epoch_of(last_change)
    if since is not None and now - since < spec.step_up_interval_seconds:
        until = rfc3339(since + spec.step_up_interval_seconds)
        return configured, f"{basis}; held at {configured}% until {until} (raised at most " \
                           f"every {spec.step_up_interval_seconds}s)"
    raised = min(bounded, configured + spec.step_up_percent)
    return raised, f"{basis}; raised from {configured}% by at most {spec.step_up_percent} points"
