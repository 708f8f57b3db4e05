"""The scale benchmark's pure parts: what the simulated agents write and when, the naive
design's status, when a policy status shows a change, metric parsing and the cost model."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from typing import Any

import pytest

from bench.scale_model import (
    NAIVE,
    PER_NODE,
    Model,
    NaiveStatus,
    NodeView,
    complete,
    conflict_backoff_s,
    naive_crd,
    naive_entry,
    node_status,
    operator_write_codes,
    per_node_per_minute,
    shows,
    since,
    split_writes,
    watch_events,
    with_naive_entry,
    write_requests,
)
from overcommit.agent.status import should_write
from overcommit.api.schema import openapi_schema, to_json, validate
from overcommit.api.status import NodeStateStatus

VIEW = NodeView("node-7", 7, "uid-1", generation=3, tick=0)


# -- the simulated node state ---------------------------------------------------------------
def test_node_status_is_valid_for_the_crd_and_the_size_the_agent_writes() -> None:
    status = to_json(node_status(VIEW, "scale"))
    assert validate(status, openapi_schema(NodeStateStatus), "status") == []
    size = len(json.dumps(status, separators=(",", ":")))
    assert 3_000 < size < 12_000, size  # the real agent: ~2.8 KiB plus ~0.4 KiB per guest


def test_a_failed_node_reports_ready_false_with_its_reason() -> None:
    status = to_json(node_status(replace(VIEW, failed=True), "scale"))
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ApplyFailed")
    assert status["lastErrors"]


def test_first_report_is_always_written() -> None:
    assert should_write(node_status(VIEW, "scale"), None, 0.0, 60.0)


def test_an_unchanged_report_is_never_written() -> None:
    status = node_status(VIEW, "scale")
    assert not should_write(node_status(VIEW, "scale"), status, 3600.0, 60.0)


def test_moving_counters_are_written_only_once_the_status_interval_passed() -> None:
    last = node_status(VIEW, "scale")
    moved = node_status(replace(VIEW, tick=1), "scale")
    assert moved.counters != last.counters
    assert not should_write(moved, last, 59.0, 60.0)
    assert should_write(moved, last, 60.0, 60.0)


def test_a_failure_is_news_and_written_at_once() -> None:
    last = node_status(VIEW, "scale")
    assert should_write(node_status(replace(VIEW, failed=True), "scale"), last, 0.1, 60.0)


# -- the naive design -------------------------------------------------------------------------
def test_naive_entry_summarises_the_node_status() -> None:
    status = node_status(replace(VIEW, failed=True), "scale")
    entry = naive_entry(status)
    assert entry["generation"] == 3
    assert (entry["ready"], entry["reason"]) == ("False", "ApplyFailed")
    assert entry["mergedBytes"] == (status.saved.merged_bytes if status.saved else None)
    assert validate({"nodes": {"node-7": entry}}, openapi_schema(NaiveStatus), "status") == []


def test_with_naive_entry_adds_or_replaces_one_entry_and_leaves_the_input_alone() -> None:
    policy: dict[str, Any] = {"metadata": {"name": "p", "resourceVersion": "9"},
                              "status": {"nodes": {"a": {"ready": "True"}}}}
    updated = with_naive_entry(policy, "b", {"ready": "False"})
    assert updated["status"]["nodes"] == {"a": {"ready": "True"}, "b": {"ready": "False"}}
    assert updated["metadata"]["resourceVersion"] == "9"  # the PUT's precondition
    assert policy["status"]["nodes"] == {"a": {"ready": "True"}}
    replaced = with_naive_entry(updated, "a", {"ready": "False"})
    assert replaced["status"]["nodes"]["a"] == {"ready": "False"}


def test_with_naive_entry_starts_a_missing_status() -> None:
    assert with_naive_entry({"status": None}, "a", {"ready": "True"})["status"] == {
        "nodes": {"a": {"ready": "True"}}}


def test_naive_crd_has_a_status_subresource_and_a_map_of_entries() -> None:
    version = naive_crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    nodes = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["nodes"]
    assert "ready" in nodes["additionalProperties"]["properties"]


@pytest.mark.parametrize("attempt", [0, 1, 5, 40])
def test_conflict_backoff_grows_with_jitter_and_is_capped(attempt: int) -> None:
    ceiling = min(10.0, 0.01 * 2**attempt)
    delays = [conflict_backoff_s(attempt, random.Random(seed)) for seed in range(50)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len(set(delays)) > 1


# -- when the policy status shows a change ----------------------------------------------------
def test_summary_shows_a_failure_only_when_listed_and_counted() -> None:
    failing = {"nodes": {"failed": 1}, "problems": [{"node": "n1", "reason": "ApplyFailed"}]}
    assert shows(PER_NODE, failing, "n1", failed=True)
    assert not shows(PER_NODE, failing, "n1", failed=False)
    assert not shows(PER_NODE, failing, "n2", failed=True)
    assert not shows(PER_NODE, {"nodes": {"failed": 1}}, "n1", failed=True)
    assert shows(PER_NODE, {"nodes": {"failed": 0}, "problems": []}, "n1", failed=False)
    assert not shows(PER_NODE, None, "n1", failed=True)


def test_naive_shows_the_node_entry() -> None:
    status = {"nodes": {"n1": {"ready": "False"}, "n2": {"ready": "True"}}}
    assert shows(NAIVE, status, "n1", failed=True)
    assert shows(NAIVE, status, "n2", failed=False)
    assert not shows(NAIVE, status, "n3", failed=False)


def test_complete_needs_every_node_at_the_generation() -> None:
    summary = {"observedGeneration": 2, "nodes": {"matched": 3, "applied": 3}}
    assert complete(PER_NODE, summary, 3, 2)
    assert not complete(PER_NODE, summary, 3, 3)
    assert not complete(PER_NODE, {**summary, "nodes": {"matched": 3, "applied": 2}}, 3, 2)
    naive = {"nodes": {"a": {"generation": 2}, "b": {"generation": 2}}}
    assert complete(NAIVE, naive, 2, 2)
    assert not complete(NAIVE, naive, 3, 2)
    assert not complete(NAIVE, {"nodes": {"a": {"generation": 1}, "b": {"generation": 2}}}, 2, 2)


# -- API-server metrics -------------------------------------------------------------------------
METRICS = """\
# HELP apiserver_request_total Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",group="memoryovercommit.io",resource="memoryovercommitnodestates",subresource="status",verb="PATCH"} 40
apiserver_request_total{code="409",group="memoryovercommit.io",resource="memoryovercommitpolicies",subresource="status",verb="PUT"} 3
apiserver_request_total{code="200",group="memoryovercommit.io",resource="memoryovercommitpolicies",subresource="",verb="GET"} 500
apiserver_request_total{code="200",group="coordination.k8s.io",resource="leases",subresource="",verb="PUT"} 7
apiserver_request_total{code="201",group="",resource="nodes",subresource="",verb="POST"} 2
apiserver_watch_events_total{group="memoryovercommit.io",resource="memoryovercommitpolicies",version="v1alpha1"} 12
apiserver_watch_events_sizes_sum{group="memoryovercommit.io",resource="memoryovercommitpolicies",version="v1alpha1"} 24000
"""  # noqa: E501


def test_write_requests_counts_every_write_verb_by_resource_and_no_reads() -> None:
    writes = write_requests(METRICS)
    assert writes == {"memoryovercommit.io/memoryovercommitnodestates/status": 40,
                      "memoryovercommit.io/memoryovercommitpolicies/status": 3,
                      "coordination.k8s.io/leases": 7, "core/nodes": 2}


def test_split_writes_separates_the_operators_kinds_from_the_rest() -> None:
    assert split_writes(write_requests(METRICS)) == (43, 9)


def test_operator_write_codes_counts_only_the_operators_kinds_by_code() -> None:
    assert operator_write_codes(METRICS) == {"200": 40, "409": 3}


def test_watch_events_counts_events_and_their_bytes() -> None:
    events = watch_events(METRICS)
    key = "memoryovercommit.io/memoryovercommitpolicies"
    assert (events[key], events[key + "#bytes"]) == (12, 24000)


def test_since_keeps_only_what_grew() -> None:
    before = write_requests(METRICS)
    after = write_requests(METRICS.replace("} 40", "} 46"))
    assert since(after, before) == {"memoryovercommit.io/memoryovercommitnodestates/status": 6}


def test_per_node_per_minute() -> None:
    assert per_node_per_minute(30, 10, 30.0) == pytest.approx(6.0)


# -- the cost model ---------------------------------------------------------------------------
def model(nodes: int) -> Model:
    return Model(nodes=nodes, node_writes_min=1.0, summary_writes_min=1.0, summary_bytes=2000,
                 naive_entry_bytes=350, naive_base_bytes=1500)


def test_per_node_state_events_per_agent_do_not_grow_with_nodes() -> None:
    assert model(100).events_per_agent_min(PER_NODE) == model(5000).events_per_agent_min(PER_NODE)
    assert model(5000).fanout_bytes_min(PER_NODE) == 50 * model(100).fanout_bytes_min(PER_NODE)


def test_naive_events_grow_linearly_and_fanout_bytes_cubically() -> None:
    assert model(5000).events_per_agent_min(NAIVE) == 5000
    ratio = model(2000).fanout_bytes_min(NAIVE) / model(1000).fanout_bytes_min(NAIVE)
    assert 7.5 < ratio <= 8.0  # 2^3, a little less for the fixed part of the object
    assert model(5000).naive_object_bytes == 1500 + 5000 * 350
