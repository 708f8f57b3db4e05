"""Status: the policy's small cluster summary and the per-node state, as typed objects.

Declared like the spec (documented dataclasses), so the one declaration generates the CRDs'
status schema (every field explained by ``kubectl explain``), is what the agent builds and the
controller parses (``schema.build``), and goes on the wire through ``schema.to_json`` after
``schema.fit`` has cut every list and string to the schema's bounds. Conditions follow kstatus:
one builder (:func:`condition`) keeps a condition's transition time while its status holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from overcommit.api.schema import doc

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"


def find_condition(status: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any]:
    """The condition of type ``kind`` in an object's status as read from the API (plain JSON);
    {} when there is none (yet). Typed statuses have :meth:`Conditioned.condition`."""
    for condition in (status or {}).get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == kind:
            return condition
    return {}


@dataclass(frozen=True, slots=True)
class Condition:
    """A standard Kubernetes condition (kstatus conventions)."""

    type: str = doc("The condition's type: Ready, Reconciling, Stalled or Degraded.",
                    required=True, max_length=316)
    status: str = doc("True, False or Unknown.", required=True, max_length=16)
    reason: str | None = doc("A CamelCase machine-readable reason.", max_length=1024)
    message: str | None = doc("A human-readable explanation.", max_length=32768)
    observed_generation: int | None = doc("The .metadata.generation the condition was set for.",
                                          minimum=0)
    last_transition_time: str | None = doc("When the status last changed (RFC 3339).",
                                           max_length=64)

    @property
    def holds(self) -> bool:
        return self.status == TRUE

    def text(self) -> str:
        """``reason: message``, for Events and logs."""
        message = self.message or ""
        return f"{self.reason}: {message}" if self.reason else message


ABSENT = Condition(type="", status=UNKNOWN)  # how kstatus reads a condition not (yet) reported


def condition(kind: str, status: str, reason: str, message: str, now: str,
              previous: Sequence[Condition] | None = None,
              generation: int | None = None) -> Condition:
    """A condition that keeps the previous one's ``lastTransitionTime`` while its status stays
    the same (kstatus: the time the status last *changed*), else takes ``now``."""
    old = next((c for c in previous or () if c.type == kind), None)
    unchanged = old is not None and old.status == status and old.last_transition_time
    return Condition(type=kind, status=status, reason=reason, message=message,
                     observed_generation=generation,
                     last_transition_time=old.last_transition_time if unchanged and old
                     else now)


class Conditioned(Protocol):
    @property
    def conditions(self) -> list[Condition] | None: ...


def condition_of(status: Conditioned | None, kind: str) -> Condition:
    """The condition ``kind`` of a typed status; :data:`ABSENT` (Unknown) when not reported."""
    return next((c for c in (status.conditions if status else None) or () if c.type == kind),
                ABSENT)


S = TypeVar("S")


def without_timestamps(status: S) -> S:
    """``status`` with every wall-clock stamp (condition transition times, ``lastUpdate``)
    cleared: two statuses equal this way say the same, and writing one over the other is
    noise."""
    changes: dict[str, Any] = {}
    conditions = getattr(status, "conditions", None)
    if conditions:
        changes["conditions"] = [dataclasses.replace(c, last_transition_time=None)
                                 for c in conditions]
    if getattr(status, "last_update", None) is not None:
        changes["last_update"] = None
    return dataclasses.replace(status, **changes) if changes else status  # type: ignore[type-var]


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """The policy in force on a node."""

    name: str | None = doc("The policy's name.", max_length=253)
    uid: str | None = doc("The policy's uid.", max_length=64)
    generation: int | None = doc("The policy generation applied.", minimum=0)


@dataclass(frozen=True, slots=True)
class OverriddenPolicy:
    """A policy that selects the node but lost to the one in force."""

    name: str | None = doc("The losing policy.", max_length=253)
    reason: str | None = doc("Why it lost (priority, age or name).", max_length=1024)


@dataclass(frozen=True, slots=True)
class Engine:
    """One kernel interface found on the node."""

    name: str | None = doc("ksm, uksm, zswap, swap, meminfo or psi.", max_length=32)
    present: bool | None = doc("Whether the node's kernel has it.")


@dataclass(frozen=True, slots=True)
class Saved:
    """Memory saved, in bytes, by each lever and in total."""

    merged_bytes: int | None = doc("Saved by page merging: (pages_sharing + zero pages) x page "
                                   "size.", minimum=0)
    merging_profit_bytes: int | None = doc("KSM's general_profit: merged savings net of its "
                                           "metadata (may be negative).")
    ballooned_bytes: int | None = doc("Taken back from guests by their balloons.", minimum=0)
    compressed_bytes: int | None = doc("Saved by zswap: original minus compressed size.",
                                       minimum=0)
    total_bytes: int | None = doc("Sum of the above savings.", minimum=0)
    summary: str | None = doc("The total in human units, for kubectl get.", max_length=32)

    def __add__(self, other: Saved) -> Saved:
        """The sums of two nodes' savings (the summary is the caller's to write)."""
        def add(a: int | None, b: int | None) -> int | None:
            return None if a is None and b is None else (a or 0) + (b or 0)

        return Saved(add(self.merged_bytes, other.merged_bytes),
                     add(self.merging_profit_bytes, other.merging_profit_bytes),
                     add(self.ballooned_bytes, other.ballooned_bytes),
                     add(self.compressed_bytes, other.compressed_bytes),
                     add(self.total_bytes, other.total_bytes))


@dataclass(frozen=True, slots=True)
class HostMemory:
    """Host memory and pressure."""

    total_bytes: int | None = doc("MemTotal.", minimum=0)
    available_bytes: int | None = doc("MemAvailable.", minimum=0)
    swap_total_bytes: int | None = doc("SwapTotal.", minimum=0)
    swap_free_bytes: int | None = doc("SwapFree.", minimum=0)
    psi_some_avg10: str | None = doc("PSI memory 'some' avg10, percent.", max_length=16)
    psi_full_avg10: str | None = doc("PSI memory 'full' avg10, percent.", max_length=16)


@dataclass(frozen=True, slots=True)
class Guest:
    """One guest's balloon state."""

    domain: str | None = doc("The libvirt domain name.", max_length=253)
    vmi_namespace: str | None = doc("KubeVirt VMI namespace, when known.", max_length=63)
    vmi_name: str | None = doc("KubeVirt VMI name, when known.", max_length=253)
    vmi_uid: str | None = doc("KubeVirt VMI uid, when known.", max_length=64)
    max_bytes: int | None = doc("The guest's maximum memory.", minimum=0)
    current_bytes: int | None = doc("The balloon's current size.", minimum=0)
    target_bytes: int | None = doc("The target the agent set.", minimum=0)
    usable_bytes: int | None = doc("The guest's own MemAvailable as reported by the driver.",
                                   minimum=0)
    resident_bytes: int | None = doc("What the guest's QEMU process holds on the host (its "
                                     "resident set, libvirt's rss), when reported.", minimum=0)
    floor_bytes: int | None = doc("The least the balloon policy would leave the guest (its "
                                  "floor; with Static, the target if higher); managed guests "
                                  "only.", minimum=0)
    reason: str | None = doc("Why the last decision was taken, or why the guest is skipped.",
                             max_length=1024)
    autodeflate: bool | None = doc(
        "The balloon deflates on OOM (libvirt's autodeflate='on'): when the guest kernel runs "
        "out of memory it takes pages back from the balloon instead of OOM-killing a process, "
        "while the balloon has any. False: a demand larger than what the balloon left the "
        "guest (once its own caches are reclaimed) is OOM-killed, whatever the host does next. "
        "Absent: no balloon device.")
    free_page_reporting: bool | None = doc(
        "The guest reports its free pages to the host (libvirt's freePageReporting='on', "
        "KubeVirt's default): the host already has back what the guest does not use, so "
        "inflating the balloon gains the host only the guest's page cache; in Soft and Hard the "
        "balloon planner reclaims such a guest only for its cache. Absent: no balloon device.")


