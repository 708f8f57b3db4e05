"""Events: every change and every error gets one; a steady state does not repeat them."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from overcommit.agent.events import EventMemory, cycle_news, failure_news
from overcommit.agent.runner import Agent, failure_kind
from overcommit.agent.settings import AgentSettings
from overcommit.api.model import PolicyError, policy_from_object
from overcommit.kube.client import ApiError
from overcommit.kube.events import EventIntent
from overcommit.reconcile.node import CycleResult, NodeReconciler
from testkit.cases import policy_document
from testkit.fakes.kernel import FakeKernel

KSM = "sys/kernel/mm/ksm"


class Engine:
    """One node's engine over a fake kernel; cycles with or without a policy."""

    def __init__(self, tmp_path: Path) -> None:
        self.kernel = FakeKernel(tmp_path / "host")
        self.engine = NodeReconciler(state_dir=tmp_path / "state", fs=self.kernel)

    def cycle(self, spec: dict[str, Any] | None, generation: int = 1) -> CycleResult:
        policies = []
        if spec is not None:
            doc = policy_document("gold", spec)
            doc["metadata"]["generation"] = generation
            policies.append(policy_from_object(doc))
        return self.engine.cycle(policies, {})


@pytest.fixture
def node(tmp_path: Path) -> Engine:
    return Engine(tmp_path)


def reasons(news: list[EventIntent]) -> list[str]:
    return [n.reason for n in news]


def test_a_steady_error_is_posted_once_then_recovery_then_again(node: Engine) -> None:
    memory = EventMemory()
    spec = {"ksm": {"enabled": True, "sleepMillisecs": 7}}
    node.kernel.fail_always(f"{KSM}/sleep_millisecs", errno.EIO)
    first = memory.to_post(cycle_news(node.cycle(spec)))
    assert reasons(first) == ["LadderStarted", "SettingsApplied", "PolicyInForce",
                              "ApplyFailed"]
    assert first[-1].type == "Warning" and "EIO" in first[-1].message
    for _ in range(3):
        assert memory.to_post(cycle_news(node.cycle(spec))) == []
    node.kernel.clear_failures()
    healed = memory.to_post(cycle_news(node.cycle(spec)))
    assert reasons(healed) == ["SettingsApplied", "Recovered"]
    assert memory.to_post(cycle_news(node.cycle(spec))) == []
    node.kernel.fail_always(f"{KSM}/sleep_millisecs", errno.EIO)
    assert reasons(memory.to_post(cycle_news(node.cycle(
        {"ksm": {"enabled": True, "sleepMillisecs": 9}})))) == ["ApplyFailed"]


def test_every_ladder_move_is_posted_worsening_to_hard_as_a_warning(node: Engine) -> None:
    memory = EventMemory()
    spec = {"ksm": {"enabled": True}, "ladder": {"minimumAvailable": "1Gi"}}

    def at(gib: float) -> list[EventIntent]:
        node.kernel.set_memory(int(gib * (1 << 20)))
        return [n for n in memory.to_post(cycle_news(node.cycle(spec)))
                if n.reason.startswith("Ladder") or n.reason in ("ReliefWanted", "Recovered")]

    started = at(6)
    assert [(n.type, n.reason) for n in started] == [("Normal", "LadderStarted")]
    assert started[0].message.startswith("the node is in Clear: MemAvailable 6.0Gi < 8.0Gi")
    assert at(6) == []  # a steady state says nothing
    soft = at(3)
    assert [(n.type, n.reason) for n in soft] == [("Normal", "LadderWorsened")]
    assert soft[0].message.startswith("Clear -> Soft: MemAvailable 3.0Gi < 4.0Gi")
    hard = at(1.5)
    assert [(n.type, n.reason) for n in hard] == [("Warning", "LadderWorsened")]
    critical = at(0.5)
    assert [(n.type, n.reason) for n in critical] == [("Warning", "LadderWorsened"),
                                                      ("Warning", "ReliefWanted")]
    assert at(0.6) == []  # relief is a fact: posted once while it holds
    better = at(3)
    assert [(n.type, n.reason) for n in better] == [("Normal", "LadderImproved"),
                                                    ("Normal", "Recovered")]
    assert better[0].message.startswith("Critical -> Soft: left Critical: MemAvailable 3.0Gi")


