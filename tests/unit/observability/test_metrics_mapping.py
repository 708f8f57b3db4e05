"""The metrics: node status -> series values, vanished series, API write counting, serving,
and docs/metrics.md documenting every family that is served."""

from __future__ import annotations

import asyncio
import errno
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from overcommit.agent.runner import cycle_errors
from overcommit.agent.status import node_status
from overcommit.api.model import policy_from_object
from overcommit.api.schema import build, to_json
from overcommit.api.status import NodeStateStatus, PolicyStatus
from overcommit.localcluster.ports import free_port
from overcommit.observability.metrics import (
    AgentMetrics,
    ControllerMetrics,
    MetricsServer,
    Sample,
    SnapshotCollector,
    api_resource,
    node_samples,
    policy_samples,
    version,
)
from overcommit.reconcile.node import CycleResult, NodeReconciler
from testkit.cases import policy_document
from testkit.fakes.kernel import FakeKernel

KSM = "sys/kernel/mm/ksm"
DOC = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def node(status: dict[str, Any]) -> NodeStateStatus:
    """A node state's status as the agent holds it, from its wire form."""
    return build(NodeStateStatus, status)


def status_of(report: CycleResult) -> NodeStateStatus:
    return node_status(report, now="2026-12-03T12:00:00Z")


def scrape(registry: CollectorRegistry) -> Series:
    """Every sample of the registry's text exposition, keyed by name and sorted labels."""
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(series: Series, metric: str, /, **labels: str) -> float | None:
    return series.get((metric, tuple(sorted(labels.items()))))


def applied_cycle(tmp_path: Path, kernel: FakeKernel, spec: dict[str, Any]) -> CycleResult:
    engine = NodeReconciler(state_dir=tmp_path / "state", fs=kernel)
    return engine.cycle([policy_from_object(policy_document("pol", spec))], {})


@pytest.fixture
def kernel(tmp_path: Path) -> FakeKernel:
    return FakeKernel(tmp_path / "host")


def test_node_series_carry_the_status_values(tmp_path: Path, kernel: FakeKernel) -> None:
    kernel.merge(shared=25, sharing=300)
    typed = status_of(applied_cycle(tmp_path, kernel, {
        "ksm": {"enabled": True, "pagesToScan": 900},
        "zswap": {"enabled": True, "compressor": "zstd"}}))
    status = to_json(typed)
    metrics = AgentMetrics("node-a")
    metrics.observe_cycle(typed, {})
    got = scrape(metrics.registry)

    assert value(got, "overcommit_engine_setting", engine="ksm", name="pages_to_scan") == 900
    assert value(got, "overcommit_engine_setting", engine="ksm", name="run") == 1
    assert value(got, "overcommit_engine_setting", engine="zswap", name="enabled") == 1
    assert value(got, "overcommit_engine_setting", engine="swap", name="swappiness") == \
        int(status["settings"]["proc/sys/vm/swappiness"])
    assert value(got, "overcommit_engine_setting_info", engine="zswap", name="compressor",
                 value="zstd") == 1
    assert value(got, "overcommit_engine_setting", engine="zswap", name="compressor") is None
    assert value(got, "overcommit_engine_counter", engine="ksm", name="pages_sharing") == 300
    for key, count in status["counters"].items():
        engine, _, name = key.partition(".")
        assert value(got, "overcommit_engine_counter", engine=engine, name=name) == count
    saved = status["saved"]
    assert saved["mergedBytes"] > 0 and saved["compressedBytes"] > 0
    for kind, key in (("merged", "mergedBytes"), ("compressed", "compressedBytes"),
                      ("ballooned", "balloonedBytes"), ("total", "totalBytes")):
        assert value(got, "overcommit_saved_bytes", kind=kind) == saved[key]
    assert value(got, "overcommit_engine_present", engine="uksm") == 0
    assert value(got, "overcommit_engine_present", engine="ksm") == 1
    assert value(got, "overcommit_policy_info", policy="pol", uid="",
                 generation=str(status["policy"]["generation"])) == 1
    assert value(got, "overcommit_condition", type="Ready", reason="Applied") == 1
    assert value(got, "overcommit_condition", type="Degraded", reason="AsExpected") == 0
    assert value(got, "overcommit_agent_info", node="node-a", version=version()) == 1


