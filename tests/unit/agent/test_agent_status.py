"""The agent's reporting logic without a cluster: status content, change gating, events."""

from __future__ import annotations

import asyncio
import errno
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from overcommit.agent.runner import Agent
from overcommit.agent.settings import AgentSettings
from overcommit.agent.status import (
    counter_interval,
    detail_of,
    largest_node_count,
    news_of,
    node_status,
    policy_news,
    policy_news_delay,
    policy_news_window,
    should_write,
)
from overcommit.api.model import PolicyError, policy_from_object
from overcommit.api.schema import openapi_schema, to_json, validate
from overcommit.api.status import NodeStateStatus, PolicyRef, find_condition
from overcommit.reconcile.node import CycleResult, NodeReconciler
from testkit.cases import policy_document
from testkit.fakes.kernel import FakeKernel

KSM = "sys/kernel/mm/ksm"
NOW = "2026-12-03T12:00:00Z"


class RecordingApi:
    """Stands in for KubeApi: records what the agent would send."""

    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.bodies: list[dict[str, Any]] = []
        self.created = 0

    async def get_node_state(self, name: str) -> dict[str, Any] | None:
        return {"metadata": {"uid": "u1"}, "status": {}} if self.created else None

    async def create_node_state(self, name: str, node_uid: str | None) -> dict[str, Any]:
        self.created += 1
        return {"metadata": {"uid": "u1"}}

    async def replace_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(status)
        return {}

    async def create_event(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.events.append((body["type"], body["reason"], body["message"]))
        self.bodies.append(body)
        return body


@pytest.fixture
def kernel(tmp_path: Path) -> FakeKernel:
    return FakeKernel(tmp_path / "host")


def wire(report: CycleResult, invalid: list[PolicyError] | None = None) -> dict[str, Any]:
    """The node state's status after ``report`` as the API server receives it."""
    status: dict[str, Any] = to_json(node_status(report, invalid or [], now=NOW))
    return status


def cycle(kernel: FakeKernel, tmp_path: Path, spec: dict[str, Any] | None) -> CycleResult:
    # A new engine each time, as after a restart: its ladder starts again, stamped by this
    # fixed wall clock (a real one could tick a second between two calls).
    engine = NodeReconciler(state_dir=tmp_path / "state", fs=kernel,
                            wall_clock=lambda: 1_796_299_200.0)
    policies = [policy_from_object(policy_document("p", spec))] if spec else []
    return engine.cycle(policies, {})


def agent_with(api: RecordingApi, tmp_path: Path, status_interval: float = 60.0) -> Agent:
    agent = Agent(AgentSettings(node_name="n1", host_root=str(tmp_path / "host"),
                                state_dir=str(tmp_path / "state"),
                                status_interval_seconds=status_interval))
    agent.api = api  # type: ignore[assignment]
    return agent


def test_status_reports_policy_settings_after_apply_and_originals(kernel: FakeKernel,
                                                                  tmp_path: Path) -> None:
    report = cycle(kernel, tmp_path, {"ksm": {"enabled": True, "pagesToScan": 900}})
    status = wire(report)
    assert status["policy"]["name"] == "p"
    assert status["settings"][f"{KSM}/pages_to_scan"] == "900"
    assert status["originals"][f"{KSM}/pages_to_scan"] == "100"
    ready = find_condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Applied")
    assert status["counters"]["ksm.pages_sharing"] == 0


def test_failed_write_makes_ready_false(kernel: FakeKernel, tmp_path: Path) -> None:
    kernel.fail_always(f"{KSM}/sleep_millisecs", errno.EIO)
    report = cycle(kernel, tmp_path, {"ksm": {"enabled": True, "sleepMillisecs": 5}})
    status = wire(report)
    ready = find_condition(status, "Ready")
    degraded = find_condition(status, "Degraded")
    assert (ready["status"], ready["reason"]) == ("False", "ApplyFailed")
    assert degraded["status"] == "True"
    assert "sleep_millisecs" in status["lastErrors"][0]


def test_invalid_cluster_policies_are_reported(kernel: FakeKernel, tmp_path: Path) -> None:
    report = cycle(kernel, tmp_path, None)
    bad = PolicyError("cluster (MemoryOvercommitPolicy x)", ["spec.ksm.pagesToScan: too big"])
    status = wire(report, [bad])
    degraded = find_condition(status, "Degraded")
    assert degraded["reason"] == "InvalidPolicy"
    assert "spec.ksm.pagesToScan" in status["lastErrors"][0]


def test_status_stays_valid_for_the_crd_with_long_and_many_errors(kernel: FakeKernel,
                                                                  tmp_path: Path) -> None:
    """The API server refuses the whole status write if one item breaks the CRD's bounds: long
    libvirt messages and many invalid policies must be cut to fit, not lose the report."""
    report = cycle(kernel, tmp_path, {"ksm": {"enabled": True}})
    for n in range(40):
        report.guests.note_down(f"qemu+ssh://host-{n}/system", "refused " * 300)
    report.guests.needed = False  # as the engine decides for a KSM-only policy
    invalid = [PolicyError(f"cluster (MemoryOvercommitPolicy x{n})", ["why " * 400])
               for n in range(40)]
    status = wire(report, invalid)
    assert validate(status, openapi_schema(NodeStateStatus), "status") == []
    assert len(status["endpointsDown"]) == 32 and status["endpointsDown"][0].startswith(
        "qemu+ssh://host-0/system: refused")
    # Listed, but not a problem: the policy does not balloon and nothing is owed to guests.
    assert find_condition(status, "Degraded")["reason"] == "InvalidPolicy"
    assert not any("refused" in error for error in status["lastErrors"])


def test_transition_time_is_kept_while_status_holds(kernel: FakeKernel, tmp_path: Path) -> None:
    report = cycle(kernel, tmp_path, {"ksm": {"enabled": True}})
    first = node_status(report, now="2020-01-01T00:00:00Z")
    second = node_status(report, previous=first, now=NOW)
    assert {c.last_transition_time for c in second.conditions or ()} == {"2020-01-01T00:00:00Z"}
    failing = replace(second, conditions=[replace(c, status="False") if c.type == "Ready" else c
                                          for c in second.conditions or ()])
    third = node_status(report, previous=failing, now=NOW)
    assert {c.type: c.last_transition_time for c in third.conditions or ()} == {
        "Ready": NOW, "Degraded": "2020-01-01T00:00:00Z"}


def test_counters_alone_are_detail_not_news(kernel: FakeKernel, tmp_path: Path) -> None:
    kernel.merge(shared=5, sharing=10)  # merging already saves: its growth is not news
    report = cycle(kernel, tmp_path, {"ksm": {"enabled": True}})
    before = node_status(report, now=NOW)
    kernel.merge(shared=10, sharing=40)
    after = node_status(cycle(kernel, tmp_path, {"ksm": {"enabled": True}}), previous=before,
                        now=NOW)
    assert news_of(after) == news_of(before)
    assert detail_of(after) != detail_of(before)


def test_the_ladder_is_in_the_status_and_its_moves_are_news(kernel: FakeKernel,
                                                           tmp_path: Path) -> None:
    engine = NodeReconciler(state_dir=tmp_path / "state", fs=kernel,
                            wall_clock=lambda: 1_796_299_200.0)
    policies = [policy_from_object(policy_document("p", {
        "ksm": {"enabled": True}, "ladder": {"minimumAvailable": "1Gi"}}))]
    kernel.set_memory(6 << 20)
    first = node_status(engine.cycle(policies, {}), now=NOW)
    kernel.set_memory(5 << 20)  # other figures, the same state: not news
    same = node_status(engine.cycle(policies, {}), now=NOW)
    assert news_of(same) == news_of(first)
    kernel.set_memory(1 << 20)
    hard = node_status(engine.cycle(policies, {}), now=NOW)
    assert news_of(hard) != news_of(first)
    ladder = to_json(hard)["ladder"]
    assert (ladder["state"], ladder["since"], ladder["relief"]) == (
        "Hard", "2026-12-03T12:00:00Z", False)
    assert ladder["reason"] == "MemAvailable 1.0Gi < 2.0Gi (Hard's threshold: 200% of M)"
    assert [(t.get("fromState"), t["toState"]) for t in ladder["transitions"]] == [
        ("Clear", "Hard"), (None, "Clear")]
    assert validate(to_json(hard), openapi_schema(NodeStateStatus), "status") == []


def test_publish_writes_once_then_only_on_news(kernel: FakeKernel, tmp_path: Path) -> None:
    api = RecordingApi()
    agent = agent_with(api, tmp_path)
    spec = {"ksm": {"enabled": True}}
    kernel.merge(shared=5, sharing=10)  # merging already saves: its growth is not news

    async def scenario() -> None:
        await agent.publish(node_status(cycle(kernel, tmp_path, spec), now=NOW), "node-uid")
        assert len(api.writes) == 1 and api.created == 1
        # nothing changed: no write
        assert not await agent.publish(node_status(cycle(kernel, tmp_path, spec),
                                                   previous=agent.last_status, now=NOW), "node-uid")
        # counters changed, but the status interval has not passed: no write
        kernel.merge(shared=10, sharing=40)
        assert not await agent.publish(node_status(cycle(kernel, tmp_path, spec),
                                                   previous=agent.last_status, now=NOW), "node-uid")
        # the interval passes: the counter change is written
        agent.last_write -= 61
        assert await agent.publish(node_status(cycle(kernel, tmp_path, spec),
                                               previous=agent.last_status, now=NOW), "node-uid")
        # news (a failure) is written at once
        kernel.fail_always(f"{KSM}/sleep_millisecs", errno.EIO)
        bad = {"ksm": {"enabled": True, "sleepMillisecs": 7}}
        assert await agent.publish(node_status(cycle(kernel, tmp_path, bad),
                                               previous=agent.last_status, now=NOW), "node-uid")

    asyncio.run(scenario())
    assert len(api.writes) == 3
    assert all("lastUpdate" in w for w in api.writes)


def test_counter_writes_wait_longer_on_a_large_cluster(kernel: FakeKernel,
                                                       tmp_path: Path) -> None:
    """At 5,000 nodes and 20 counter writes a second for them all, one agent writes its
    counters every 250 s, not every 60 s; news still goes at once."""
    api = RecordingApi()
    agent = agent_with(api, tmp_path)
    agent.nodes_seen = 5000
    spec = {"ksm": {"enabled": True}}
    kernel.merge(shared=5, sharing=10)  # merging already saves: its growth is not news
    assert agent.counter_interval() == 250.0

    async def scenario() -> None:
        await agent.publish(node_status(cycle(kernel, tmp_path, spec), now=NOW), "node-uid")
        kernel.merge(shared=10, sharing=40)
        agent.last_write -= 61  # the status interval passed, the stretched one has not
        assert not await agent.publish(node_status(cycle(kernel, tmp_path, spec),
                                                   previous=agent.last_status, now=NOW), "node-uid")
        agent.last_write -= 190  # 251 s
        assert await agent.publish(node_status(cycle(kernel, tmp_path, spec),
                                               previous=agent.last_status, now=NOW), "node-uid")
        kernel.fail_always(f"{KSM}/sleep_millisecs", errno.EIO)  # news: at once
        assert await agent.publish(node_status(cycle(kernel, tmp_path, {
            "ksm": {"enabled": True, "sleepMillisecs": 7}}), previous=agent.last_status,
            now=NOW), "node-uid")

    asyncio.run(scenario())
    assert len(api.writes) == 3


def test_the_counter_interval_is_the_nodes_at_the_rate_never_under_the_status_interval() -> None:
    assert counter_interval(5000, 20.0, 60.0) == 250.0
    assert counter_interval(1000, 20.0, 60.0) == 60.0  # 50 s: the status interval holds
    assert counter_interval(None, 20.0, 60.0) == 60.0  # no count known yet
    assert counter_interval(5000, 0.0, 60.0) == 60.0  # the budget turned off


def test_policy_news_is_a_change_of_the_policy_in_force_or_its_generation() -> None:
    first = NodeStateStatus(policy=PolicyRef("p", "u", 1))
    assert not policy_news(first, None)  # the first report: nothing to spread
    assert not policy_news(replace(first, guest_count=3), first)
    assert policy_news(replace(first, policy=PolicyRef("p", "u", 2)), first)
    assert policy_news(replace(first, policy=PolicyRef("q", "v", 1)), first)
    assert policy_news(replace(first, policy=None), first)  # the policy went: restored


def test_the_spread_window_is_the_nodes_at_the_write_rate_capped() -> None:
    assert policy_news_window(5000, 250.0, 30.0) == 20.0
    assert policy_news_window(3, 250.0, 30.0) == pytest.approx(0.012)
    assert policy_news_window(50_000, 250.0, 30.0) == 30.0  # never more than the cap
    assert policy_news_window(5000, 0.01, 30.0) == 30.0
    assert policy_news_window(None, 250.0, 30.0) == 0.0  # no count known yet
    assert policy_news_window(0, 250.0, 30.0) == 0.0
    assert policy_news_window(5000, 0.0, 30.0) == 0.0  # the spread turned off


def test_each_agent_s_delay_is_a_uniform_moment_of_the_window() -> None:
    assert policy_news_delay(5000, 250.0, 30.0, lambda: 0.0) == 0.0
    assert policy_news_delay(5000, 250.0, 30.0, lambda: 0.5) == 10.0
    assert policy_news_delay(None, 250.0, 30.0, lambda: 0.9) == 0.0


def policy_body(name: str, generation: int, matched: int | None) -> dict[str, Any]:
    status = {} if matched is None else {"nodes": {"matched": matched}}
    return {"metadata": {"name": name, "generation": generation}, "status": status}


def counted_agent(api: RecordingApi, tmp_path: Path, matched: int | None,
                  rate: float = 250.0) -> Agent:
    """An agent whose policies' statuses count ``matched`` nodes, read as every cycle does."""
    agent = agent_with(api, tmp_path)
    agent.settings = replace(agent.settings, policy_change_writes_per_second=rate)
    agent.policy_index = {"p": [policy_body("p", 2, matched)]}
    agent._policies()
    return agent


def report_and_change(kernel: FakeKernel, tmp_path: Path,
                      generation: int = 2) -> tuple[NodeStateStatus, NodeStateStatus]:
    """A first report, and the same with the policy at ``generation``."""
    status = node_status(cycle(kernel, tmp_path, {"ksm": {"enabled": True}}), now=NOW)
    assert status.policy is not None and status.policy.generation != generation
    return status, replace(status, policy=replace(status.policy, generation=generation))


def test_the_largest_node_count_of_any_policy_status() -> None:
    bodies = [policy_body("canary", 1, 50), policy_body("all", 3, 5000),
              policy_body("new", 1, None), {"status": {"nodes": {"matched": "many"}}}]
    assert largest_node_count(bodies) == 5000  # a broken status is ignored, not fatal
    assert largest_node_count([policy_body("new", 1, None)]) is None
    assert largest_node_count([]) is None


def test_a_policy_change_is_written_within_its_spread(kernel: FakeKernel,
                                                      tmp_path: Path) -> None:
    api = RecordingApi()
    agent = counted_agent(api, tmp_path, matched=5000)
    status, changed = report_and_change(kernel, tmp_path)
    again = report_and_change(kernel, tmp_path, generation=3)[1]

    async def scenario() -> None:
        assert await agent.publish(status, "node-uid")  # the first report: at once
        assert agent.held_seconds == 0.0
        # generation 2 reaches all 5,000 nodes at once: held within 5000/250 = 20 s
        assert not await agent.publish(changed, "node-uid")
        held = agent.held_seconds
        assert 0.0 < held <= 20.0
        # a later cycle, even one with a newer generation, keeps the moment: no new draw
        assert not await agent.publish(again, "node-uid")
        assert 0.0 < agent.held_seconds <= held
        # the moment comes: written, and nothing is held any more
        assert agent.policy_news_due is not None
        agent.policy_news_due -= held
        assert await agent.publish(again, "node-uid")
        assert agent.held_seconds == 0.0 and agent.policy_news_due is None

    asyncio.run(scenario())
    assert [w["policy"]["generation"] for w in api.writes] == [to_json(status)["policy"][
        "generation"], 3]


def test_a_change_undone_during_its_hold_leaves_no_stale_moment(kernel: FakeKernel,
                                                                tmp_path: Path) -> None:
    api = RecordingApi()
    agent = counted_agent(api, tmp_path, matched=5000)
    status, changed = report_and_change(kernel, tmp_path)

    async def scenario() -> None:
        assert await agent.publish(status, "node-uid")
        assert not await agent.publish(changed, "node-uid")  # held
        assert not await agent.publish(status, "node-uid")  # undone: nothing to write
        assert agent.policy_news_due is None
        assert not await agent.publish(changed, "node-uid")  # again: a new hold, a new draw
        assert agent.held_seconds > 0.0

    asyncio.run(scenario())
    assert len(api.writes) == 1


def test_the_count_is_remembered_when_the_policies_go(tmp_path: Path) -> None:
    agent = agent_with(RecordingApi(), tmp_path)
    agent.policy_index = {"p": [policy_body("p", 2, matched=5000)]}
    agent._policies()
    agent.policy_index = {}  # deleted: 5,000 nodes restore at once, the count still holds
    agent._policies()
    assert agent.nodes_seen == 5000
    agent.policy_index = {"q": [policy_body("q", 1, matched=800)]}
    agent._policies()  # the cluster's counts now say 800
    assert agent.nodes_seen == 800


def test_a_cycle_that_fails_during_a_hold_keeps_every_event_held_and_in_order(
        kernel: FakeKernel, tmp_path: Path) -> None:
    api = RecordingApi()
    agent = agent_with(api, tmp_path)
    first = cycle(kernel, tmp_path, {"ksm": {"enabled": True}})
    second = cycle(kernel, tmp_path, {"ksm": {"enabled": True, "sleepMillisecs": 7}})

    async def scenario() -> None:
        agent.policy_news_due = time.monotonic() + 12.0
        agent.queue_news(first)
        await agent._cycle_failed("api", "ApiError: HTTP 503: etcd is down")
        assert api.events == []  # the failure waits behind what is held, and with it
        agent.policy_news_due = None
        await agent.emit_events(second)

    asyncio.run(scenario())
    reasons = [reason for _, reason, _ in api.events]
    failed = reasons.index("CycleFailed")
    assert "PolicyInForce" in reasons[:failed] and "SettingsApplied" in reasons[:failed]
    assert "SettingsApplied" in reasons[failed:]  # the second cycle's change, after


def test_events_of_a_held_report_are_held_with_it_and_posted_in_order(
        kernel: FakeKernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stamps = iter(["2026-12-04T10:00:00Z", "2026-12-04T10:00:30Z"])
    monkeypatch.setattr("overcommit.agent.runner.now_rfc3339", lambda: next(stamps))
    api = RecordingApi()
    agent = agent_with(api, tmp_path)
    first = cycle(kernel, tmp_path, {"ksm": {"enabled": True}})
    second = cycle(kernel, tmp_path, {"ksm": {"enabled": True, "sleepMillisecs": 7}})

    async def scenario() -> None:
        agent.policy_news_due = time.monotonic() + 12.0  # publish held the report back
        await agent.emit_events(first)
        assert api.events == []
        agent.policy_news_due = None  # written: its Events go, then this cycle's
        await agent.emit_events(second)

    asyncio.run(scenario())
    messages = [message for _, _, message in api.events]
    # each stamped when it was meant, the held ones too
    held = len(api.bodies) - len([b for b in api.bodies
                                  if b["firstTimestamp"] == "2026-12-04T10:00:30Z"])
    assert held and [b["firstTimestamp"] for b in api.bodies[:held]] == \
        ["2026-12-04T10:00:00Z"] * held
    applied = [m for m in messages if "->" in m]  # SettingsApplied: each cycle's changes
    assert len(applied) == 2 and "sleep_millisecs" in applied[1]
    assert messages.index(applied[0]) < messages.index(applied[1])
    assert any("is in force" in m for m in messages[:messages.index(applied[1])])
    assert agent.held_news == []


@pytest.mark.parametrize(("matched", "rate"), [(None, 250.0), (5000, 0.0)])
def test_a_policy_change_is_written_at_once_without_a_count_or_a_rate(
        kernel: FakeKernel, tmp_path: Path, matched: int | None, rate: float) -> None:
    api = RecordingApi()
    agent = counted_agent(api, tmp_path, matched, rate)
    status, changed = report_and_change(kernel, tmp_path)

    async def scenario() -> None:
        assert await agent.publish(status, "node-uid")
        assert await agent.publish(changed, "node-uid")

    asyncio.run(scenario())
    assert len(api.writes) == 2


def test_events_are_posted_once_per_news(kernel: FakeKernel, tmp_path: Path) -> None:
    api = RecordingApi()
    agent = agent_with(api, tmp_path)
    kernel.fail_always(f"{KSM}/sleep_millisecs", errno.EIO)
    spec = {"ksm": {"enabled": True, "sleepMillisecs": 7}}

    async def scenario() -> None:
        await agent.emit_events(cycle(kernel, tmp_path, spec))
        await agent.emit_events(cycle(kernel, tmp_path, spec))

    asyncio.run(scenario())
    reasons = [reason for _, reason, _ in api.events]
    assert reasons.count("ApplyFailed") == 1
    assert reasons.count("SettingsApplied") == 1  # run=1 landed once; nothing new after


def test_the_first_saving_is_news_its_growth_is_not(kernel: FakeKernel, tmp_path: Path) -> None:
    """A node that starts saving says so at once (the demo, a dashboard); how much it saves
    then moves with the counters, at most once per status interval."""
    spec = {"ksm": {"enabled": True}}
    nothing = node_status(cycle(kernel, tmp_path, spec), now=NOW)
    kernel.merge(shared=10, sharing=40)
    first = node_status(cycle(kernel, tmp_path, spec), previous=nothing, now=NOW)
    assert should_write(first, nothing, since_write_s=1.0, status_interval_s=60.0)
    kernel.merge(shared=20, sharing=90)
    more = node_status(cycle(kernel, tmp_path, spec), previous=first, now=NOW)
    assert not should_write(more, first, since_write_s=1.0, status_interval_s=60.0)
    assert should_write(more, first, since_write_s=61.0, status_interval_s=60.0)


def test_the_capacity_evidence_clock_alone_is_no_reason_to_write() -> None:
    """A steady host: the window's observed time grows every cycle, nothing else moves."""
    import dataclasses

    from overcommit.agent.status import should_write
    from overcommit.api.status import CapacityEvidence, NodeCapacity, NodeStateStatus

    def status(observed: int, percent: int = 100) -> NodeStateStatus:
        return NodeStateStatus(capacity=NodeCapacity(
            supported_percent=percent, reason=f"p5 over {observed}s",
            evidence=CapacityEvidence(observed_seconds=observed, samples=observed // 60,
                                      since="2026-01-01T00:00:00Z")))

    first = status(60)
    assert not should_write(status(120), first, since_write_s=999, status_interval_s=60)
    assert should_write(status(120, 104), first, since_write_s=999, status_interval_s=60)
    assert first.capacity is not None
    settled = dataclasses.replace(first, capacity=dataclasses.replace(
        first.capacity, evidence=CapacityEvidence(settled=True)))
    assert should_write(settled, first, since_write_s=999, status_interval_s=60)


def test_ksmds_first_cpu_share_is_no_reason_to_write() -> None:
    from overcommit.agent.status import should_write
    from overcommit.api.status import Ksmd, NodeStateStatus

    assert not should_write(NodeStateStatus(ksmd=Ksmd(cpu_percent="0.00")), NodeStateStatus(),
                            since_write_s=999, status_interval_s=60)
    assert not should_write(NodeStateStatus(ksmd=Ksmd("3.10", 20)),
                            NodeStateStatus(ksmd=Ksmd("0.40", 20)), 999, 60)
    assert should_write(NodeStateStatus(ksmd=Ksmd("3.10", 30)),
                        NodeStateStatus(ksmd=Ksmd("0.40", 20)), 999, 60)
