"""The MemoryOvercommitPolicy API: one declaration that yields the CRD schema and the model.

Field names are snake_case here and camelCase on the wire (``pages_to_scan`` ↔ ``pagesToScan``).
An unset field (None) means "leave this setting as the node has it": the agent changes only what
a policy names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from overcommit.api.schema import Quantity, Rule, doc, register_rules

GROUP = "memoryovercommit.io"
VERSION = "v1alpha1"
POLICY_KIND = "MemoryOvercommitPolicy"
NODE_STATE_KIND = "MemoryOvercommitNodeState"

LABEL_KEY_PATTERN = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                     r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
UKSM_RATIO_PATTERN = r"^([1-9][0-9]{0,3}|10000|MAX/([1-9][0-9]{0,3}|10000))$"


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class KsmMode(StrEnum):
    STATIC = "Static"
    ADAPTIVE = "Adaptive"
    KERNEL_ADVISOR = "KernelAdvisor"


class UksmGovernor(StrEnum):
    FULL = "full"
    MEDIUM = "medium"
    LOW = "low"
    QUIET = "quiet"


class ZswapCompressor(StrEnum):
    LZO = "lzo"
    LZO_RLE = "lzo-rle"
    LZ4 = "lz4"
    LZ4HC = "lz4hc"
    ZSTD = "zstd"
    DEFLATE = "deflate"
    C842 = "842"


class BalloonMode(StrEnum):
    OFF = "Off"
    STATIC = "Static"
    AUTO = "Auto"


# ------------------------------------------------------------------------------------------------
# Selectors


@dataclass(frozen=True)
class LabelSelectorRequirement:
    """One label requirement: a key, an operator and (for In/NotIn) the values."""

    key: str = doc("The label key the requirement applies to.", required=True,
                   max_length=317, pattern=LABEL_KEY_PATTERN)
    operator: SelectorOperator = doc("How the key relates to the values: In, NotIn, Exists or "
                                     "DoesNotExist.", required=True)
    values: list[str] | None = doc("The values for In and NotIn; must be empty for Exists and "
                                   "DoesNotExist.", max_items=64, item_max_length=63,
                                   list_type="atomic")

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(cel="(self.operator in ['In', 'NotIn']) == "
                 "(has(self.values) && size(self.values) > 0)",
             message="values must be non-empty for the In and NotIn operators and empty for "
                     "Exists and DoesNotExist",
             check=lambda s: (s["operator"] in ("In", "NotIn")) == bool(s.get("values"))),
    )


@dataclass(frozen=True)
class LabelSelector:
    """A standard Kubernetes label selector; an empty selector selects every node."""

    match_labels: dict[str, str] | None = doc(
        "Labels that must all be present with exactly these values.",
        max_properties=64, item_max_length=63)
    match_expressions: list[LabelSelectorRequirement] | None = doc(
        "Requirements that must all hold.", max_items=32, list_type="atomic")


# ------------------------------------------------------------------------------------------------
# KSM


@dataclass(frozen=True)
class KsmAdvisor:
    """The kernel's scan-time advisor (advisor_* files): it tunes pages_to_scan by itself."""

    max_cpu_percent: int | None = doc("advisor_max_cpu: the most CPU, in percent of one core, "
                                      "ksmd may use.", minimum=1, maximum=100)
    target_scan_time_seconds: int | None = doc(
        "advisor_target_scan_time: how long one full scan should take.",
        minimum=1, maximum=86400)
    min_pages_to_scan: int | None = doc("advisor_min_pages_to_scan: the advisor's starting value "
                                        "(not a floor).", minimum=1, maximum=10_000_000)
    max_pages_to_scan: int | None = doc("advisor_max_pages_to_scan: the advisor's ceiling.",
                                        minimum=1, maximum=10_000_000)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(cel="!has(self.minPagesToScan) || !has(self.maxPagesToScan) || "
                 "self.minPagesToScan <= self.maxPagesToScan",
             message="advisor.minPagesToScan must not be greater than advisor.maxPagesToScan",
             check=lambda s: "minPagesToScan" not in s or "maxPagesToScan" not in s
             or s["minPagesToScan"] <= s["maxPagesToScan"]),
    )