@dataclass(frozen=True, slots=True)
class LadderThreshold:
    """Where one state of the ladder begins and ends, in MemAvailable bytes."""

    state: str | None = doc("Clear, Soft, Hard or Critical.", max_length=16)
    below_bytes: int | None = doc("The node is in this state or a worse one as soon as "
                                  "MemAvailable falls below this.", minimum=0)
    leave_above_bytes: int | None = doc(
        "It leaves this state for a better one only once MemAvailable is above this (the "
        "threshold plus the exit margin) and memory pressure has eased.", minimum=0)


@dataclass(frozen=True, slots=True)
class LadderTransition:
    """One move of the node between ladder states."""

    from_state: str | None = doc("The state before; absent for the state the agent started "
                                 "in.", max_length=16)
    to_state: str | None = doc("The state after.", max_length=16)
    at: str | None = doc("When (RFC 3339).", max_length=64)
    reason: str | None = doc("Why: the figure that crossed a threshold.", max_length=1024)


@dataclass(frozen=True, slots=True)
class ReliefRequest:
    """A live migration the agent asked KubeVirt for, to relieve the node."""

    vmi_namespace: str | None = doc("The VMI's namespace.", max_length=63)
    vmi_name: str | None = doc("The VMI asked to move.", max_length=253)
    migration: str | None = doc("The VirtualMachineInstanceMigration created.",
                                max_length=253)
    at: str | None = doc("When it was asked for (RFC 3339).", max_length=64)
    reason: str | None = doc("Why this guest: what it frees against what it costs to copy.",
                             max_length=1024)