def test_ladder_series_and_transitions(tmp_path: Path, kernel: FakeKernel) -> None:
    engine = NodeReconciler(state_dir=tmp_path / "state", fs=kernel,
                            wall_clock=lambda: 1_700_000_000.0)
    spec = [policy_from_object(policy_document("pol", {
        "ksm": {"enabled": True}, "ladder": {"minimumAvailable": "1Gi"}}))]
    metrics = AgentMetrics("node-a")
    for gib in (6, 6, 1.5, 0.5):
        kernel.set_memory(int(gib * (1 << 20)))
        metrics.observe_cycle(status_of(engine.cycle(spec, {})), {})
    got = scrape(metrics.registry)
    assert {state: value(got, "overcommit_ladder_state", state=state)
            for state in ("Plenty", "Clear", "Soft", "Hard", "Critical")} == {
        "Plenty": 0, "Clear": 0, "Soft": 0, "Hard": 0, "Critical": 1}
    assert value(got, "overcommit_ladder_relief_wanted") == 1
    assert value(got, "overcommit_ladder_since_timestamp_seconds") == 1_700_000_000.0
    assert value(got, "overcommit_ladder_minimum_bytes") == 1 << 30
    assert value(got, "overcommit_ladder_threshold_bytes", state="Hard", edge="below") == 2 << 30
    assert value(got, "overcommit_ladder_threshold_bytes", state="Hard",
                 edge="leave_above") == (2 << 30) * 125 // 100
    # One count per move, none for the cycle that stayed: start, Clear -> Hard, -> Critical.
    for before, after in (("", "Clear"), ("Clear", "Hard"), ("Hard", "Critical")):
        assert value(got, "overcommit_ladder_transitions_total", **{"from": before,
                                                                    "to": after}) == 1
    assert value(got, "overcommit_ladder_transitions_total", **{"from": "Clear",
                                                                "to": "Soft"}) is None


def test_every_setting_is_exported_once_either_as_number_or_text(tmp_path: Path,
                                                                  kernel: FakeKernel) -> None:
    status = status_of(applied_cycle(tmp_path, kernel, {"ksm": {"enabled": True}}))
    samples = node_samples(status)
    settings = [s for s in samples if s.name.startswith("overcommit_engine_setting")]
    assert len(settings) == len(status.settings or {})
    texts = {s.labels[1]: s.labels[2] for s in settings
             if s.name == "overcommit_engine_setting_info"}
    assert texts == {"advisor_mode": "none", "compressor": "lzo", "zpool": "zsmalloc"}


def guest(domain: str, **fields: Any) -> dict[str, Any]:
    return {"domain": domain, "maxBytes": 4 << 30, "currentBytes": 3 << 30, **fields}