@dataclass(frozen=True)
class KsmAdaptive:
    """Bounds for the agent's Adaptive mode: scan hard while merging pays, within a CPU budget."""

    cpu_budget_percent: int = doc(
        "The most CPU ksmd may use, in percent of one core, measured from ksmd's own CPU time. "
        "The agent lowers the scan rate whenever ksmd exceeds it.",
        default=20, minimum=1, maximum=100)
    min_pages_to_scan: int = doc("pages_to_scan while idling (the trickle that notices new "
                                 "guests).", default=64, minimum=1, maximum=100_000)
    max_pages_to_scan: int = doc("The most pages_to_scan the agent will set.",
                                 default=8000, minimum=1, maximum=100_000)
    sleep_millisecs: int = doc("sleep_millisecs while scanning actively.",
                               default=10, minimum=1, maximum=10_000)
    idle_sleep_millisecs: int = doc("sleep_millisecs while idling: a full scan found nothing "
                                    "new to merge and the node is not under memory pressure.",
                                    default=500, minimum=1, maximum=60_000)
    pressure_available_percent: int = doc(
        "Raises the node's reclamation ladder: below this share of MemAvailable in MemTotal the "
        "node is at least in state Soft (see ladder), where an idle agent re-probes (scans at "
        "the CPU budget for a full scan) every minute instead of every five. 0 leaves the "
        "ladder's own Soft threshold alone.",
        default=20, minimum=0, maximum=100)
    interval_seconds: int = doc("Seconds between the agent's adaptive decisions (the node's "
                                "cycle runs at least this often while the mode is Adaptive).",
                                default=2, minimum=1, maximum=300)
    min_yield_percent: int = doc(
        "Merging 'pays' while a full scan turns at least this share (percent of the pages it "
        "scanned) into newly shared pages; below it the agent backs off to the idle trickle.",
        default=1, minimum=0, maximum=100)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(cel="self.minPagesToScan <= self.maxPagesToScan",
             message="adaptive.minPagesToScan must not be greater than adaptive.maxPagesToScan",
             check=lambda s: s["minPagesToScan"] <= s["maxPagesToScan"]),
        Rule(cel="self.sleepMillisecs <= self.idleSleepMillisecs",
             message="adaptive.sleepMillisecs must not be greater than "
                     "adaptive.idleSleepMillisecs",
             check=lambda s: s["sleepMillisecs"] <= s["idleSleepMillisecs"]),
    )


