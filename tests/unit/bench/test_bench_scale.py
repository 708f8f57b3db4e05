"""The scale benchmark's pure parts: what the simulated agents write and when, the naive
design's status, when a policy status shows a change, metric parsing (latency histogram,
etcd size), the agents' identities."""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import ssl
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench.scale_agents import Fleet, Timing
from bench.scale_kube import AgentWatches
from bench.scale_model import (
    AGENT_ACCOUNT,
    AGENT_NAMESPACE,
    AGENT_USER,
    NAIVE,
    NAIVE_MERGE,
    PER_NODE,
    POOL_LABEL,
    NaiveStatus,
    NodeView,
    agent_pod,
    complete,
    conflict_backoff_s,
    etcd_caveat,
    etcd_db_bytes,
    histogram_quantile,
    identity_problems,
    kwok_node,
    latency_buckets,
    latency_figures,
    naive_at,
    naive_crd,
    naive_entry,
    naive_merge_patch,
    naive_rbac,
    naive_stale,
    node_status,
    operator_write_codes,
    per_node_per_minute,
    policy_change,
    policy_collection,
    rejected,
    shows,
    since,
    split_writes,
    spread,
    summarise,
    summary_counts,
    token_request,
    watch_events,
    with_naive_entry,
    write_requests,
)
from overcommit.agent.status import should_write
from overcommit.api.schema import openapi_schema, to_json, validate
from overcommit.api.status import NodeStateStatus
from overcommit.kube.client import ApiError as ProductApiError

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


# -- latency and etcd size ----------------------------------------------------------------------
def histogram(counts: dict[str, float], verb: str = "PATCH") -> str:
    return "".join(
        f'apiserver_request_duration_seconds_bucket{{component="apiserver",dry_run="",'
        f'group="",le="{le}",resource="nodes",scope="resource",subresource="status",'
        f'verb="{verb}",version="v1"}} {count}\n' for le, count in counts.items())


def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    buckets = {0.1: 50.0, 0.2: 90.0, 0.4: 100.0, math.inf: 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.2 + 0.2 * 9 / 10)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.1 + 0.1 * 20 / 40)


def test_histogram_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.99, {1.0: 10.0, 60.0: 20.0, math.inf: 100.0}) == 60.0


