"""Prometheus metrics of the agent and the controller (documented in docs/metrics.md).

What a node *is* (settings, counters, savings, guests, policy, conditions) is a pure function of
the node state's status, :func:`node_samples`; the agent hands each cycle's status to a
:class:`SnapshotCollector`, which serves exactly the latest snapshot. So the metrics always agree
with the node state, and the series of a guest that vanished (or a setting the kernel no longer
has) disappear with the next cycle: cardinality stays bounded by what the node has now. What the
agent *does* (cycle durations, errors, API writes, Events) are ordinary counters and histograms.

The controller's set (:class:`ControllerMetrics`) follows the same split: per-policy series from
the policy statuses it writes, plus counters and a histogram for its own work.

Both serve ``/metrics`` from :class:`MetricsServer` inside their asyncio loop (aiohttp is already
loaded by kopf, so the endpoint costs no thread and ~1 MiB of imports).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from overcommit.api.status import (
    Condition,
    Guest,
    HostMemory,
    Ksmd,
    Ladder,
    LadderTransition,
    NodeCapacity,
    NodeStateStatus,
    PolicyCapacity,
    PolicyStatus,
    Saved,
)
from overcommit.host import catalog
from overcommit.units import epoch_of

if TYPE_CHECKING:
    from aiohttp import web

PREFIX = "overcommit"
SAVED_KINDS = ("merged", "ballooned", "compressed", "total")  # Saved's <kind>_bytes fields
GUEST_SIZES = ("max", "current", "target", "usable", "resident", "floor")  # Guest's <size>_bytes
MEMORY_KINDS = (("total", "total"), ("available", "available"), ("swap_total", "swap_total"),
                ("swap_free", "swap_free"))  # (label, HostMemory's <field>_bytes)
CAPACITY_KINDS = ("physical", "reserve", "non_guest", "guest_committed", "guest_resident",
                  "guest_capacity", "counted", "headroom")  # NodeCapacity's <kind>_bytes
POLICY_CAPACITY_KINDS = ("physical", "guest_committed", "counted", "headroom")
LEVERS = ("merged", "ballooned", "compressed", "total")  # LeverSavings' <lever>_bytes
GUEST_LABELS = ("domain", "vmi_namespace", "vmi_name")
# Why a cycle (or a part of it) failed; every kind is exported from the start, at 0.
AGENT_ERROR_KINDS = ("setting", "guest", "policy", "api", "host", "internal")
CONTROLLER_ERROR_KINDS = ("api", "internal")
WRITE_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True)
class Series:
    """One documented metric family served from a snapshot."""

    name: str
    labels: tuple[str, ...]
    help: str


@dataclass(frozen=True)
class Sample:
    name: str
    labels: tuple[str, ...]  # values, in the order of the family's label names
    value: float


def _series(*items: Series) -> dict[str, Series]:
    return {s.name: s for s in items}


NODE_SERIES = _series(
    Series(f"{PREFIX}_engine_present", ("engine",),
           "1 when the node's kernel has this interface (ksm, uksm, zswap, swap, meminfo, "
           "psi), else 0."),
    Series(f"{PREFIX}_engine_setting", ("engine", "name"),
           "Current value of a numeric or yes/no (1/0) engine setting, as in the node state's "
           "status.settings."),
    Series(f"{PREFIX}_engine_setting_info", ("engine", "name", "value"),
           "Always 1; carries the value of a textual setting (compressor, advisor_mode, ...)."),
    Series(f"{PREFIX}_engine_counter", ("engine", "name"),
           "An engine counter as the kernel reports it (status.counters); monotonic ones such "
           "as full_scans or pages_scanned can be rate()d."),
    Series(f"{PREFIX}_saved_bytes", ("kind",),
           "Memory saved on the node: merged, ballooned, compressed, total (status.saved)."),
    Series(f"{PREFIX}_merging_profit_bytes", (),
           "KSM's general_profit: merged savings net of KSM's metadata (may be negative)."),
    Series(f"{PREFIX}_guests", (), "Guests seen on the node's libvirt endpoints."),
    *(Series(f"{PREFIX}_guest_{size}_bytes", GUEST_LABELS, text) for size, text in (
        ("max", "The guest's maximum memory."),
        ("current", "The guest's balloon: the memory it has now."),
        ("target", "The balloon target the agent decided for the guest."),
        ("usable", "The guest's own MemAvailable, as its balloon driver reports it."),
        ("resident", "What the guest's QEMU process holds on the host (libvirt's rss)."),
        ("floor", "The least the balloon policy would leave the guest (managed guests)."))),
    Series(f"{PREFIX}_guest_autodeflate", GUEST_LABELS,
           "1 when the guest's balloon deflates on OOM (libvirt autodeflate='on'), 0 when a "
           "demand beyond what the balloon left it is OOM-killed inside; absent without a "
           "balloon device."),
    Series(f"{PREFIX}_guest_free_page_reporting", GUEST_LABELS,
           "1 when the guest reports its free pages (libvirt freePageReporting='on', KubeVirt's "
           "default): the host has its free memory back already, a balloon gains only beyond "
           "it; 0 when not; absent without a balloon device."),
    Series(f"{PREFIX}_memory_bytes", ("kind",),
           "Host memory: total (MemTotal), available (MemAvailable), swap_total, swap_free "
           "(status.memory)."),
    Series(f"{PREFIX}_memory_pressure_percent", ("kind",),
           "Host memory PSI, avg10 in percent: some, full (status.memory.psi*Avg10)."),
    Series(f"{PREFIX}_ksmd_cpu_percent", (),
           "ksmd's CPU use since the last cycle, in percent of one core (status.ksmd)."),
    Series(f"{PREFIX}_ksmd_cpu_budget_percent", (),
           "The CPU budget the policy sets for ksmd, in percent of one core (status.ksmd)."),
    Series(f"{PREFIX}_capacity_bytes", ("kind",),
           "Measured capacity (status.capacity): physical, reserve, non_guest, "
           "guest_committed, guest_resident, guest_capacity, counted (savings that count), "
           "headroom (may be negative)."),
    Series(f"{PREFIX}_capacity_sustained_savings_bytes", ("lever",),
           "Each lever's sustained saving over the window: merged, ballooned, compressed, "
           "total (status.capacity.sustained)."),
    Series(f"{PREFIX}_capacity_supported_percent", (),
           "The overcommit ratio the node supports, in percent (status.capacity)."),
    Series(f"{PREFIX}_capacity_window_seconds", (),
           "The window the savings are looked at over (status.capacity.evidence)."),
    Series(f"{PREFIX}_capacity_observed_seconds", (),
           "How much of the window the node has samples for (status.capacity.evidence)."),
    Series(f"{PREFIX}_capacity_pressure_seconds", (),
           "Time within the window in the ladder's Hard or Critical (status.capacity"
           ".evidence)."),
    Series(f"{PREFIX}_ladder_state", ("state",),
           "The node's reclamation ladder: 1 for the state it is in (Plenty, Clear, Soft, Hard, "
           "Critical), 0 for the others (status.ladder.state)."),
    Series(f"{PREFIX}_ladder_since_timestamp_seconds", (),
           "Unix time the node entered its ladder state (status.ladder.since)."),
    Series(f"{PREFIX}_ladder_relief_wanted", (),
           "1 while the ladder is in Critical and wants relief, else 0 (status.ladder.relief)."),
    Series(f"{PREFIX}_ladder_minimum_bytes", (),
           "M, the minimum MemAvailable the ladder's thresholds derive from "
           "(status.ladder.minimumBytes)."),
    Series(f"{PREFIX}_ladder_threshold_bytes", ("state", "edge"),
           "A ladder threshold in MemAvailable bytes: edge 'below' enters the state (or a worse "
           "one), 'leave_above' is where it is left upward (status.ladder.thresholds)."),
    Series(f"{PREFIX}_policy_info", ("policy", "uid", "generation"),
           "Always 1; names the policy in force on the node (absent when none selects it)."),
    Series(f"{PREFIX}_overridden_policies", (),
           "Policies that select the node but lost to the one in force."),
    Series(f"{PREFIX}_condition", ("type", "reason"),
           "The node state's conditions (Ready, Degraded): 1 when True, 0 when False; reason "
           "as in the status."),
)

POLICY_SERIES = _series(
    Series(f"{PREFIX}_policy_nodes", ("policy", "state"),
           "Nodes of a policy by state: matched, applied, failed, overridden (policy "
           "status.nodes)."),
    Series(f"{PREFIX}_policy_saved_bytes", ("policy", "kind"),
           "Memory saved on the nodes where the policy is in force: merged, ballooned, "
           "compressed, total (policy status.saved)."),
    Series(f"{PREFIX}_policy_condition", ("policy", "type", "reason"),
           "The policy's conditions (Ready, Reconciling, Stalled): 1 when True, 0 when False."),
    Series(f"{PREFIX}_policy_capacity_supported_percent", ("policy",),
           "The least overcommit ratio (percent) the policy's nodes support "
           "(status.capacity)."),
    Series(f"{PREFIX}_policy_capacity_limiting_node", ("policy", "node"),
           "Always 1; the node with the least supported ratio (status.capacity.limitingNode)."),
    Series(f"{PREFIX}_policy_capacity_bytes", ("policy", "kind"),
           "The policy's nodes summed: physical, guest_committed, counted, headroom "
           "(status.capacity)."),
    Series(f"{PREFIX}_policy_capacity_nodes", ("policy", "state"),
           "Nodes that report capacity: reporting, settled (evidence covers the window)."),
    Series(f"{PREFIX}_policy_kubevirt_configured_percent", ("policy",),
           "KubeVirt's memoryOvercommit as read from the KubeVirt CR, for the policy that "
           "covers KubeVirt's nodes (status.capacity.kubevirt)."),
    Series(f"{PREFIX}_policy_kubevirt_target_percent", ("policy",),
           "Where the controller takes KubeVirt's memoryOvercommit (bounds and steps applied)."),
    Series(f"{PREFIX}_policy_kubevirt_managed", ("policy",),
           "1 while the controller manages KubeVirt's memoryOvercommit for the policy, else 0."),
)


# -- pure mappings -------------------------------------------------------------------------


def split_setting(path: str) -> tuple[str, str]:
    """``sys/kernel/mm/ksm/pages_to_scan`` -> ("ksm", "pages_to_scan")."""
    return catalog.split(path)


def numeric_setting(text: str) -> float | None:
    """A setting's value as a number: integers, and the kernel's Y/N booleans as 1/0."""
    if text in ("Y", "N"):
        return 1.0 if text == "Y" else 0.0
    try:
        return float(int(text))
    except ValueError:
        return None


def _setting_samples(settings: Mapping[str, str]) -> Iterator[Sample]:
    for path, text in sorted(settings.items()):
        engine, name = split_setting(path)
        value = numeric_setting(text)
        if value is None:
            yield Sample(f"{PREFIX}_engine_setting_info", (engine, name, text), 1.0)
        else:
            yield Sample(f"{PREFIX}_engine_setting", (engine, name), value)


def _counter_samples(counters: Mapping[str, int]) -> Iterator[Sample]:
    for key, value in sorted(counters.items()):
        engine, _, name = key.partition(".")
        yield Sample(f"{PREFIX}_engine_counter", (engine, name), float(value))


def _saved_samples(saved: Saved | None, name: str, *first: str) -> Iterator[Sample]:
    for kind in SAVED_KINDS:
        value = getattr(saved, f"{kind}_bytes", None) if saved else None
        yield Sample(name, (*first, kind), float(value or 0))


def _guest_samples(guests: Sequence[Guest]) -> Iterator[Sample]:
    for guest in guests:
        labels = (guest.domain or "", guest.vmi_namespace or "", guest.vmi_name or "")
        for size in GUEST_SIZES:
            value = getattr(guest, f"{size}_bytes")
            if value is not None:  # unknown (no target yet, no stats): no series
                yield Sample(f"{PREFIX}_guest_{size}_bytes", labels, float(value))
        if guest.autodeflate is not None:
            yield Sample(f"{PREFIX}_guest_autodeflate", labels, float(guest.autodeflate))
        if guest.free_page_reporting is not None:
            yield Sample(f"{PREFIX}_guest_free_page_reporting", labels,
                         float(guest.free_page_reporting))


def _conditions(conditions: Sequence[Condition] | None, name: str,
                *first: str) -> Iterator[Sample]:
    for c in conditions or ():
        yield Sample(name, (*first, c.type, c.reason or ""), 1.0 if c.holds else 0.0)


LADDER_STATES = ("Plenty", "Clear", "Soft", "Hard", "Critical")


def _ladder_samples(ladder: Ladder | None) -> Iterator[Sample]:
    if ladder is None:
        return
    for state in LADDER_STATES:
        yield Sample(f"{PREFIX}_ladder_state", (state,), 1.0 if ladder.state == state else 0.0)
    since = epoch_of(ladder.since)
    if since is not None:
        yield Sample(f"{PREFIX}_ladder_since_timestamp_seconds", (), since)
    yield Sample(f"{PREFIX}_ladder_relief_wanted", (), 1.0 if ladder.relief else 0.0)
    if ladder.minimum_bytes is not None:
        yield Sample(f"{PREFIX}_ladder_minimum_bytes", (), float(ladder.minimum_bytes))
    for t in ladder.thresholds or ():
        for edge, value in (("below", t.below_bytes), ("leave_above", t.leave_above_bytes)):
            if value is not None:
                yield Sample(f"{PREFIX}_ladder_threshold_bytes", (t.state or "", edge),
                             float(value))


def _memory_samples(memory: HostMemory | None) -> Iterator[Sample]:
    if memory is None:
        return
    for label, field in MEMORY_KINDS:
        value = getattr(memory, f"{field}_bytes")
        if value is not None:
            yield Sample(f"{PREFIX}_memory_bytes", (label,), float(value))
    for kind in ("some", "full"):
        text = getattr(memory, f"psi_{kind}_avg10")
        if text is not None:
            with contextlib.suppress(ValueError):
                yield Sample(f"{PREFIX}_memory_pressure_percent", (kind,), float(text))


def _ksmd_samples(ksmd: Ksmd | None) -> Iterator[Sample]:
    if ksmd is None:
        return
    if ksmd.cpu_percent is not None:
        with contextlib.suppress(ValueError):
            yield Sample(f"{PREFIX}_ksmd_cpu_percent", (), float(ksmd.cpu_percent))
    if ksmd.budget_percent is not None:
        yield Sample(f"{PREFIX}_ksmd_cpu_budget_percent", (), float(ksmd.budget_percent))


def _capacity_samples(capacity: NodeCapacity | None) -> Iterator[Sample]:
    if capacity is None:
        return
    for kind in CAPACITY_KINDS:
        value = getattr(capacity, f"{kind}_bytes")
        if value is not None:
            yield Sample(f"{PREFIX}_capacity_bytes", (kind,), float(value))
    if capacity.sustained is not None:
        for lever in LEVERS:
            value = getattr(capacity.sustained, f"{lever}_bytes")
            yield Sample(f"{PREFIX}_capacity_sustained_savings_bytes", (lever,),
                         float(value or 0))
    if capacity.supported_percent is not None:
        yield Sample(f"{PREFIX}_capacity_supported_percent", (),
                     float(capacity.supported_percent))
    evidence = capacity.evidence
    if evidence is not None:
        for name, value in (("window", evidence.window_seconds),
                            ("observed", evidence.observed_seconds),
                            ("pressure", evidence.pressure_seconds)):
            if value is not None:
                yield Sample(f"{PREFIX}_capacity_{name}_seconds", (), float(value))


def _policy_capacity_samples(name: str, capacity: PolicyCapacity | None) -> Iterator[Sample]:
    if capacity is None:
        return
    if capacity.supported_percent is not None:
        yield Sample(f"{PREFIX}_policy_capacity_supported_percent", (name,),
                     float(capacity.supported_percent))
    if capacity.limiting_node:
        yield Sample(f"{PREFIX}_policy_capacity_limiting_node", (name, capacity.limiting_node),
                     1.0)
    for kind in POLICY_CAPACITY_KINDS:
        value = getattr(capacity, f"{kind}_bytes")
        if value is not None:
            yield Sample(f"{PREFIX}_policy_capacity_bytes", (name, kind), float(value))
    yield Sample(f"{PREFIX}_policy_capacity_nodes", (name, "reporting"),
                 float(capacity.nodes or 0))
    yield Sample(f"{PREFIX}_policy_capacity_nodes", (name, "settled"),
                 float(capacity.settled_nodes or 0))
    kubevirt = capacity.kubevirt
    if kubevirt is None:
        return
    if kubevirt.configured_percent is not None:
        yield Sample(f"{PREFIX}_policy_kubevirt_configured_percent", (name,),
                     float(kubevirt.configured_percent))
    if kubevirt.target_percent is not None:
        yield Sample(f"{PREFIX}_policy_kubevirt_target_percent", (name,),
                     float(kubevirt.target_percent))
    yield Sample(f"{PREFIX}_policy_kubevirt_managed", (name,), 1.0 if kubevirt.managed else 0.0)


def node_samples(status: NodeStateStatus) -> list[Sample]:
    """Every node series' value, from a MemoryOvercommitNodeState status."""
    samples = [Sample(f"{PREFIX}_engine_present", (e.name or "",), 1.0 if e.present else 0.0)
               for e in status.engines or ()]
    samples += _setting_samples(status.settings or {})
    samples += _counter_samples(status.counters or {})
    samples += _saved_samples(status.saved, f"{PREFIX}_saved_bytes")
    samples.append(Sample(f"{PREFIX}_merging_profit_bytes", (),
                          float(status.saved.merging_profit_bytes or 0) if status.saved else 0.0))
    samples.append(Sample(f"{PREFIX}_guests", (), float(status.guest_count or 0)))
    samples += _guest_samples(status.guests or ())
    samples += _ladder_samples(status.ladder)
    samples += _memory_samples(status.memory)
    samples += _ksmd_samples(status.ksmd)
    samples += _capacity_samples(status.capacity)
    policy = status.policy
    if policy:
        generation = "" if policy.generation is None else str(policy.generation)
        samples.append(Sample(f"{PREFIX}_policy_info",
                              (policy.name or "", policy.uid or "", generation), 1.0))
    samples.append(Sample(f"{PREFIX}_overridden_policies", (),
                          float(len(status.overridden or ()))))
    samples += _conditions(status.conditions, f"{PREFIX}_condition")
    return unique(samples)