@dataclass(frozen=True)
class KsmSpec:
    """Kernel samepage merging (/sys/kernel/mm/ksm). Unset fields are left as the node has them."""

    mode: KsmMode = doc(
        "Static writes the values as given; Adaptive lets the agent tune pages_to_scan and "
        "sleep_millisecs from memory pressure, merge yield and ksmd's CPU use; KernelAdvisor "
        "hands the scan rate to the kernel's scan-time advisor (advisor_mode=scan-time).",
        default=KsmMode.STATIC)
    enabled: bool | None = doc("run: true starts ksmd (run=1), false stops it (run=0, or run=2 "
                               "with unmergeOnDisable).")
    unmerge_on_disable: bool = doc(
        "With enabled=false, write run=2: stop and unmerge every merged page. Unmerging needs "
        "the memory back at once; the writing process is the kernel's preferred OOM victim "
        "meanwhile.", default=False)
    allow_unmerge: bool = doc(
        "Allow the agent to unmerge everything (run=2) when mergeAcrossNodes or maxPageSharing "
        "must change while pages are merged (the kernel refuses with EBUSY otherwise). Without "
        "it such a change is reported, not forced.", default=False)
    pages_to_scan: int | None = doc("pages_to_scan: pages ksmd scans per wake-up (Static mode "
                                    "only).", minimum=1, maximum=100_000)
    sleep_millisecs: int | None = doc("sleep_millisecs: how long ksmd sleeps between batches.",
                                      minimum=1, maximum=60_000)
    max_page_sharing: int | None = doc(
        "max_page_sharing: the most mappings one merged page may have. Changing it needs "
        "nothing merged (see allowUnmerge).", minimum=2, maximum=1_048_576)
    merge_across_nodes: bool | None = doc(
        "merge_across_nodes: merge pages from different NUMA nodes. Changing it needs nothing "
        "merged (see allowUnmerge).")
    use_zero_pages: bool | None = doc("use_zero_pages: merge empty pages with the kernel's zero "
                                      "page (affects later merges only).")
    smart_scan: bool | None = doc("smart_scan: skip pages that did not merge in earlier scans "
                                  "(newer kernels).")
    stable_node_chains_prune_millisecs: int | None = doc(
        "stable_node_chains_prune_millisecs: how often stale stable-node chains are pruned.",
        minimum=0, maximum=86_400_000)
    advisor: KsmAdvisor | None = doc("The kernel's scan-time advisor (mode KernelAdvisor only).")
    adaptive: KsmAdaptive | None = doc("Bounds for the agent's tuning (mode Adaptive only).")

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(cel="!has(self.advisor) || self.mode == 'KernelAdvisor'",
             message="advisor settings apply only with mode KernelAdvisor",
             check=lambda s: "advisor" not in s or s["mode"] == "KernelAdvisor"),
        Rule(cel="!has(self.adaptive) || self.mode == 'Adaptive'",
             message="adaptive settings apply only with mode Adaptive",
             check=lambda s: "adaptive" not in s or s["mode"] == "Adaptive"),
        Rule(cel="!has(self.pagesToScan) || self.mode == 'Static'",
             message="pagesToScan can be set only with mode Static: the agent chooses it in "
                     "Adaptive mode and the kernel's advisor in KernelAdvisor mode",
             check=lambda s: "pagesToScan" not in s or s["mode"] == "Static"),
        Rule(cel="!has(self.sleepMillisecs) || self.mode != 'Adaptive'",
             message="sleepMillisecs is chosen by the agent in Adaptive mode; bound it with "
                     "adaptive.sleepMillisecs and adaptive.idleSleepMillisecs",
             check=lambda s: "sleepMillisecs" not in s or s["mode"] != "Adaptive"),
        Rule(cel="self.mode == 'Static' || !has(self.enabled) || self.enabled",
             message="modes Adaptive and KernelAdvisor run ksmd; enabled: false goes only with "
                     "mode Static",
             check=lambda s: s["mode"] == "Static" or s.get("enabled", True) is True),
    )


# ------------------------------------------------------------------------------------------------
# UKSM


@dataclass(frozen=True)
class UksmSpec:
    """UKSM (/sys/kernel/mm/uksm, an out-of-tree patch that replaces KSM and scans all anonymous
    memory). Applied only on nodes whose kernel has it."""

    enabled: bool | None = doc("run: true runs UKSM (1), false stops it (0). UKSM has no "
                               "unmerge-all.")
    cpu_governor: UksmGovernor | None = doc(
        "cpu_governor preset: full, medium, low or quiet. Writing it resets cpuRatios, "
        "evalIntervals and maxCpuPercentage to the preset, so the agent writes it first.")
    max_cpu_percentage: int | None = doc("max_cpu_percentage: UKSM's CPU ceiling in percent "
                                         "(the kernel stores 100 as 99 and raises <10 to 10).",
                                         minimum=10, maximum=99)
    cpu_ratios: list[str] | None = doc(
        "cpu_ratios: four scan-level CPU ratios, each a number in 1/10000 of CPU time (1-10000) "
        "or MAX/n (maxCpuPercentage divided by n). Written only when it changes (the patch "
        "leaks a buffer per write).", min_items=4, max_items=4, item_max_length=10,
        item_pattern=UKSM_RATIO_PATTERN, list_type="atomic")
    eval_intervals: list[int] | None = doc(
        "eval_intervals: four evaluation intervals in milliseconds. The patch's store function "
        "has a memory-safety bug: set this only if you must; the agent warns when it writes it.",
        min_items=4, max_items=4, item_minimum=0, item_maximum=86_400_000, list_type="atomic")
    abundant_threshold: int | None = doc("abundant_threshold: percent (0-99).",
                                         minimum=0, maximum=99)
    thrash_threshold: int | None = doc("thrash_threshold: percent (0-99); 0 turns the thrash "
                                       "filter off.", minimum=0, maximum=99)
    sleep_millisecs: int | None = doc("sleep_millisecs: UKSM's sleep between scan rounds, at "
                                      "most 1000 (UKSM adapts it; the value read back can "
                                      "differ).", minimum=1, maximum=1000)