@dataclass(frozen=True, slots=True)
class Ladder:
    """The node's reclamation ladder: the state that gates every lever, and why."""

    state: str | None = doc(
        "Plenty (KSM idles, guests grow back), Clear (hold; only pressured guests grow), Soft "
        "(KSM may boost, idle guests give one step per cycle), Hard (guests reclaimed to "
        "their floors, zswap if the policy allows, nothing grows but a pressured guest) or "
        "Critical (as Hard, and relief is wanted).", max_length=16)
    since: str | None = doc("When the node entered this state (RFC 3339); when the agent "
                            "started, if it has not changed since.", max_length=64)
    reason: str | None = doc("Why the node entered this state.", max_length=1024)
    relief: bool | None = doc("True in Critical: the node wants relief (a guest moved "
                              "elsewhere) before the kubelet evicts or the kernel OOM-kills.")
    minimum_bytes: int | None = doc("M, the minimum the thresholds are derived from.",
                                    minimum=0)
    minimum_source: str | None = doc("Where M comes from: the policy, or VMware's minFree "
                                     "rule for this node's MemTotal.", max_length=256)
    thresholds: list[LadderThreshold] | None = doc(
        "Each state's MemAvailable thresholds, best state first.", max_items=4,
        list_type="atomic")
    transitions: list[LadderTransition] | None = doc(
        "The last transitions since the agent started, newest first.", max_items=16,
        list_type="atomic")
    last_relief: ReliefRequest | None = doc("The last live migration the agent asked for.")
    relief_status: str | None = doc(
        "What relief is doing now: asked (and for whom), waiting (cooldown, migrations in "
        "flight, reclaim's own cycles) or unable (no guest can migrate, local mode), and why.",
        max_length=1024)
    taint: str | None = doc("The pressure taint the agent keeps on its Node "
                            "(PreferNoSchedule or NoSchedule), when ladder.relief.taint is on.",
                            max_length=32)


@dataclass(frozen=True, slots=True)
class Ksmd:
    """ksmd's own CPU use, measured from its CPU time between two cycles."""

    cpu_percent: str | None = doc("Percent of one core ksmd used since the last cycle.",
                                  max_length=16)
    budget_percent: int | None = doc("The most the policy lets ksmd use (Adaptive KSM's "
                                     "cpuBudgetPercent, the kernel advisor's maxCpuPercent); "
                                     "absent when the policy sets none.", minimum=0)


@dataclass(frozen=True, slots=True)
class LeverSavings:
    """What each lever saves, in bytes."""

    merged_bytes: int | None = doc("Page merging (KSM's general_profit when the kernel reports "
                                   "it, else pages_sharing and zero pages).", minimum=0)
    ballooned_bytes: int | None = doc("Ballooning: each managed guest's maximum less the least "
                                      "the policy would leave it (its floor).", minimum=0)
    compressed_bytes: int | None = doc("zswap: original minus compressed size.", minimum=0)
    total_bytes: int | None = doc("The sum.", minimum=0)