def policy_samples(statuses: Mapping[str, PolicyStatus]) -> list[Sample]:
    """The per-policy series, from each policy's status (as the controller writes it)."""
    samples: list[Sample] = []
    for name, status in sorted(statuses.items()):
        nodes = status.nodes
        samples += [Sample(f"{PREFIX}_policy_nodes", (name, state),
                           float(getattr(nodes, state) or 0) if nodes else 0.0)
                    for state in ("matched", "applied", "failed", "overridden")]
        samples += _saved_samples(status.saved, f"{PREFIX}_policy_saved_bytes", name)
        samples += _conditions(status.conditions, f"{PREFIX}_policy_condition", name)
        samples += _policy_capacity_samples(name, status.capacity)
    return unique(samples)


def unique(samples: Iterable[Sample]) -> list[Sample]:
    """Drop repeated series (two endpoints with a same-named domain): first one wins."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    out = []
    for sample in samples:
        key = (sample.name, sample.labels)
        if key not in seen:
            seen.add(key)
            out.append(sample)
    return out


def api_resource(path: str) -> str:
    """The resource (and subresource) of an API path, without names or namespaces:
    ``/apis/g/v/memoryovercommitnodestates/n1/status`` -> ``memoryovercommitnodestates/status``.
    """
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    parts = parts[2:] if parts[:1] == ["api"] else parts[3:]  # drop api/v1 or apis/g/v
    if parts[:1] == ["namespaces"] and len(parts) > 2:
        parts = parts[2:]
    if not parts:
        return "unknown"
    return parts[0] if len(parts) < 3 else f"{parts[0]}/{parts[2]}"


# -- collectors ----------------------------------------------------------------------------


class SnapshotCollector:
    """Serves the latest snapshot of some documented gauge families; nothing else survives."""

    def __init__(self, series: Mapping[str, Series]) -> None:
        self.series = series
        self.samples: list[Sample] = []

    def update(self, samples: Sequence[Sample]) -> None:
        unknown = {s.name for s in samples} - set(self.series)
        if unknown:
            raise ValueError(f"undocumented series: {sorted(unknown)}")
        self.samples = list(samples)  # one assignment: a scrape sees the old or the new

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(s.name, s.help, labels=s.labels)
                for s in self.series.values()]

    def collect(self) -> Iterator[Metric]:
        families = {s.name: GaugeMetricFamily(s.name, s.help, labels=s.labels)
                    for s in self.series.values()}
        for sample in self.samples:
            families[sample.name].add_metric(list(sample.labels), sample.value)
        yield from families.values()


def version() -> str:
    try:
        return metadata.version("memory-overcommit-operator")
    except metadata.PackageNotFoundError:
        return "unknown"


class ApiWrites:
    """``overcommit_api_writes_total``: every write request to the API server and its answer."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counter = Counter(f"{PREFIX}_api_writes_total",
                               "Write requests to the Kubernetes API by verb, resource and "
                               "HTTP status code (\"error\": no answer).",
                               ("verb", "resource", "code"), registry=registry)

    def __call__(self, method: str, path: str, status: int | None) -> None:
        verb = WRITE_VERBS.get(method.upper())
        if verb is not None:  # reads are not counted
            code = "error" if status is None else str(status)
            self.counter.labels(verb, api_resource(path), code).inc()