# ------------------------------------------------------------------------------------------------
# Swap and zswap


@dataclass(frozen=True)
class SwapSpec:
    """Node swap. Swap devices are reported, never created; vm.swappiness is set if named."""

    swappiness: int | None = doc("/proc/sys/vm/swappiness (0-200; kernels before 5.8 accept "
                                 "0-100 and refuse more, which the node state reports).",
                                 minimum=0, maximum=200)


@dataclass(frozen=True)
class ZswapSpec:
    """zswap, the compressed cache in front of swap (/sys/module/zswap/parameters)."""

    enabled: bool | None = doc("enabled: turn zswap on or off. Turning it off does not flush "
                               "the pool.")
    compressor: ZswapCompressor | None = doc(
        "compressor: the compression algorithm; the node reports a clear error if its kernel "
        "lacks it.")
    max_pool_percent: int | None = doc("max_pool_percent: the most RAM, in percent, the "
                                       "compressed pool may use.", minimum=1, maximum=100)
    accept_threshold_percent: int | None = doc(
        "accept_threshold_percent: once the pool was full, accept new pages again only below "
        "this percent of the limit.", minimum=0, maximum=100)
    shrinker_enabled: bool | None = doc("shrinker_enabled: write cold compressed pages back to "
                                        "swap under memory pressure.")
    only_under_pressure: bool = doc(
        "Turn zswap on only while the node's reclamation ladder is in state Hard or Critical, "
        "and otherwise give 'enabled' back the value the node had before the agent changed it "
        "(the recorded original; a node that had zswap on keeps it on). The other zswap "
        "settings are applied in every state, so the pool is ready when it is turned on. "
        "Turning zswap off does not flush the pool: pages already compressed stay there until "
        "they are read back. Leave 'enabled' unset with it.", default=False)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(cel="!self.onlyUnderPressure || !has(self.enabled)",
             message="zswap.enabled is decided by the ladder with onlyUnderPressure: leave it "
                     "unset",
             check=lambda s: not s.get("onlyUnderPressure") or "enabled" not in s),
    )


# ------------------------------------------------------------------------------------------------
# Ballooning


@dataclass(frozen=True)
class VmSelector:
    """Which guests the balloon section applies to; an empty selector selects every guest."""

    namespaces: list[str] | None = doc("KubeVirt: only VMIs in these namespaces.",
                                       max_items=64, item_max_length=63,
                                       item_pattern=NAMESPACE_PATTERN, list_type="set")
    match_labels: dict[str, str] | None = doc("KubeVirt: VMI labels that must all match.",
                                              max_properties=64, item_max_length=63)
    match_expressions: list[LabelSelectorRequirement] | None = doc(
        "KubeVirt: VMI label requirements that must all hold.", max_items=32,
        list_type="atomic")
    domain_name_pattern: str | None = doc(
        "Plain libvirt hosts: a shell-style pattern (fnmatch: *, ?, [seq]) the libvirt domain "
        "name must match.", max_length=253)


@dataclass(frozen=True)
class BalloonStatic:
    """A fixed balloon target per selected guest: a share of its maximum, or a size."""

    target_percent: int | None = doc("Target memory in percent of the guest's maximum.",
                                     minimum=1, maximum=100)
    target: Quantity | None = doc("Target memory as a quantity (e.g. 768Mi); capped at the "
                                  "guest's maximum.")

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(cel="has(self.targetPercent) != has(self.target)",
             message="set exactly one of static.targetPercent and static.target",
             check=lambda s: ("targetPercent" in s) != ("target" in s)),
    )


@dataclass(frozen=True)
class BalloonFloor:
    """Hard floors no balloon decision crosses."""

    min_percent: int = doc("Never below this percent of the guest's maximum.",
                           default=25, minimum=1, maximum=100)
    min: Quantity | None = doc("Never below this size (e.g. 512Mi).")
    guest_free_margin_percent: int = doc(
        "Always leave the guest this share (percent of its current memory) of usable memory on "
        "top of what it uses now.", default=10, minimum=0, maximum=90)


