"""What the balloon planner sees of one guest, and what it decides. Pure data, no libvirt.

Memory sizes are KiB throughout, as libvirt reports them. Counters (swap_in, major_fault, ...)
are cumulative as the guest's driver reports them; the planner turns them into rates between
two observations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GuestObservation:
    """One running guest on one libvirt endpoint at one moment."""

    endpoint: str  # the libvirt URI it was seen through
    domain: str  # the libvirt domain name (KubeVirt: "<namespace>_<name>")
    uuid: str
    time: float  # monotonic seconds when observed
    max_kib: int  # the balloon's ceiling: the domain's maximum memory
    current_kib: int  # the balloon's current size ("actual")
    has_balloon: bool  # a virtio balloon device exists (model != none)
    # Balloon statistics from the guest driver, KiB or counts: usable, available, unused,
    # disk_caches, rss, swap_in, swap_out, major_fault, minor_fault, last_update (seconds).
    # Keys are absent while the driver has not reported.
    stats: Mapping[str, int] = field(default_factory=dict)
    vmi_namespace: str | None = None
    vmi_name: str | None = None
    vmi_uid: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)  # VMI labels, when known
    annotations: Mapping[str, str] = field(default_factory=dict)  # VMI annotations
    request_kib: int | None = None  # the VMI's memory request: a hard floor when known
    problem: str | None = None  # set when the guest cannot be observed properly (why)
    # Seconds since the guest driver last updated ``stats`` (the adapter computes it from
    # ``last_update``, epoch seconds, against its wall clock); None when unknown. Kept out of
    # the planner so it stays clock-free: it only compares this with the stats period.
    stats_age_s: float | None = None
    stats_period_s: int | None = None  # the balloon's live statistics period (0 = off)
    # Why the guest is never ballooned (VFIO host devices, hugepage-backed memory, dedicated
    # CPUs, realtime): from its domain XML and, on KubeVirt, its VMI spec.
    exclusions: tuple[str, ...] = ()
    # The balloon deflates on OOM (libvirt autodeflate='on'): a demand larger than what the
    # balloon left the guest takes pages back instead of OOM-killing. None: no balloon device.
    autodeflate: bool | None = None
    # The guest reports its free pages (libvirt freePageReporting='on', KubeVirt's default):
    # the host already has back what the guest does not use. None: no balloon device.
    free_page_reporting: bool | None = None
    # A migration (or another libvirt job) in progress, what it is; None when there is none.
    migration: str | None = None
    # KubeVirt: whether the VMI says it can be live-migrated (its LiveMigratable condition);
    # None when unknown (no VMI).
    live_migratable: bool | None = None
    # PSI of the guest's own cgroup (its QEMU process's cgroup v2 memory.pressure), counters
    # as the host's psi source has them (some_avg10 in hundredths of a percent, ...); None
    # where the node has no cgroup v2 or the process was not found.
    cgroup_pressure: Mapping[str, int] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.endpoint, self.domain)


@dataclass(frozen=True)
class BalloonTarget:
    """A decision for one guest: move its balloon from ``from_kib`` to ``to_kib`` because ..."""

    endpoint: str
    domain: str
    from_kib: int
    to_kib: int
    reason: str

    def as_json(self) -> dict[str, object]:
        return {"domain": self.domain, "endpoint": self.endpoint, "from": self.from_kib * 1024,
                "to": self.to_kib * 1024, "reason": self.reason}


@dataclass(frozen=True)
class GuestDecision:
    """Per-guest outcome of a cycle, for status: the target (or None when left alone) and why."""

    guest: GuestObservation
    target_kib: int | None
    reason: str
    usable_kib: int | None = None
    floor_kib: int | None = None  # the least the planner would leave the guest (managed only)
    pressured: bool = False  # the guest showed memory pressure this cycle
    use_growth_kib: int = 0  # how much more the guest used than at the sample before (managed)