def test_histogram_quantile_without_observations_is_none() -> None:
    assert histogram_quantile(0.99, {0.1: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.99, {}) is None


def test_latency_buckets_sum_label_sets_and_leave_out_long_running_verbs() -> None:
    text = (histogram({"0.1": 5, "+Inf": 6}) + histogram({"0.1": 1, "+Inf": 4}, "GET")
            + histogram({"0.1": 0, "+Inf": 1000}, "WATCH"))
    assert latency_buckets(text) == {0.1: 6.0, math.inf: 10.0}
    assert latency_buckets(text, {"PATCH"}) == {0.1: 5.0, math.inf: 6.0}


def test_latency_figures_difference_two_scrapes() -> None:
    before = histogram({"0.05": 100, "0.1": 100, "1": 100, "+Inf": 100})
    after = histogram({"0.05": 100, "0.1": 150, "1": 200, "+Inf": 200})
    figures = latency_figures(after, before)
    assert figures["apiserver_requests"] == 100
    assert figures["apiserver_p50_s"] == pytest.approx(0.1)
    assert figures["apiserver_p99_s"] == pytest.approx(0.1 + 0.9 * 49 / 50)
    assert figures["apiserver_write_p99_s"] == figures["apiserver_p99_s"]


def test_etcd_db_bytes_from_either_metric_name() -> None:
    assert etcd_db_bytes("etcd_mvcc_db_total_size_in_bytes 1.2288e+06\n") == 1228800
    assert etcd_db_bytes("etcd_debugging_mvcc_db_total_size_in_bytes 4096\n") == 4096
    assert etcd_db_bytes("process_open_fds 12\n") is None


def test_rejected_sums_apf_rejections() -> None:
    text = ('apiserver_flowcontrol_rejected_requests_total{flow_schema="service-accounts",'
            'priority_level="workload-low",reason="queue-full"} 7\n'
            'apiserver_flowcontrol_rejected_requests_total{flow_schema="x",'
            'priority_level="y",reason="time-out"} 2\n')
    assert rejected(text) == 9


# -- the naive designs' writes and outcomes ---------------------------------------------------
def test_naive_merge_patch_sets_only_its_own_entry() -> None:
    entry = naive_entry(node_status(VIEW, "scale"))
    assert naive_merge_patch("node-7", entry) == {"status": {"nodes": {"node-7": entry}}}


def test_naive_at_needs_every_live_node_at_the_generation_and_ignores_the_dead() -> None:
    status = {"nodes": {"a": {"generation": 3}, "b": {"generation": 3}, "dead": {"generation": 2}}}
    assert naive_at(status, {"a", "b"}, 3)
    assert not naive_at(status, {"a", "b", "dead"}, 3)
    assert not naive_at(status, {"a", "c"}, 3)
    assert naive_stale(status, {"a", "b"}) == 1


def test_summary_counts_the_survivors() -> None:
    status = {"observedGeneration": 2, "nodes": {"matched": 80, "applied": 80}}
    assert summary_counts(status, 80, 2)
    assert not summary_counts(status, 100, 2)


def test_policy_change_is_a_spec_change() -> None:
    assert policy_change(1234) == {"spec": {"ksm": {"pagesToScan": 1234}}}
    assert policy_collection(PER_NODE).endswith("/memoryovercommitpolicies")
    assert policy_collection(NAIVE_MERGE).endswith("/naiveovercommitpolicies")


# -- identities -------------------------------------------------------------------------------
def test_kwok_node_is_annotated_for_kwok_and_selected_by_the_policy() -> None:
    node = kwok_node("n1")
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
    assert node["metadata"]["labels"][POOL_LABEL] == "bench"


def test_agent_pod_runs_on_its_node_under_the_shipped_service_account() -> None:
    pod = agent_pod("n1")
    assert pod["spec"]["nodeName"] == "n1"
    assert (pod["metadata"]["namespace"], pod["spec"]["serviceAccountName"]) == \
        (AGENT_NAMESPACE, AGENT_ACCOUNT)


def test_token_request_is_bound_to_the_pod() -> None:
    ref = token_request("overcommit-agent-n1", "uid-9")["spec"]["boundObjectRef"]
    assert ref == {"apiVersion": "v1", "kind": "Pod", "name": "overcommit-agent-n1",
                   "uid": "uid-9"}


def review(username: str, groups: list[str], node: list[str] | None) -> dict[str, Any]:
    extra = {} if node is None else {"authentication.kubernetes.io/node-name": node}
    return {"status": {"userInfo": {"username": username, "groups": groups, "extra": extra}}}


def test_identity_problems_accepts_the_bound_agent_only() -> None:
    assert identity_problems(review(AGENT_USER, ["system:serviceaccounts"], ["n1"]), "n1") == []
    assert identity_problems(review(AGENT_USER, ["system:serviceaccounts"], ["n2"]), "n1")
    assert identity_problems(review(AGENT_USER, ["system:serviceaccounts"], None), "n1")
    masters = identity_problems(review("scale-bench", ["system:masters"], ["n1"]), "n1")
    assert len(masters) == 2 and "in system:masters" in masters


def test_naive_rbac_adds_only_the_naive_policy_status_for_the_agent_account() -> None:
    role, binding = naive_rbac()
    assert {r["apiGroups"][0] for r in role["rules"]} == {"naive.memoryovercommit.io"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": AGENT_ACCOUNT,
                                    "namespace": AGENT_NAMESPACE}]