class EventCounters:
    """A component's Events (``overcommit_<component>_events_*``): posted, given up on, and
    waiting in its outbox (``overcommit.kube.outbox``) to be posted again."""

    def __init__(self, registry: CollectorRegistry, component: str, *, about: str = "") -> None:
        name = f"{PREFIX}_{component}_events"
        self.posted = Counter(f"{name}_total", f"Events the {component} posted{about}, by "
                              "type and reason.", ("type", "reason"), registry=registry)
        self.dropped = Counter(f"{name}_dropped_total",
                               f"Events the {component} gave up on, by type, reason and cause: "
                               "refused (the API server said no for good), overflow (its "
                               "outbox was full: the oldest went), error (a bug), leadership "
                               "(the controller stopped leading while they waited).",
                               ("type", "reason", "cause"), registry=registry)
        self.pending = Gauge(f"{name}_pending", "Events waiting to be posted again after a "
                             "failed post (429, 5xx, no answer).", registry=registry)

    def count_pending(self, pending: Callable[[], int]) -> None:
        """Read the waiting Events from their outbox at each scrape."""
        self.pending.set_function(pending)

    def posted_one(self, event_type: str, reason: str) -> None:
        self.posted.labels(event_type, reason).inc()

    def dropped_one(self, event_type: str, reason: str, cause: str) -> None:
        self.dropped.labels(event_type, reason, cause).inc()