@dataclass(frozen=True)
class BalloonAuto:
    """Automatic ballooning from host and guest pressure."""

    host_available_low_percent: int = doc(
        "Raises the node's reclamation ladder: below this share of MemAvailable in MemTotal "
        "the node is at least in state Soft, where idle guests give memory back (see ladder).",
        default=20, minimum=1, maximum=99)
    host_available_high_percent: int = doc(
        "Raises the ladder's Plenty threshold to at least this share of MemTotal: above it "
        "(plus the ladder's exit margin when coming from Clear) guests are grown back toward "
        "their maximum.", default=40, minimum=1, maximum=100)
    max_step_percent: int = doc("The most a guest's balloon moves in one cycle, in percent of "
                                "its maximum.", default=10, minimum=1, maximum=100)
    min_step: Quantity = doc(
        "The step is never smaller than this (capped at the guest's maximum): a percentage "
        "alone moves small guests by a few MiB per cycle. Floors and the host's need still "
        "bound every move.", default="128Mi")
    interval_seconds: int = doc("Seconds between balloon decisions.", default=10,
                                minimum=1, maximum=3600)
    pressure_major_faults_per_second: int = doc(
        "A guest with more major faults per second than this counts as under pressure and is "
        "grown first.", default=20, minimum=1, maximum=1_000_000)
    pressure_swap_in_pages_per_second: int = doc(
        "A guest swapping in more pages per second than this counts as under pressure.",
        default=20, minimum=1, maximum=1_000_000)
    pressure_cgroup_percent: int = doc(
        "A guest whose own cgroup (its QEMU process's cgroup v2 memory.pressure, 'some' avg10) "
        "stalls on memory more than this percent of the time counts as under pressure. Read "
        "only where the node has cgroup v2 (or the hybrid layout's unified hierarchy).",
        default=10, minimum=1, maximum=100)
    default_shares: int = doc("Weight of a guest when memory is shared out (annotation "
                              "memoryovercommit.io/balloon-shares overrides it).",
                              default=1000, minimum=1, maximum=100_000)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(cel="self.hostAvailableLowPercent < self.hostAvailableHighPercent",
             message="auto.hostAvailableLowPercent must be below auto.hostAvailableHighPercent",
             check=lambda s: s["hostAvailableLowPercent"] < s["hostAvailableHighPercent"]),
    )


def _static_not_below_floor_percent(s: Mapping[str, Any]) -> bool:
    static, floor = s.get("static", {}), s.get("floor", {})
    if "targetPercent" not in static or "minPercent" not in floor:
        return True
    return bool(static["targetPercent"] >= floor["minPercent"])


def _static_not_below_floor_size(s: Mapping[str, Any]) -> bool:
    from overcommit.api.schema import quantity_bytes

    static, floor = s.get("static", {}), s.get("floor", {})
    if "target" not in static or "min" not in floor:
        return True
    return quantity_bytes(static["target"]) >= quantity_bytes(floor["min"])


@dataclass(frozen=True)
class BalloonSpec:
    """Guest ballooning through libvirt (virtio-balloon)."""

    mode: BalloonMode = doc("Off leaves balloons alone; Static sets a fixed target; Auto moves "
                            "memory from idle to pressured guests.", default=BalloonMode.OFF)
    vm_selector: VmSelector | None = doc("Which guests to manage; empty means all.")
    static: BalloonStatic | None = doc("The fixed target (mode Static).")
    floor: BalloonFloor | None = doc("Hard floors (defaults apply even when omitted).")
    auto: BalloonAuto | None = doc("Automatic ballooning parameters (mode Auto).")
    stats_period_seconds: int = doc("Balloon statistics period the agent enables on each guest.",
                                    default=10, minimum=1, maximum=3600)
    restore_on_release: bool = doc("When the policy stops applying, grow guests back to their "
                                   "maximum.", default=True)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(cel="self.mode != 'Static' || has(self.static)",
             message="mode Static needs a static section with targetPercent or target",
             check=lambda s: s["mode"] != "Static" or "static" in s),
        Rule(cel="!has(self.static) || self.mode == 'Static'",
             message="static settings apply only with mode Static",
             check=lambda s: "static" not in s or s["mode"] == "Static"),
        Rule(cel="!has(self.auto) || self.mode == 'Auto'",
             message="auto settings apply only with mode Auto",
             check=lambda s: "auto" not in s or s["mode"] == "Auto"),
        Rule(cel="!has(self.static) || !has(self.static.targetPercent) || !has(self.floor) || "
                 "self.static.targetPercent >= self.floor.minPercent",
             message="static.targetPercent must not be below floor.minPercent",
             check=_static_not_below_floor_percent),
        Rule(cel="!has(self.static) || !has(self.static.target) || !has(self.floor) || "
                 "!has(self.floor.min) || quantity(string(self.static.target))"
                 ".compareTo(quantity(string(self.floor.min))) >= 0",
             message="static.target must not be below floor.min",
             check=_static_not_below_floor_size, portable_cel=False),
    )