@dataclass(frozen=True, slots=True)
class CapacityEvidence:
    """What the supported ratio rests on."""

    window_seconds: int | None = doc("The window the savings were looked at over.", minimum=0)
    observed_seconds: int | None = doc("How much of the window the node has samples for "
                                       "(samples survive agent restarts; time the agent was "
                                       "down is not observed).", minimum=0)
    samples: int | None = doc("Samples in the window (one per minute: the least of each "
                              "lever's saving that minute).", minimum=0)
    settled: bool | None = doc("True once the samples cover the window: only then may the "
                               "controller raise KubeVirt's ratio on it.")
    percentile: int | None = doc("The percentile of each lever's saving that counts as "
                                 "sustained.", minimum=0)
    margin_percent: int | None = doc("Taken off the sustained savings.", minimum=0)
    pressure_seconds: int | None = doc("Time within the window the ladder was in Hard or "
                                       "Critical.", minimum=0)
    pressure_budget_percent: int | None = doc("Share of the window in Hard or Critical at "
                                              "which savings count for nothing.", minimum=0)
    since: str | None = doc("The oldest sample in the window (RFC 3339).", max_length=64)


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    """Measured headroom: what the node physically has, what its guests are promised, what
    the levers save sustainably, and the overcommit ratio that supports (docs/capacity.md)."""

    physical_bytes: int | None = doc("MemTotal.", minimum=0)
    reserve_bytes: int | None = doc("MemAvailable the node keeps: the ladder's Soft threshold "
                                    "(below it reclamation starts).", minimum=0)
    non_guest_bytes: int | None = doc("Memory in use by everything but the guests: MemTotal - "
                                      "MemAvailable - the guests' resident memory + what KSM "
                                      "merged of it.", minimum=0)
    guest_committed_bytes: int | None = doc("The guests' maxima, summed: what they were "
                                            "promised.", minimum=0)
    guest_resident_bytes: int | None = doc("What the guests' QEMU processes hold now.",
                                           minimum=0)
    guest_capacity_bytes: int | None = doc("Memory for guests without overcommit: MemTotal - "
                                           "reserve - non-guest use.")
    sustained: LeverSavings | None = doc("Each lever's sustained saving: the percentile of its "
                                         "samples over the window.")
    counted_bytes: int | None = doc("The sustained savings that count: less the margin, and "
                                    "less the share of the pressure budget the node used.",
                                    minimum=0)
    headroom_bytes: int | None = doc("More guest memory (at its maximum) the node could be "
                                     "promised: guest capacity + counted savings - committed. "
                                     "Negative when it is promised more than it supports.")
    supported_percent: int | None = doc("The overcommit ratio the node supports, in percent "
                                        "like KubeVirt's memoryOvercommit: (guest capacity + "
                                        "counted savings) / guest capacity, rounded down, at "
                                        "least 100.", minimum=0)
    summary: str | None = doc("The supported ratio, for kubectl get.", max_length=32)
    headroom: str | None = doc("The headroom in human units, for kubectl get.", max_length=32)
    reason: str | None = doc("The arithmetic, in words.", max_length=1024)
    evidence: CapacityEvidence | None = doc("The window, percentile, margin and pressure "
                                            "behind the ratio.")


@dataclass(frozen=True, slots=True)
class NodeStateSpec:
    """Identifies the node; the agent writes everything else into status."""

    node_name: str = doc("The node this state belongs to (equal to metadata.name).",
                         required=True, max_length=253)


@dataclass(frozen=True, slots=True)
class NodeStateStatus:
    """What the node's agent found, applied and saved."""

    policy: PolicyRef | None = doc("The policy in force; absent when none selects the node.")
    overridden: list[OverriddenPolicy] | None = doc(
        "Policies that select the node but lost to the one in force.", max_items=64,
        list_type="atomic")
    conditions: list[Condition] | None = doc("Ready and Degraded, with reasons.", max_items=8,
                                             list_type="atomic")
    engine: str | None = doc("The merging engine in use: ksm, uksm or none.", max_length=16)
    engines: list[Engine] | None = doc("Kernel interfaces found on the node.", max_items=16,
                                       list_type="atomic")
    settings: dict[str, str] | None = doc(
        "Current values of every setting the agent reads, keyed by path under the host root.",
        max_properties=128, item_max_length=256)
    counters: dict[str, int] | None = doc("Engine counters (KSM/UKSM/zswap/swap), by name.",
                                          max_properties=128)
    originals: dict[str, str] | None = doc(
        "The value each touched setting had before the agent first changed it; what restore "
        "puts back.", max_properties=128, item_max_length=256)
    saved: Saved | None = doc("Memory saved on this node.")
    memory: HostMemory | None = doc("Host memory and pressure.")
    ladder: Ladder | None = doc("The node's reclamation ladder state, which gates every "
                                "lever.")
    ksmd: Ksmd | None = doc("ksmd's CPU use and the policy's budget for it.")
    capacity: NodeCapacity | None = doc("Measured headroom and the overcommit ratio the node "
                                        "supports.")
    guest_count: int | None = doc("Number of guests seen.", minimum=0)
    guests: list[Guest] | None = doc("One entry per guest.", max_items=1024, list_type="atomic")
    endpoints_down: list[str] | None = doc(
        "libvirt endpoints the last cycle could not use, each with why. A node problem "
        "(Degraded GuestsFailed) only while the policy balloons or guests still hold a balloon "
        "size or statistics period to give back.", max_items=32, item_max_length=1024,
        list_type="atomic")
    last_errors: list[str] | None = doc("Errors from the last cycle.", max_items=32,
                                        item_max_length=1024, list_type="atomic")
    last_update: str | None = doc("When the agent last wrote this status (RFC 3339).",
                                  max_length=64)