def test_spread_is_median_min_max_of_what_was_measured() -> None:
    assert spread([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert spread([4.0, 1.0]) == {"median": 2.5, "min": 1.0, "max": 4.0, "n": 2}
    assert spread([None]) == {"median": None, "min": None, "max": None, "n": 0}


def run(p99: float, burst_s: float | None, etcd: int) -> dict[str, Any]:
    return {"apiserver_p99_s": p99, "etcd_db_bytes": etcd, "converge_s": 1.0,
            "agent_identity": {"system_masters": False},
            "burst": {"converge_s": burst_s, "apiserver_p99_s": p99 * 2, "conflicts": 0},
            "steady": {"apiserver_p99_s": p99}, "churn": None, "failover": None,
            "vanish": {"converge_s": 1.0, "stale_entries": 4}}


def test_summarise_takes_medians_keeps_spreads_and_counts_timeouts() -> None:
    out = summarise([run(0.1, 2.0, 100), run(0.3, None, 300), run(0.2, 4.0, 200)])
    assert (out["repeats"], out["apiserver_p99_s"], out["etcd_db_bytes"]) == (3, 0.2, 200)
    assert out["burst"]["converge_s"] == 3.0 and out["burst"]["timed_out"] == 1
    assert out["spread"]["burst.apiserver_p99_s"] == {"median": 0.4, "min": 0.2, "max": 0.6,
                                                      "n": 3}
    assert out["vanish"]["stale_entries"] == 4
    assert out["failover"] is None and out["churn"] is None
    assert len(out["runs"]) == 3
    assert out["versions"] == []  # these runs did not say what served them


def test_summarise_says_which_etcd_served_the_runs_and_shows_a_mix() -> None:
    debian = {"kube_apiserver": "v1.34.4", "etcd": "3.4.23"}
    built = {"kube_apiserver": "v1.34.4", "etcd": "3.6.4"}
    same = summarise([run(0.1, 2.0, 100) | {"versions": debian}] * 2)
    assert same["versions"] == [debian]
    mixed = summarise([run(0.1, 2.0, 100) | {"versions": debian},
                       run(0.2, 2.0, 100) | {"versions": built}])
    assert sorted(v["etcd"] for v in mixed["versions"]) == ["3.4.23", "3.6.4"]


def test_an_etcd_below_the_supported_minimum_is_called_out() -> None:
    caveat = etcd_caveat("3.4.23")
    assert caveat is not None and "3.4.23" in caveat and "install-kube --etcd" in caveat
    assert etcd_caveat("3.6.4") is None and etcd_caveat("3.5.11") is None
    assert etcd_caveat("unknown") is None


def test_summarise_lists_failed_runs_without_counting_them() -> None:
    out = summarise([run(0.1, 2.0, 100), {"nodes": 5000, "error": "request is too large"}])
    assert out["repeats"] == 1 and out["errors"] == ["request is too large"]
    failed = summarise([{"nodes": 5000, "error": "request is too large"}])
    assert failed["repeats"] == 0 and failed["apiserver_p99_s"] is None
    assert failed["burst"] is None


def test_a_run_that_failed_part_way_keeps_its_figures_shown_but_not_counted(
        capsys: pytest.CaptureFixture[str]) -> None:
    from bench.scale import print_table

    partial = run(0.1, None, 100) | {"burst": None, "failover": None, "vanish": None,
                                      "failed_in": "burst", "error": "HTTP 504"}
    out = summarise([partial])
    assert out["repeats"] == 0 and out["errors"] == ["HTTP 504"]
    assert out["apiserver_p99_s"] is None  # not a median of anything
    assert out["partial"]["failed_in"] == "burst" and out["partial"]["etcd_db_bytes"] == 100
    assert summarise([{"nodes": 5000, "error": "x"}])["partial"] is None
    print_table({"naive": {"5000": out}})
    table = capsys.readouterr().out
    assert "failed: HTTP 504" in table
    [row] = [line for line in table.splitlines() if "until burst" in line]
    assert " 100 " in row  # the p99 until the failure, in ms


# -- the harness's arithmetic (no cluster) ----------------------------------------------------
def test_quick_params_are_labelled_shortcuts_and_the_full_run_keeps_shipped_settings() -> None:
    from bench.scale import parse_args

    quick = parse_args(["--quick"])
    assert quick.sizes == (20, 100) and quick.controller_lease_s == 5
    assert quick.churn_after_s == 0.0
    full = parse_args([])
    assert full.sizes == (100, 1000, 5000)
    assert (full.controller_lease_s, full.controller_status_interval_s,
            full.controller_sweep_s) == (None, None, None)  # the controller's own defaults
    assert full.churn_after_s == 61.0 and full.timing.interval_s == 30.0


def test_apiserver_profiles_are_off_unless_asked_for(tmp_path: Path) -> None:
    from bench.scale import parse_args

    assert parse_args([]).profiles is None
    assert parse_args(["--apiserver-profiles", str(tmp_path)]).profiles == tmp_path


class ProfilingKube:
    """The one call apiserver_profile makes, answered from here."""

    def __init__(self, answer: bytes | Exception) -> None:
        self.answer = answer
        self.asked: list[float] = []

    async def cpu_profile(self, seconds: float) -> bytes:
        self.asked.append(seconds)
        await asyncio.sleep(0.05)  # the profile ends after the block: the block waits for it
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_a_profiled_window_saves_the_api_servers_profile(tmp_path: Path) -> None:
    from bench.scale import apiserver_profile

    async def window(kube: Any, into: Path | None) -> None:
        async with apiserver_profile(kube, into, "per_node_state-5000-churn", 40.0):
            pass

    kube = ProfilingKube(b"\x1f\x8b profile")
    asyncio.run(window(kube, tmp_path))
    [saved] = tmp_path.glob("per_node_state-5000-churn-*.pb.gz")
    assert saved.read_bytes() == b"\x1f\x8b profile" and kube.asked == [40.0]
    unasked = ProfilingKube(b"x")
    asyncio.run(window(unasked, None))
    assert unasked.asked == []


def test_a_profile_that_fails_does_not_fail_the_run(tmp_path: Path) -> None:
    from bench.scale import apiserver_profile
    from bench.scale_kube import ApiError

    async def window() -> None:
        async with apiserver_profile(ProfilingKube(ApiError(404, "GET", "profiling off")),
                                     tmp_path, "burst", 60.0):
            pass

    asyncio.run(window())
    assert list(tmp_path.iterdir()) == []


def test_window_figures_count_only_agents_present_in_both_snapshots() -> None:
    from bench.scale import Snapshot, window_figures
    from bench.scale_agents import Writes
    from bench.scale_kube import Tally

    before_text = METRICS + histogram({"0.1": 10, "+Inf": 10})
    after_text = METRICS.replace("} 40", "} 46") + histogram({"0.1": 15, "+Inf": 20})
    before = Snapshot(0.0, before_text, 100, Writes(attempts=1),
                      {"a": Tally(1, 10), "b": Tally(1, 10), "gone": Tally(0, 0)}, 0, {"x": 0.0},
                      tcp_accepted=1000)
    after = Snapshot(60.0, after_text, 200, Writes(attempts=7, done=6),
                     {"a": Tally(3, 30), "b": Tally(1, 10)}, 2, {"x": 30.0}, tcp_accepted=1120)
    out = window_figures(before, after, PER_NODE)
    assert out["events_per_agent_min"] == pytest.approx(1.0)  # (2 + 0) / 2 agents
    assert out["agent_writes"] == 6 and out["agent_writes_done"] == 6
    assert out["writes_per_node_min"] == pytest.approx(3.0)  # 6 node-state writes, 2 nodes
    assert out["apiserver_requests"] == 10 and out["etcd_db_bytes"] == 200
    assert out["cpu_percent"] == {"x": pytest.approx(50.0)}
    assert out["summary_writes_per_min"] == pytest.approx(2.0)
    assert out["tcp_connections_accepted_per_s"] == pytest.approx(2.0)  # 120 in 60 s


@pytest.mark.parametrize(("design", "held"), [(PER_NODE, True), (NAIVE, False)])
def test_simulated_agents_report_a_policy_change_as_the_real_agent_does(
        tmp_path: Path, design: str, held: bool) -> None:
    """per_node_state's agents wait the product's policy_news_delay before writing a policy
    change (20 nodes at 100 writes/s: within 0.2 s); the naive baselines write at once; then
    each posts the agent's two Events."""
    views = [NodeView(f"n{i}", i, "uid", 1, 0) for i in range(20)]
    cycled: list[float] = []

    async def scenario() -> float:
        watches = AgentWatches("https://127.0.0.1:1", ssl.create_default_context())
        fleet = Fleet(watches, design, "p", views, {v.node: "token" for v in views},
                      tmp_path / "ca.crt", Timing(30.0, 60.0, policy_change_rate=100.0))
        fleet.rng.random = lambda: 0.999  # type: ignore[method-assign]

        async def cycle(agent: Any, failed: bool | None = None,
                        generation: int | None = None) -> bool:
            cycled.append(time.monotonic())
            agent.view = replace(agent.view, generation=generation or agent.view.generation)
            return True

        fleet.cycle = cycle  # type: ignore[method-assign]
        posted: list[tuple[float, str]] = []

        async def create_event(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
            posted.append((time.monotonic(), body["reason"]))
            return body

        fleet.agents["n0"].api.create_event = create_event  # type: ignore[method-assign]
        fleet.generation = 2
        start = time.monotonic()
        fleet._on_policy_event(fleet.agents["n0"])
        await asyncio.gather(*fleet.reactions)
        await fleet.stop()
        await watches.close()
        # the real agent's two Events of a policy change, after its report
        assert [reason for _, reason in posted] == ["SettingsApplied", "PolicyInForce"]
        assert posted[0][0] >= cycled[0]
        assert fleet.writes.event_posts == 2
        return start

    start = asyncio.run(scenario())
    assert len(cycled) == 1
    waited = cycled[0] - start
    assert (waited >= 0.19) if held else (waited < 0.19)


def test_simulated_agents_post_throttled_events_again_at_their_next_cycle(
        tmp_path: Path) -> None:
    """As the real agent's outbox: a 429 keeps both Events of the change, in order, and the
    agent's next cycle posts them; until then the burst counts them as outstanding."""
    views = [NodeView("n0", 0, "uid", 1, 0)]

    async def scenario() -> tuple[Fleet, list[str], list[int]]:
        watches = AgentWatches("https://127.0.0.1:1", ssl.create_default_context())
        fleet = Fleet(watches, PER_NODE, "p", views, {"n0": "token"}, tmp_path / "ca.crt",
                      Timing(30.0, 60.0, policy_change_rate=0.0))

        async def cycle(agent: Any, failed: bool | None = None,
                        generation: int | None = None) -> bool:
            agent.view = replace(agent.view, generation=generation or agent.view.generation)
            return True

        fleet.cycle = cycle  # type: ignore[method-assign]
        posted: list[str] = []
        answers = [ProductApiError(429, '{"message": "too many requests"}', "POST")]

        async def create_event(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
            if answers:
                raise answers.pop()
            posted.append(body["reason"])
            return body

        agent = fleet.agents["n0"]
        agent.api.create_event = create_event  # type: ignore[method-assign]
        fleet.generation = 2
        fleet._on_policy_event(agent)
        await asyncio.gather(*fleet.reactions)
        outstanding = [fleet.events_outstanding()]
        await fleet._flush(agent)  # what the agent's next cycle does
        outstanding.append(fleet.events_outstanding())
        await agent.api.close()
        await watches.close()
        return fleet, posted, outstanding

    fleet, posted, outstanding = asyncio.run(scenario())
    assert outstanding == [2, 0]
    assert posted == ["SettingsApplied", "PolicyInForce"]
    assert (fleet.writes.event_posts, fleet.writes.event_posts_failed,
            fleet.writes.events_dropped) == (2, 1, 0)


def test_the_fleet_stops_its_agents_at_once_and_its_reactions_first(tmp_path: Path) -> None:
    """Closing a session can take seconds against an overloaded API server: 20 agents whose
    close takes 0.2 s each stop in about 0.2 s, not 4 s; a reaction under way is cancelled
    before its agent's session closes."""
    views = [NodeView(f"n{i}", i, "uid", 1, 0) for i in range(20)]

    async def scenario() -> tuple[float, list[str]]:
        watches = AgentWatches("https://127.0.0.1:1", ssl.create_default_context())
        fleet = Fleet(watches, PER_NODE, "p", views, {v.node: "token" for v in views},
                      tmp_path / "ca.crt", Timing(30.0, 60.0, policy_change_rate=0.0))
        order: list[str] = []
        for agent in fleet.agents.values():
            real_close = agent.api.close

            async def slow_close(real_close: Any = real_close) -> None:
                await asyncio.sleep(0.2)
                order.append("closed")
                await real_close()

            agent.api.close = slow_close  # type: ignore[method-assign]

        async def reacting() -> None:
            try:
                await asyncio.sleep(60)
            finally:
                order.append("reaction")

        fleet.reactions.add(asyncio.create_task(reacting()))
        await asyncio.sleep(0)
        start = time.monotonic()
        await fleet.stop()
        took = time.monotonic() - start
        await watches.close()
        return took, order

    took, order = asyncio.run(scenario())
    assert took < 1.5
    assert order == ["reaction"] + ["closed"] * 20


def test_the_hosts_accepted_connections_are_read_from_proc() -> None:
    from bench.scale import tcp_passive_opens

    first = tcp_passive_opens()
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()):
        server.accept()[0].close()
    assert tcp_passive_opens() >= first + 1


def test_the_benchmark_takes_the_environments_etcd_when_it_names_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.scale import etcd_binary

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("install-kube --etcd ran although the environment names etcd")

    monkeypatch.setattr("bench.scale.subprocess.run", no_build)
    for name in ("KUBEBUILDER_ASSETS", "TEST_ASSET_ETCD"):
        with monkeypatch.context() as env:
            env.setenv(name, "/somewhere")
            assert etcd_binary() is None