def test_guest_series_follow_the_guests_and_vanish_with_them() -> None:
    collector = SnapshotCollector(AgentMetrics("n").node.series)
    registry = CollectorRegistry()
    registry.register(collector)
    status = {"guestCount": 2, "guests": [
        guest("ns1_vm-a", vmiNamespace="ns1", vmiName="vm-a", targetBytes=2 << 30,
              usableBytes=1 << 30, autodeflate=False, freePageReporting=True),
        guest("plain-guest", autodeflate=True, freePageReporting=False)]}
    collector.update(node_samples(node(status)))
    got = scrape(registry)
    a = {"domain": "ns1_vm-a", "vmi_namespace": "ns1", "vmi_name": "vm-a"}
    assert value(got, "overcommit_guest_target_bytes", **a) == 2 << 30
    assert value(got, "overcommit_guest_usable_bytes", **a) == 1 << 30
    assert value(got, "overcommit_guest_current_bytes", **a) == 3 << 30
    plain = {"domain": "plain-guest", "vmi_namespace": "", "vmi_name": ""}
    assert value(got, "overcommit_guest_max_bytes", **plain) == 4 << 30
    assert value(got, "overcommit_guest_target_bytes", **plain) is None  # no decision yet
    assert value(got, "overcommit_guests") == 2
    assert value(got, "overcommit_guest_autodeflate", **a) == 0
    assert value(got, "overcommit_guest_autodeflate", **plain) == 1
    assert value(got, "overcommit_guest_free_page_reporting", **a) == 1
    assert value(got, "overcommit_guest_free_page_reporting", **plain) == 0

    collector.update(node_samples(node({"guestCount": 1, "guests": [guest("plain-guest")]})))
    after = scrape(registry)
    assert not [k for k in after if dict(k[1]).get("domain") == "ns1_vm-a"]
    assert value(after, "overcommit_guest_max_bytes", **plain) == 4 << 30


def test_same_domain_on_two_endpoints_is_served_once() -> None:
    samples = node_samples(node({"guests": [guest("dup"), guest("dup", currentBytes=1)]}))
    current = [s for s in samples if s.name == "overcommit_guest_current_bytes"]
    assert current == [Sample("overcommit_guest_current_bytes", ("dup", "", ""), 3 << 30)]


def test_no_policy_means_no_policy_info_and_a_noPolicy_condition(tmp_path: Path,
                                                                  kernel: FakeKernel) -> None:
    report = NodeReconciler(state_dir=tmp_path / "state", fs=kernel).cycle([], {})
    samples = node_samples(status_of(report))
    assert not [s for s in samples if s.name == "overcommit_policy_info"]
    assert Sample("overcommit_condition", ("Ready", "NoPolicy"), 1.0) in samples


def test_cycle_errors_are_counted_by_kind(tmp_path: Path, kernel: FakeKernel) -> None:
    kernel.fail_always(f"{KSM}/sleep_millisecs", errno.EIO)
    report = applied_cycle(tmp_path, kernel, {"ksm": {"enabled": True, "sleepMillisecs": 7}})
    errors = cycle_errors(report, invalid_policies=2)
    assert errors == {"setting": 1, "guest": 0, "policy": 2}
    metrics = AgentMetrics("n")
    metrics.observe_cycle(status_of(report), errors)
    metrics.observe_cycle(status_of(report), errors)
    metrics.failed_cycle("api")
    got = scrape(metrics.registry)
    assert value(got, "overcommit_agent_errors_total", kind="setting") == 2
    assert value(got, "overcommit_agent_errors_total", kind="policy") == 4
    assert value(got, "overcommit_agent_errors_total", kind="api") == 1
    assert value(got, "overcommit_agent_errors_total", kind="internal") == 0
    assert value(got, "overcommit_condition", type="Ready", reason="ApplyFailed") == 0
    assert value(got, "overcommit_agent_last_cycle_timestamp_seconds") is not None


@pytest.mark.parametrize(("path", "resource"), [
    ("/apis/memoryovercommit.io/v1alpha1/memoryovercommitnodestates", "memoryovercommitnodestates"),
    ("/apis/memoryovercommit.io/v1alpha1/memoryovercommitnodestates/n1/status",
     "memoryovercommitnodestates/status"),
    ("/apis/memoryovercommit.io/v1alpha1/memoryovercommitpolicies/p/status?x=1",
     "memoryovercommitpolicies/status"),
    ("/api/v1/namespaces/default/events", "events"),
    ("/apis/coordination.k8s.io/v1/namespaces/ns/leases/lead", "leases"),
    ("/api/v1/nodes/n1", "nodes"),
    ("/api/v1", "unknown"),
])
def test_api_paths_map_to_resources(path: str, resource: str) -> None:
    assert api_resource(path) == resource