def test_every_change_is_posted_even_when_it_repeats(node: Engine) -> None:
    memory = EventMemory()
    spec = {"ksm": {"enabled": True, "pagesToScan": 500}}
    memory.to_post(cycle_news(node.cycle(spec)))
    node.kernel.set(f"{KSM}/pages_to_scan", "100")  # someone else puts it back
    again = memory.to_post(cycle_news(node.cycle(spec)))
    node.kernel.set(f"{KSM}/pages_to_scan", "100")
    third = memory.to_post(cycle_news(node.cycle(spec)))
    assert reasons(again) == reasons(third) == ["SettingsApplied"]
    assert again[0].message == third[0].message == "policy gold: pages_to_scan 100->500"


def test_policy_changes_and_release_are_posted(node: Engine) -> None:
    memory = EventMemory()
    spec = {"ksm": {"enabled": True}}
    memory.to_post(cycle_news(node.cycle(spec, generation=1)))
    same = memory.to_post(cycle_news(node.cycle(spec, generation=1)))
    newer = memory.to_post(cycle_news(node.cycle(spec, generation=2)))
    released = memory.to_post(cycle_news(node.cycle(None)))
    assert same == []
    assert [(n.reason, n.message) for n in newer] == [
        ("PolicyInForce", "policy gold generation 2 is in force")]
    assert reasons(released) == ["OriginalsRestored", "NoPolicy"]


def test_a_dry_run_posts_its_planned_changes_once(node: Engine) -> None:
    memory = EventMemory()
    spec = {"dryRun": True, "ksm": {"enabled": True, "pagesToScan": 700}}
    first = memory.to_post(cycle_news(node.cycle(spec)))
    assert reasons(first) == ["LadderStarted", "DryRunPlanned", "PolicyInForce"]
    assert "dry run, nothing written" in first[1].message
    assert memory.to_post(cycle_news(node.cycle(spec))) == []


def test_invalid_policies_are_a_warning(node: Engine) -> None:
    memory = EventMemory()
    bad = PolicyError("cluster (MemoryOvercommitPolicy x)", ["spec.ksm.pagesToScan: too big"])
    news = memory.to_post(cycle_news(node.cycle(None), [bad]))
    assert ("Warning", "InvalidPolicy") in [(n.type, n.reason) for n in news]
    assert "pagesToScan" in next(n.message for n in news if n.reason == "InvalidPolicy")


def test_a_failed_cycle_is_posted_once_and_keeps_what_was_posted(node: Engine) -> None:
    memory = EventMemory()
    memory.to_post(cycle_news(node.cycle({"ksm": {"enabled": True}})))
    failed = memory.to_post([failure_news("ApiError: HTTP 500")], whole_picture=False)
    assert [(n.type, n.reason) for n in failed] == [("Warning", "CycleFailed")]
    assert memory.to_post([failure_news("ApiError: HTTP 500")], whole_picture=False) == []
    # the next good cycle: the policy was already posted; the failure went away
    assert reasons(memory.to_post(cycle_news(node.cycle({"ksm": {"enabled": True}})))) == \
        ["Recovered"]