# ------------------------------------------------------------------------------------------------
# The reclamation ladder


def _minimum_at_least_16mi(s: Mapping[str, Any]) -> bool:
    from overcommit.api.schema import quantity_bytes

    return "minimumAvailable" not in s or quantity_bytes(s["minimumAvailable"]) >= 16 << 20


@dataclass(frozen=True)
class LadderPsi:
    """How host memory pressure (PSI: /proc/pressure/memory, the avg10 figures) moves the node
    down the ladder, whatever MemAvailable says."""

    enabled: bool = doc("Use PSI at all (a node without PSI, e.g. booted with psi=0, is judged "
                        "on MemAvailable alone anyway).", default=True)
    some_soft_percent: int = doc(
        "'some' avg10 at or above this percent (at least one task stalled on memory that share "
        "of the last 10 s) puts the node in Soft or worse.",
        default=10, minimum=1, maximum=100)
    full_hard_percent: int = doc(
        "'full' avg10 at or above this percent (every non-idle task stalled at once) puts the "
        "node in Hard or worse.", default=5, minimum=1, maximum=100)
    full_critical_percent: int = doc(
        "'full' avg10 at or above this percent puts the node in Critical.",
        default=20, minimum=1, maximum=100)
    exit_percent: int = doc(
        "A state entered on PSI is left only once the same figure is below this percent of "
        "its threshold (the default 50 leaves Hard below 'full' 2.5%).",
        default=50, minimum=1, maximum=99)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(cel="self.fullHardPercent < self.fullCriticalPercent",
             message="psi.fullHardPercent must be below psi.fullCriticalPercent",
             check=lambda s: s["fullHardPercent"] < s["fullCriticalPercent"]),
    )


@dataclass(frozen=True)
class LadderRelief:
    """What the agent does when reclaim cannot bring the node back out of Critical: it asks
    KubeVirt to live-migrate one guest away (a VirtualMachineInstanceMigration), the one whose
    departure frees most for the least to copy; never a guest that cannot migrate (its VMI's
    LiveMigratable condition is not True) or one already migrating. The kubelet's eviction
    stays the last resort. On plain libvirt hosts (local mode) relief is reported only."""

    migrate: bool = doc("Ask KubeVirt to live-migrate a guest away while Critical persists.",
                        default=True)
    after_cycles: int = doc(
        "Ask only once the node has been Critical for this many cycles in a row (the first "
        "cycles reclaim from guests down to their floors).", default=2, minimum=1, maximum=20)
    cooldown_seconds: int = doc(
        "After asking, wait at least this long before asking again (from this node).",
        default=300, minimum=10, maximum=86_400)
    max_in_flight_per_node: int = doc(
        "Ask only while fewer migrations than this are in flight for this node's guests.",
        default=1, minimum=1, maximum=100)
    max_in_flight_per_cluster: int = doc(
        "Ask only while fewer migrations than this are in flight in the whole cluster (every "
        "VirtualMachineInstanceMigration not yet Succeeded or Failed counts).",
        default=2, minimum=1, maximum=1000)
    taint: bool = doc(
        "Taint the node while under pressure so the scheduler stops adding VMs: "
        "memoryovercommit.io/memory-pressure with effect PreferNoSchedule in Hard, NoSchedule "
        "in Critical; removed once the node is better than Hard.", default=False)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(cel="self.maxInFlightPerNode <= self.maxInFlightPerCluster",
             message="relief.maxInFlightPerNode must not be greater than "
                     "relief.maxInFlightPerCluster",
             check=lambda s: s["maxInFlightPerNode"] <= s["maxInFlightPerCluster"]),
    )


