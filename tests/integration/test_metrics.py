"""A running agent's /metrics against its node state, on the real API server.

The agent runs as its own process on a fake host root (never the real /sys), scrapes are plain
HTTP, and every value is compared with the MemoryOvercommitNodeState the same agent wrote.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from overcommit.localcluster import ControlPlane
from overcommit.localcluster.ports import free_port
from testkit.fakes.kernel import FakeKernel
from testkit.waiting import wait_for
from tests.integration.kube import (
    agent_log,
    agent_process,
    apply,
    fetch,
    install_crds,
    node,
    node_state,
)
from tests.integration.kube import policy as policy_object

Labels = tuple[tuple[str, str], ...]
Series = dict[tuple[str, Labels], float]
SAVED = {"merged": "mergedBytes", "ballooned": "balloonedBytes",
         "compressed": "compressedBytes", "total": "totalBytes"}
GUEST_SIZES = {"max": "maxBytes", "current": "currentBytes", "target": "targetBytes",
               "usable": "usableBytes"}
GIB_KIB = 1024 * 1024


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> ControlPlane:
    install_crds(control_plane)
    return control_plane


@pytest.fixture
def name() -> str:
    return f"metrics-{uuid.uuid4().hex[:6]}"




def scrape(port: int) -> Series | None:
    answer = fetch(port, "/metrics")
    if answer is None or answer[0] != 200:
        return None  # not listening yet
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer[1]) for s in family.samples}


def get(series: Series, metric: str, /, **labels: str) -> float | None:
    return series.get((metric, tuple(sorted(labels.items()))))


def status_of(cluster: ControlPlane, name: str) -> dict[str, Any]:
    status: dict[str, Any] = (node_state(cluster, name) or {}).get("status") or {}
    return status


def expected(status: dict[str, Any]) -> dict[tuple[str, Labels], float]:
    """What the documented series must hold for this node-state status (docs/metrics.md)."""
    out: dict[tuple[str, Labels], float] = {}

    def put(metric: str, number: float, /, **labels: str) -> None:
        out[(metric, tuple(sorted(labels.items())))] = float(number)

    for path, text in status["settings"].items():
        directory, _, setting = path.rpartition("/")
        engine = {"sys/kernel/mm/ksm": "ksm", "sys/module/zswap/parameters": "zswap",
                  "proc/sys/vm": "swap"}[directory]
        if text.isdigit() or text in ("Y", "N"):
            number = 1 if text == "Y" else 0 if text == "N" else int(text)
            put("overcommit_engine_setting", number, engine=engine, name=setting)
        else:
            put("overcommit_engine_setting_info", 1, engine=engine, name=setting, value=text)
    for key, count in status["counters"].items():
        engine, _, counter = key.partition(".")
        put("overcommit_engine_counter", count, engine=engine, name=counter)
    for kind, key in SAVED.items():
        put("overcommit_saved_bytes", status["saved"][key], kind=kind)
    put("overcommit_merging_profit_bytes", status["saved"]["mergingProfitBytes"])
    for engine in status["engines"]:
        put("overcommit_engine_present", 1 if engine["present"] else 0, engine=engine["name"])
    for c in status["conditions"]:
        put("overcommit_condition", 1 if c["status"] == "True" else 0, type=c["type"],
            reason=c["reason"])
    put("overcommit_guests", status["guestCount"])
    for g in status.get("guests") or []:
        for size, key in GUEST_SIZES.items():
            if key in g:
                put(f"overcommit_guest_{size}_bytes", g[key], domain=g["domain"],
                    vmi_namespace=g.get("vmiNamespace", ""), vmi_name=g.get("vmiName", ""))
    policy = status["policy"]
    put("overcommit_policy_info", 1, policy=policy["name"], uid=policy["uid"],
        generation=str(policy["generation"]))
    return out


def mismatches(status: dict[str, Any], series: Series) -> list[str]:
    return [f"{metric}{dict(labels)}: node state {want}, /metrics {series.get((metric, labels))}"
            for (metric, labels), want in expected(status).items()
            if series.get((metric, labels)) != want]


def agreeing(cluster: ControlPlane, name: str, port: int) -> tuple[dict[str, Any], Series] | None:
    """The node state and a scrape once every documented value agrees (metrics follow every
    cycle, the node state at most every --status-interval: they meet within a cycle or two)."""
    status = status_of(cluster, name)
    series = scrape(port)
    if not status.get("policy") or series is None or mismatches(status, series):
        return None
    return status, series


def events_counted(port: int) -> Series | None:
    series = scrape(port)
    if series and get(series, "overcommit_agent_events_total", type="Normal",
                      reason="SettingsApplied"):
        return series
    return None


def agent_args(port: int, *more: str) -> list[str]:
    return ["--metrics-port", str(port), "--metrics-address", "127.0.0.1",
            "--log-format", "json", *more]


def test_metrics_match_the_node_state(cluster: ControlPlane, name: str,
                                      tmp_path: Path) -> None:
    host = FakeKernel(tmp_path / "host")
    host.merge(shared=40, sharing=400)
    apply(cluster, node(name, {"pool": name}))
    apply(cluster, policy_object(name, {
        "nodeSelector": {"matchLabels": {"pool": name}},
        "ksm": {"enabled": True, "pagesToScan": 1000, "sleepMillisecs": 15},
        "zswap": {"enabled": True, "compressor": "zstd"}, "swap": {"swappiness": 10}}))
    port = free_port()
    state_dir = tmp_path / "state"
    with agent_process(cluster, name, host.root, state_dir,
                       extra_args=agent_args(port, "--no-libvirt")):
        wait_for(lambda: agreeing(cluster, name, port), 60,
                 "/metrics to agree with the node state")
        status, series = agreeing(cluster, name, port) or ({}, {})
        # the values the policy and the fake host set, read through /metrics
        assert get(series, "overcommit_engine_setting", engine="ksm", name="pages_to_scan") == 1000
        assert get(series, "overcommit_engine_setting", engine="zswap", name="enabled") == 1
        assert get(series, "overcommit_engine_setting", engine="swap", name="swappiness") == 10
        assert get(series, "overcommit_engine_setting_info", engine="zswap",
                   name="compressor", value="zstd") == 1
        assert get(series, "overcommit_engine_counter", engine="ksm", name="pages_sharing") == 400
        assert get(series, "overcommit_saved_bytes", kind="merged") == \
            status["saved"]["mergedBytes"] > 0
        assert get(series, "overcommit_condition", type="Ready", reason="Applied") == 1
        assert get(series, "overcommit_policy_info", policy=name, uid=status["policy"]["uid"],
                   generation="1") == 1
        assert get(series, "overcommit_agent_info", node=name, version=next(
            dict(labels)["version"] for metric, labels in series
            if metric == "overcommit_agent_info")) == 1
        # the agent's own work (its Events are posted, and counted, after the status write)
        series = wait_for(lambda: events_counted(port), 10, "the agent's Events counted")
        assert (get(series, "overcommit_api_writes_total", verb="patch",
                    resource="memoryovercommitnodestates/status", code="200") or 0) >= 1
        assert (get(series, "overcommit_api_writes_total", verb="create", resource="events",
                    code="201") or 0) >= 1
        assert (get(series, "overcommit_agent_events_total", type="Normal",
                    reason="SettingsApplied") or 0) >= 1
        assert (get(series, "overcommit_agent_cycle_duration_seconds_count") or 0) >= 1
        assert (get(series, "process_resident_memory_bytes") or 0) > 16 << 20  # the agent's own
        assert all(get(series, "overcommit_agent_errors_total", kind=kind) == 0
                   for kind in ("setting", "guest", "policy", "api", "host", "internal"))

        # the host moves: both the node state and /metrics follow, and agree again
        host.merge(shared=60, sharing=900)
        wait_for(lambda: status_of(cluster, name)["counters"]["ksm.pages_sharing"] == 900, 30,
                 "the node state to report the new merge counters")
        wait_for(lambda: agreeing(cluster, name, port), 30, "/metrics to agree again")
        _, series = agreeing(cluster, name, port) or ({}, {})
        assert get(series, "overcommit_engine_counter", engine="ksm", name="pages_sharing") == 900
    cluster.kubectl("delete", "mop", name)

    lines = [line for line in agent_log(state_dir, name).splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # --log-format json: every line is JSON
    ours = [e for e in entries if e["logger"].startswith("overcommit.")]
    assert ours and all(e["node"] == name for e in ours)
    assert any(e.get("policy") == name for e in ours)
    assert {"timestamp", "severity", "message"} <= set().union(*entries)


def test_guest_series_match_the_node_state(cluster: ControlPlane, name: str,
                                           tmp_path: Path) -> None:
    """Guests on libvirt's test driver (no daemon, no real guest). Its balloon statistics are
    decades old under a real clock, so the agent reports the guests and leaves them alone:
    max, current and usable are served, a target is not."""
    from testkit.fakes.libvirt_xml import FakeDomain, write_node

    host = FakeKernel(tmp_path / "host")
    uri = write_node(tmp_path, [
        FakeDomain("ns1_vm-a", max_kib=2 * GIB_KIB, current_kib=GIB_KIB, vmi_uid=str(uuid.uuid4())),
        FakeDomain("plain-b", max_kib=GIB_KIB)])
    apply(cluster, node(name, {"pool": name}))
    apply(cluster, policy_object(name, {"nodeSelector": {"matchLabels": {"pool": name}},
                                        "balloon": {"mode": "Static",
                                                    "static": {"targetPercent": 60}}}))
    port = free_port()
    with agent_process(cluster, name, host.root, tmp_path / "state",
                       extra_args=agent_args(port, "--libvirt-uri", uri)):
        wait_for(lambda: status_of(cluster, name).get("guestCount") == 2, 60,
                 "the node state to report both guests")
        wait_for(lambda: agreeing(cluster, name, port), 30,
                 "/metrics to agree with the node state")
        status, series = agreeing(cluster, name, port) or ({}, {})
    cluster.kubectl("delete", "mop", name)
    guests = {g["domain"]: g for g in status["guests"]}
    assert (guests["ns1_vm-a"]["vmiNamespace"], guests["ns1_vm-a"]["vmiName"]) == ("ns1", "vm-a")
    a = {"domain": "ns1_vm-a", "vmi_namespace": "ns1", "vmi_name": "vm-a"}
    b = {"domain": "plain-b", "vmi_namespace": "", "vmi_name": ""}
    assert get(series, "overcommit_guest_max_bytes", **a) == 2 * GIB_KIB * 1024
    assert get(series, "overcommit_guest_current_bytes", **a) == GIB_KIB * 1024
    assert get(series, "overcommit_guest_usable_bytes", **a) == guests["ns1_vm-a"]["usableBytes"]
    assert get(series, "overcommit_guest_current_bytes", **b) == GIB_KIB * 1024
    assert get(series, "overcommit_guest_target_bytes", **a) is None  # skipped: stale stats
    assert get(series, "overcommit_guests") == 2
    assert get(series, "overcommit_saved_bytes", kind="ballooned") == GIB_KIB * 1024 == \
        status["saved"]["balloonedBytes"]