@dataclass(frozen=True, slots=True)
class NodeCounts:
    """How many nodes the policy reaches."""

    matched: int | None = doc("Nodes the selector matches.", minimum=0)
    applied: int | None = doc("Nodes where this policy is in force and applied.", minimum=0)
    failed: int | None = doc("Nodes where it is in force but the node reports a problem "
                             "(Ready=False or Degraded=True).", minimum=0)
    overridden: int | None = doc("Nodes where a higher-priority policy wins.", minimum=0)
    summary: str | None = doc("applied/matched, for kubectl get.", max_length=32)


@dataclass(frozen=True, slots=True)
class NodeProblem:
    """A node where the policy has a problem."""

    node: str | None = doc("The node.", max_length=253)
    reason: str | None = doc("A CamelCase reason.", max_length=128)
    message: str | None = doc("What is wrong.", max_length=1024)


@dataclass(frozen=True, slots=True)
class KubeVirtRatio:
    """KubeVirt's memoryOvercommit as the controller last saw (and, when managed, set) it."""

    managed: bool | None = doc("True while the controller manages the ratio for this policy "
                               "(capacity.kubevirt.manage and the policy covers every node "
                               "KubeVirt schedules VMs on).")
    configured_percent: int | None = doc("memoryOvercommit in the KubeVirt CR (absent: KubeVirt's "
                                         "default, 100).", minimum=0)
    target_percent: int | None = doc("What the nodes support, within the policy's bounds and "
                                     "step limits: where the controller takes the ratio.",
                                     minimum=0)
    reason: str | None = doc("Why the ratio is (not) managed or was changed.", max_length=1024)
    last_change: str | None = doc("When the controller last changed the ratio (RFC 3339).",
                                  max_length=64)


@dataclass(frozen=True, slots=True)
class PolicyCapacity:
    """The overcommit ratio the policy's nodes support: the least of theirs."""

    supported_percent: int | None = doc("The least supported ratio (percent) of the nodes "
                                        "where the policy is in force.", minimum=0)
    limiting_node: str | None = doc("The node with that least ratio.", max_length=253)
    nodes: int | None = doc("Nodes that reported their capacity.", minimum=0)
    settled_nodes: int | None = doc("Of those, nodes whose evidence covers the whole window.",
                                    minimum=0)
    physical_bytes: int | None = doc("MemTotal, summed.", minimum=0)
    guest_committed_bytes: int | None = doc("The guests' maxima, summed.", minimum=0)
    counted_bytes: int | None = doc("The counted sustained savings, summed.", minimum=0)
    headroom_bytes: int | None = doc("The nodes' headroom, summed.")
    summary: str | None = doc("The supported ratio, for kubectl get.", max_length=32)
    kubevirt: KubeVirtRatio | None = doc("KubeVirt's memoryOvercommit, when the policy covers "
                                         "the nodes KubeVirt schedules VMs on.")


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    """The cluster-wide summary the controller writes (small, bounded)."""

    observed_generation: int | None = doc("The generation this status describes.", minimum=0)
    conditions: list[Condition] | None = doc("Ready, Reconciling and Stalled (kstatus).",
                                             max_items=8, list_type="atomic")
    nodes: NodeCounts | None = doc("Node counts.")
    saved: Saved | None = doc("Bytes saved on all nodes where the policy is in force.")
    problems: list[NodeProblem] | None = doc("Up to 20 nodes with problems.", max_items=20,
                                             list_type="atomic")
    capacity: PolicyCapacity | None = doc("The overcommit ratio the nodes support, and "
                                          "KubeVirt's.")