@dataclass(frozen=True)
class LadderSpec:
    """The node's reclamation ladder: one state (Plenty, Clear, Soft, Hard, Critical) computed
    every cycle from MemAvailable against a minimum M and from memory PSI, with hysteresis,
    that gates what every lever may do. Thresholds are percent of M; a state is entered below
    its threshold at once and left upward only above it plus exitMarginPercent. Auto
    ballooning's hostAvailable*Percent and Adaptive KSM's pressureAvailablePercent raise the
    Soft and Plenty thresholds to at least their share of MemTotal."""

    minimum_available: Quantity | None = doc(
        "M, the least MemAvailable the node should keep (at least 16Mi; keep it above the "
        "kubelet's eviction threshold, memory.available<100Mi by default, so the ladder acts "
        "first). Default: VMware's minFree rule, 899 MiB for the first 28 GiB of MemTotal "
        "(pro rata on smaller nodes) plus 1% of the rest, and never below 200Mi.")
    critical_percent: int = doc("Critical below this percent of M: everything of Hard, and "
                                "relief is wanted.", default=100, minimum=1, maximum=10_000)
    hard_percent: int = doc("Hard below this percent of M: guests are reclaimed down to their "
                            "floors, zswap may run, nothing grows but a pressured guest.",
                            default=200, minimum=1, maximum=10_000)
    soft_percent: int = doc("Soft below this percent of M: KSM may boost, idle guests give one "
                            "step per cycle.", default=400, minimum=1, maximum=10_000)
    plenty_percent: int = doc("Plenty above this percent of M (coming from Clear: above it "
                              "plus the exit margin): guests grow back, KSM idles.",
                              default=800, minimum=1, maximum=10_000)
    exit_margin_percent: int = doc(
        "Hysteresis: a state is left upward only once MemAvailable is this percent above the "
        "threshold that entered it.", default=25, minimum=1, maximum=100)
    psi: LadderPsi | None = doc("Memory pressure (PSI) thresholds (defaults apply when "
                                "omitted).")
    relief: LadderRelief | None = doc("What happens when reclaim cannot bring the node out of "
                                      "Critical (defaults apply when omitted).")

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(cel="self.criticalPercent < self.hardPercent && self.hardPercent < "
                 "self.softPercent && self.softPercent < self.plentyPercent",
             message="ladder thresholds must rise: criticalPercent < hardPercent < "
                     "softPercent < plentyPercent",
             check=lambda s: s["criticalPercent"] < s["hardPercent"] < s["softPercent"]
             < s["plentyPercent"]),
        Rule(cel="!has(self.minimumAvailable) || quantity(string(self.minimumAvailable))"
                 ".compareTo(quantity('16Mi')) >= 0",
             message="ladder.minimumAvailable must be at least 16Mi",
             check=_minimum_at_least_16mi, portable_cel=False),
    )


# ------------------------------------------------------------------------------------------------
# Capacity: measured headroom and the overcommit ratio it supports


@dataclass(frozen=True)
class CapacityKubeVirt:
    """Keep KubeVirt's cluster-wide memory overcommit ratio
    (spec.configuration.developerConfiguration.memoryOvercommit of the KubeVirt CR) in line
    with what the nodes support. Done by the controller, only while this policy is in force on
    every node KubeVirt schedules VMs on (label kubevirt.io/schedulable=true) and every one of
    them reports its capacity: lowered at once when a node supports less, raised by at most
    stepUpPercent once per stepUpIntervalSeconds, and only when every node's evidence covers
    the whole window. Running VMs take a changed ratio at their next live migration."""

    manage: bool = doc("Let the controller set KubeVirt's memoryOvercommit from the supported "
                       "ratio. Off by default: the ratio is then only reported.",
                       default=False)
    min_percent: int = doc("Never set memoryOvercommit below this percent.", default=100,
                           minimum=100, maximum=1000)
    max_percent: int = doc("Never set memoryOvercommit above this percent.", default=150,
                           minimum=100, maximum=1000)
    step_up_percent: int = doc("The most one raise adds, in percentage points.", default=10,
                               minimum=1, maximum=900)
    step_up_interval_seconds: int = doc(
        "At least this long between two raises, and since the last lowering.",
        default=3600, minimum=60, maximum=604_800)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(cel="self.minPercent <= self.maxPercent",
             message="capacity.kubevirt.minPercent must not be greater than maxPercent",
             check=lambda s: s["minPercent"] <= s["maxPercent"]),
    )