class AgentMetrics:
    """The agent's registry: the node snapshot plus the agent's own counters."""

    def __init__(self, node: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.node = SnapshotCollector(NODE_SERIES)
        self.registry.register(self.node)
        r = self.registry
        self.cycle_duration = Histogram(
            f"{PREFIX}_agent_cycle_duration_seconds",
            "One reconcile: observe, plan, act, write the node state and Events.", registry=r)
        self.errors = Counter(f"{PREFIX}_agent_errors_total",
                              "Errors by kind: setting, guest, policy (invalid policy skipped), "
                              "api, host, internal (a failed cycle).", ("kind",), registry=r)
        for kind in AGENT_ERROR_KINDS:
            self.errors.labels(kind)
        self.last_cycle = Gauge(f"{PREFIX}_agent_last_cycle_timestamp_seconds",
                                "Unix time the last cycle completed.", registry=r)
        self.events = EventCounters(r, "agent")
        Gauge(f"{PREFIX}_agent_info", "Always 1; the agent's node and version.",
              ("node", "version"), registry=r).labels(node, version()).set(1)
        self.transitions = Counter(f"{PREFIX}_ladder_transitions_total",
                                   "Moves of the node's reclamation ladder between states "
                                   "since the agent started (from: \"\" for its start).",
                                   ("from", "to"), registry=r)
        self._last_transition: LadderTransition | None = None
        self.relief = Counter(f"{PREFIX}_relief_requests_total",
                              "Live migrations relief asked KubeVirt for (a "
                              "VirtualMachineInstanceMigration), by result: created or failed.",
                              ("result",), registry=r)
        for result in ("created", "failed"):
            self.relief.labels(result)
        self.api_write = ApiWrites(r)
        ProcessCollector(registry=r)

    def observe_cycle(self, status: NodeStateStatus, errors: Mapping[str, int]) -> None:
        """A completed cycle: the node's new snapshot and the errors it met."""
        self.node.update(node_samples(status))
        self._count_transitions(status.ladder)
        for kind, count in errors.items():
            if count:
                self.errors.labels(kind).inc(count)
        self.last_cycle.set(time.time())

    def failed_cycle(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def _count_transitions(self, ladder: Ladder | None) -> None:
        """Count the transitions newer than the newest one counted (a cycle makes at most one,
        the list holds the last few, newest first)."""
        recent = list((ladder.transitions if ladder else None) or ())
        new = recent if self._last_transition is None else list(
            itertools.takewhile(lambda t: t != self._last_transition, recent))
        for t in reversed(new):
            self.transitions.labels(t.from_state or "", t.to_state or "").inc()
        if recent:
            self._last_transition = recent[0]

    def relief_requested(self, result: str) -> None:
        self.relief.labels(result).inc()


class ControllerMetrics:
    """The controller's registry. The controller calls: :meth:`fold` around each fold of node
    states into policy statuses, :meth:`status_written` per policy status write,
    :meth:`observe_policies` with the statuses it holds, :meth:`counts`, :meth:`set_leader`,
    :meth:`error`, feeds :attr:`events` from its Event outbox, and passes :attr:`api_write` to
    its API client."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.policies_snapshot = SnapshotCollector(POLICY_SERIES)
        self.registry.register(self.policies_snapshot)
        r = self.registry
        self.fold_duration = Histogram(f"{PREFIX}_controller_fold_duration_seconds",
                                       "One policy's fold: every node state into that "
                                       "policy's status.",
                                       registry=r)
        self.status_writes = Counter(f"{PREFIX}_controller_status_writes_total",
                                     "Policy status writes by result: ok or error.", ("result",),
                                     registry=r)
        for result in ("ok", "error"):
            self.status_writes.labels(result)
        self.policies = Gauge(f"{PREFIX}_controller_policies", "Policies the controller sees.",
                              registry=r)
        self.node_states = Gauge(f"{PREFIX}_controller_node_states",
                                 "Node states the controller sees.", registry=r)
        self.leader = Gauge(f"{PREFIX}_controller_leader",
                            "1 while this replica holds the leader lease, else 0.", registry=r)
        self.errors = Counter(f"{PREFIX}_controller_errors_total",
                              "Errors by kind: api, internal.", ("kind",), registry=r)
        for kind in CONTROLLER_ERROR_KINDS:
            self.errors.labels(kind)
        self.events = EventCounters(r, "controller", about=" on policies")
        Gauge(f"{PREFIX}_controller_info", "Always 1; the controller's version.", ("version",),
              registry=r).labels(version()).set(1)
        self.api_write = ApiWrites(r)
        ProcessCollector(registry=r)

    @contextlib.contextmanager
    def fold(self) -> Iterator[None]:
        with self.fold_duration.time():
            yield

    def status_written(self, ok: bool) -> None:
        self.status_writes.labels("ok" if ok else "error").inc()

    def observe_policies(self, statuses: Mapping[str, PolicyStatus]) -> None:
        self.policies_snapshot.update(policy_samples(statuses))

    def counts(self, policies: int, node_states: int) -> None:
        self.policies.set(policies)
        self.node_states.set(node_states)

    def set_leader(self, leading: bool) -> None:
        self.leader.set(1 if leading else 0)

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()


# -- serving -------------------------------------------------------------------------------


async def serve_metrics(registry: CollectorRegistry, port: int, address: str,
                        log: logging.Logger | logging.LoggerAdapter[Any]
                        ) -> MetricsServer | None:
    """/metrics on ``port`` (0: not at all); a taken port costs the metrics, not the
    component's work."""
    if not port:
        return None
    server = MetricsServer(registry, port, address)
    try:
        await server.start()
    except OSError as exc:
        log.error("metrics are off: cannot listen on port %s: %s", port, exc)
        return None
    return server


class MetricsServer:
    """``GET /metrics`` (Prometheus text or OpenMetrics, as the scraper asks) on the running
    asyncio loop. ``address`` "" listens on every interface (IPv4 and IPv6)."""

    def __init__(self, registry: CollectorRegistry, port: int, address: str = "") -> None:
        self.registry, self.port, self.address = registry, port, address
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host=self.address or None, port=self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.registry), headers={"Content-Type": content_type})