def test_api_writes_count_verbs_and_codes_not_reads() -> None:
    metrics = AgentMetrics("n")
    path = "/apis/memoryovercommit.io/v1alpha1/memoryovercommitnodestates/n/status"
    metrics.api_write("PATCH", path, 200)
    metrics.api_write("PATCH", path, 200)
    metrics.api_write("POST", "/api/v1/namespaces/default/events", None)
    metrics.api_write("GET", path, 200)
    got = scrape(metrics.registry)
    assert value(got, "overcommit_api_writes_total", verb="patch",
                 resource="memoryovercommitnodestates/status", code="200") == 2
    assert value(got, "overcommit_api_writes_total", verb="create", resource="events",
                 code="error") == 1
    assert not [k for k in got if dict(k[1]).get("verb") == "get"]


def test_controller_set_maps_policy_statuses_and_its_own_work() -> None:
    metrics = ControllerMetrics()
    status = {"nodes": {"matched": 5, "applied": 3, "failed": 1, "overridden": 1},
              "saved": {"mergedBytes": 10, "balloonedBytes": 20, "compressedBytes": 30,
                        "totalBytes": 60},
              "conditions": [{"type": "Ready", "status": "False", "reason": "NodesFailed"}]}
    metrics.observe_policies({"gold": build(PolicyStatus, status)})
    with metrics.fold():
        pass
    metrics.status_written(ok=True)
    metrics.counts(policies=1, node_states=5)
    metrics.set_leader(True)
    metrics.events.posted_one("Warning", "NodeProblem")
    got = scrape(metrics.registry)
    assert value(got, "overcommit_policy_nodes", policy="gold", state="applied") == 3
    assert value(got, "overcommit_policy_saved_bytes", policy="gold", kind="total") == 60
    assert value(got, "overcommit_policy_condition", policy="gold", type="Ready",
                 reason="NodesFailed") == 0
    assert value(got, "overcommit_controller_fold_duration_seconds_count") == 1
    assert value(got, "overcommit_controller_status_writes_total", result="ok") == 1
    assert value(got, "overcommit_controller_status_writes_total", result="error") == 0
    assert value(got, "overcommit_controller_node_states") == 5
    assert value(got, "overcommit_controller_leader") == 1
    assert value(got, "overcommit_controller_events_total", type="Warning",
                 reason="NodeProblem") == 1
    metrics.observe_policies({})
    assert not [k for k in scrape(metrics.registry) if k[0].startswith("overcommit_policy_")]
    assert policy_samples({}) == []


def test_snapshot_refuses_undocumented_series() -> None:
    collector = SnapshotCollector(AgentMetrics("n").node.series)
    with pytest.raises(ValueError, match="undocumented"):
        collector.update([Sample("overcommit_made_up", (), 1.0)])