class FailingApi:
    """Posts Events; every status write fails as the API server would."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.fail = True

    async def get_node_state(self, name: str) -> dict[str, Any]:
        return {"metadata": {"uid": "u1"}, "status": {}}

    async def replace_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        if self.fail:
            raise ApiError(503, '{"message": "etcd is down"}', "PATCH status")
        return {"status": status}

    async def create_event(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.events.append((body["type"], body["reason"], body["message"]))
        return body


def agent_on(api: FailingApi, tmp_path: Path) -> Agent:
    """An agent for node n1 (no policies) on a fake host, talking to ``api``."""
    FakeKernel(tmp_path / "host")
    agent = Agent(AgentSettings(node_name="n1", host_root=str(tmp_path / "host"),
                                state_dir=str(tmp_path / "state"), manage_guests=False))
    agent.api = api  # type: ignore[assignment]
    agent.node_index = {"n1": [{"uid": "n-uid", "labels": {}, "annotations": {}}]}
    agent.policy_index = {}
    return agent


def test_a_cycle_failing_on_the_api_is_counted_and_posted_once(tmp_path: Path) -> None:
    api = FailingApi()
    agent = agent_on(api, tmp_path)

    async def two_cycles() -> None:
        await agent.reconcile_safely()
        await agent.reconcile_safely()

    asyncio.run(two_cycles())
    failed = [e for e in api.events if e[1] == "CycleFailed"]
    assert len(failed) == 1 and "etcd is down" in failed[0][2]
    assert agent.metrics.registry.get_sample_value("overcommit_agent_errors_total",
                                                   {"kind": "api"}) == 2
    # the host half ran: its snapshot is served although the write failed
    assert any(s.name == "overcommit_condition" for s in agent.metrics.node.samples)


@pytest.mark.parametrize(("exc", "kind"), [
    (ApiError(500, "{}", "x"), "api"), (TimeoutError(), "api"),
    (aiohttp.ClientConnectionError(), "api"), (PermissionError(13, "denied"), "host"),
    (KeyError("bug"), "internal")])
def test_failures_are_classified(exc: BaseException, kind: str) -> None:
    assert failure_kind(exc) == kind


class BrokenApi(FailingApi):
    """The API is gone altogether: status writes and Events fail."""

    async def create_event(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        raise aiohttp.ServerDisconnectedError()


def test_retries_back_off_while_cycles_fail_and_start_over_after_one_works(
        tmp_path: Path) -> None:
    api = FailingApi()
    agent = agent_on(api, tmp_path)
    ceiling = agent.settings.retry_seconds

    async def cycles(n: int) -> list[float]:
        return [await agent.reconcile_safely() for _ in range(n)]

    delays = asyncio.run(cycles(4))
    assert agent.failures == 4
    for delay in delays:  # each within its growing ceiling, never at once
        assert agent.settings.retry_seconds / 2 <= delay <= ceiling
        ceiling = min(2 * ceiling, agent.settings.interval_seconds)
    api.fail = False
    assert asyncio.run(agent.reconcile_safely()) > 0
    assert agent.failures == 0


def test_a_failing_event_post_does_not_escape_a_failed_cycle(tmp_path: Path) -> None:
    agent = agent_on(BrokenApi(), tmp_path)
    assert asyncio.run(agent.reconcile_safely()) > 0  # a retry delay, not an exception
    assert agent.metrics.registry.get_sample_value("overcommit_agent_events_total",
                                                   {"type": "Warning",
                                                    "reason": "CycleFailed"}) is None


class ThrottledApi(FailingApi):
    """Status writes work; the first ``throttled`` Event posts meet a 429."""

    def __init__(self, throttled: int) -> None:
        super().__init__()
        self.fail = False
        self.throttled = throttled

    async def create_event(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.throttled:
            self.throttled -= 1
            raise ApiError(429, '{"message": "too many requests"}', "POST")
        return await super().create_event(namespace, body)


def test_events_throttled_at_one_cycle_are_posted_at_the_next_in_order(
        tmp_path: Path) -> None:
    api = ThrottledApi(throttled=1)
    agent = agent_on(api, tmp_path)
    pending = "overcommit_agent_events_pending"
    asyncio.run(agent.reconcile_safely())
    meant = [body["reason"] for body in agent.outbox.pending]
    assert api.events == [] and "NoPolicy" in meant  # one failed post, nothing lost
    assert agent.metrics.registry.get_sample_value(pending) == len(meant)
    assert agent.failures == 0  # an Event is not the cycle: its report was written
    asyncio.run(agent.reconcile_safely())
    assert [reason for _, reason, _ in api.events] == meant  # once each, in order
    assert agent.metrics.registry.get_sample_value(pending) == 0
    assert agent.metrics.registry.get_sample_value(
        "overcommit_agent_events_total", {"type": "Normal", "reason": "NoPolicy"}) == 1


def test_a_change_made_in_a_cycle_whose_report_failed_still_gets_its_event(
        tmp_path: Path) -> None:
    api = FailingApi()  # status writes fail, Events go through
    agent = agent_on(api, tmp_path)
    doc = policy_document("p", {"nodeSelector": {}, "ksm": {"enabled": True,
                                                            "pagesToScan": 555}})
    doc["metadata"].update(uid="uid-p", generation=1)
    agent.policy_index = {"p": [doc]}
    asyncio.run(agent.reconcile_safely())
    assert (tmp_path / "host/sys/kernel/mm/ksm/pages_to_scan").read_text() == "555"
    # the changes first (the ladder's start is one), then the failure; the policy in force,
    # a fact, waits for a cycle that completes
    assert [reason for _, reason, _ in api.events] == ["LadderStarted", "SettingsApplied",
                                                      "CycleFailed"]
    api.fail = False
    asyncio.run(agent.reconcile_safely())
    reasons = [reason for _, reason, _ in api.events]
    assert reasons.count("SettingsApplied") == 1 and "PolicyInForce" in reasons