@dataclass(frozen=True)
class CapacitySpec:
    """How each node measures the overcommit ratio it supports: every lever's saving is
    sampled for a window, the sustained saving is a low percentile of it (not its peak), a
    margin is taken off, and time the node spent in the ladder's Hard or Critical state
    reduces it further (docs/capacity.md has the formula). The defaults apply when omitted."""

    window_seconds: int = doc("How far back the savings are looked at (the node keeps at most "
                              "a day).", default=3600, minimum=300, maximum=86_400)
    percentile: int = doc("The percentile of each lever's saving over the window that counts "
                          "as sustained (5: the saving held 95% of the time).", default=5,
                          minimum=0, maximum=50)
    margin_percent: int = doc("Taken off the sustained savings before they count.",
                              default=10, minimum=0, maximum=90)
    pressure_budget_percent: int = doc(
        "Share of the window in the ladder's Hard or Critical state at which the savings "
        "count for nothing (the ratio falls to 100%); less time reduces them pro rata.",
        default=5, minimum=1, maximum=100)
    kubevirt: CapacityKubeVirt | None = doc("Manage KubeVirt's memoryOvercommit from the "
                                            "supported ratio (off unless set).")


# ------------------------------------------------------------------------------------------------
# The policy


@dataclass(frozen=True)
class PolicySpec:
    """What a MemoryOvercommitPolicy asks of the nodes it selects."""

    node_selector: LabelSelector | None = doc("Which nodes the policy applies to; empty or "
                                              "absent selects every node.")
    priority: int = doc("When several policies select a node the highest priority wins; ties "
                        "go to the oldest policy, then to the name in alphabetical order.",
                        default=0, minimum=-1_000_000, maximum=1_000_000)
    dry_run: bool = doc("Observe and report the planned changes without touching the node.",
                        default=False)
    ksm: KsmSpec | None = doc("Kernel samepage merging settings.")
    uksm: UksmSpec | None = doc("UKSM settings, for nodes whose kernel has UKSM instead of KSM.")
    swap: SwapSpec | None = doc("Swap settings.")
    zswap: ZswapSpec | None = doc("zswap settings.")
    balloon: BalloonSpec | None = doc("Guest ballooning through libvirt.")
    ladder: LadderSpec | None = doc(
        "The node's reclamation ladder (Plenty, Clear, Soft, Hard, Critical), which gates what "
        "the levers may do; the defaults apply when omitted.")
    capacity: CapacitySpec | None = doc(
        "How the nodes measure the overcommit ratio they support, and whether the controller "
        "keeps KubeVirt's memoryOvercommit in line with it; the defaults apply when omitted.")

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(cel="has(self.ksm) || has(self.uksm) || has(self.swap) || has(self.zswap) || "
                 "has(self.balloon)",
             message="a policy must configure at least one of ksm, uksm, swap, zswap or balloon",
             check=lambda s: any(k in s for k in ("ksm", "uksm", "swap", "zswap", "balloon"))),
    )


API_CLASSES: tuple[type, ...] = (
    CapacityKubeVirt, CapacitySpec,
    LabelSelectorRequirement, LabelSelector, KsmAdvisor, KsmAdaptive, KsmSpec, UksmSpec,
    SwapSpec, ZswapSpec, VmSelector, BalloonStatic, BalloonFloor, BalloonAuto, BalloonSpec,
    LadderPsi, LadderRelief, LadderSpec, PolicySpec,
)
register_rules(*API_CLASSES)