def test_server_serves_text_and_openmetrics_over_http() -> None:
    metrics = AgentMetrics("node-z")
    metrics.observe_cycle(node({"saved": {"totalBytes": 123}}), {})

    async def fetch() -> tuple[str, str, str]:
        server = MetricsServer(metrics.registry, free_port(), "127.0.0.1")
        await server.start()
        try:
            url = f"http://127.0.0.1:{server.port}/metrics"
            async with aiohttp.ClientSession() as session:
                async with session.get(url) as plain:
                    text = await plain.text()
                async with session.get(url, headers={
                        "Accept": "application/openmetrics-text; version=1.0.0"}) as om:
                    return text, om.headers["Content-Type"], await om.text()
        finally:
            await server.stop()

    text, om_type, om_text = asyncio.run(fetch())
    assert 'overcommit_saved_bytes{kind="total"} 123.0' in text
    assert om_type.startswith("application/openmetrics-text") and om_text.endswith("# EOF\n")


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    """docs/metrics.md's table rows: name -> (type, labels)."""
    rows = re.findall(r"^\| `([a-z_]+)` \| (\w+) \| ([^|]*) \|", DOC.read_text(), re.MULTILINE)
    return {name: (kind, tuple(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


def test_docs_document_every_served_family_with_its_type_and_labels() -> None:
    docs = documented()
    served: dict[str, tuple[str, tuple[str, ...]]] = {}
    agent, controller = AgentMetrics("n"), ControllerMetrics()
    # one increment each, so labelled families show their labels
    agent.events.posted_one("Normal", "SettingsApplied")
    agent.events.dropped_one("Normal", "SettingsApplied", "overflow")
    agent.transitions.labels("Clear", "Soft").inc()
    controller.events.posted_one("Warning", "PolicyStalled")
    controller.events.dropped_one("Warning", "PolicyStalled", "refused")
    for metrics in (agent, controller):
        metrics.api_write("POST", "/api/v1/namespaces/default/events", 201)
    for registry in (agent.registry, controller.registry):
        for family in registry.collect():
            if family.name.startswith("process_"):
                continue  # the client library's standard process metrics, documented as such
            name = family.name + ("_total" if family.type == "counter" else "")
            names = {k for s in family.samples for k in s.labels if k != "le"}
            served[name] = (family.type, tuple(sorted(names)))
    # snapshot families have no samples until a status arrives: take their declared labels
    for series in (*agent.node.series.values(), *controller.policies_snapshot.series.values()):
        served[series.name] = ("gauge", tuple(sorted(series.labels)))
    assert set(served) <= set(docs), f"undocumented: {sorted(set(served) - set(docs))}"
    assert set(docs) <= set(served), f"documented, not served: {sorted(set(docs) - set(served))}"
    for name, (kind, labels) in served.items():
        assert (docs[name][0], tuple(sorted(docs[name][1]))) == (kind, labels), name


def test_memory_pressure_ksmd_and_capacity_series_follow_the_status(
        tmp_path: Path, kernel: FakeKernel) -> None:
    kernel.merge(shared=100, sharing=1000)
    kernel.set_memory(8 << 20, total_kib=16 << 20, some=12.5, full=1.25)
    engine = NodeReconciler(state_dir=tmp_path / "state", fs=kernel)
    policy = [policy_from_object(policy_document("pol", {"ksm": {"mode": "Adaptive"}}))]
    engine.cycle(policy, {})
    status = status_of(engine.cycle(policy, {}))  # the second cycle knows ksmd's CPU share
    metrics = AgentMetrics("n")
    metrics.observe_cycle(status, {})
    series = scrape(metrics.registry)
    assert value(series, "overcommit_memory_bytes", kind="total") == 16 << 30
    assert value(series, "overcommit_memory_bytes", kind="available") == 8 << 30
    assert value(series, "overcommit_memory_pressure_percent", kind="some") == 12.5
    assert value(series, "overcommit_memory_pressure_percent", kind="full") == 1.25
    assert value(series, "overcommit_ksmd_cpu_percent") == 0.0  # the fake ksmd's CPU holds
    assert value(series, "overcommit_ksmd_cpu_budget_percent") == 20  # Adaptive's default
    capacity = status.capacity
    assert capacity is not None and capacity.sustained is not None
    assert value(series, "overcommit_capacity_supported_percent") == \
        capacity.supported_percent
    assert value(series, "overcommit_capacity_bytes", kind="physical") == 16 << 30
    assert value(series, "overcommit_capacity_bytes", kind="headroom") == \
        capacity.headroom_bytes
    # KSM's general_profit (net of its metadata) where the kernel reports it, not its peak
    assert value(series, "overcommit_capacity_sustained_savings_bytes", lever="merged") == \
        capacity.sustained.merged_bytes == status.counters["ksm.general_profit"]  # type: ignore[index]
    assert 0 < (capacity.sustained.merged_bytes or 0) < 1000 * 4096
    assert value(series, "overcommit_capacity_window_seconds") == 3600
