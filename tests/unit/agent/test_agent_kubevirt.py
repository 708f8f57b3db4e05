"""Whether the agent watches KubeVirt's VMIs: decided once at start, from discovery and a
SelfSubjectAccessReview per verb, before kopf is given its handlers; asked again until
answered, never guessed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from overcommit.agent import runner
from overcommit.agent.api import AgentApi
from overcommit.agent.runner import Agent, _vmis_watchable
from overcommit.agent.settings import AgentSettings
from overcommit.kube.client import ApiError

Answer = bool | None


class Answers:
    """A stand-in for AgentApi's two questions: each call takes the next scripted answer."""

    def __init__(self, served: list[Answer], allowed: dict[str, list[Answer]],
                 slow: float = 0.0) -> None:
        self.served, self.allowed, self.slow = served, allowed, slow
        self.asked: list[str] = []

    async def serves(self, group: str, version: str, plural: str) -> Answer:
        assert (group, version, plural) == ("kubevirt.io", "v1", "virtualmachineinstances")
        await asyncio.sleep(self.slow)
        self.asked.append("discovery")
        return self.served.pop(0)

    async def may(self, verb: str, group: str, resource: str) -> Answer:
        self.asked.append(verb)
        return self.allowed[verb].pop(0)


def agent_with(tmp_path: Path, answers: Answers) -> Agent:
    agent = Agent(AgentSettings(node_name="n1", host_root=str(tmp_path),
                                state_dir=str(tmp_path / "state"), manage_guests=False))
    agent.api = answers  # type: ignore[assignment]
    return agent


def decide(agent: Agent, stop: asyncio.Event | None = None) -> Answer:
    return asyncio.run(_vmis_watchable(agent, stop or asyncio.Event(), first_delay=0.01))


@pytest.mark.parametrize(("served", "allowed", "watch", "asked"), [
    ([True], {"list": [True], "watch": [True]}, True, ["discovery", "list", "watch"]),
    ([False], {}, False, ["discovery"]),                            # no KubeVirt: no review
    ([True], {"list": [False]}, False, ["discovery", "list"]),      # the libvirt overlay's RBAC
    ([True], {"list": [True], "watch": [False]}, False, ["discovery", "list", "watch"]),
    # unanswered: asked again (from the start), not guessed
    ([None, True], {"list": [True], "watch": [True]}, True,
     ["discovery", "discovery", "list", "watch"]),
    ([True, True], {"list": [None, False]}, False, ["discovery", "list", "discovery", "list"]),
])
def test_vmis_are_watched_only_where_served_and_allowed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, served: list[Answer],
        allowed: dict[str, list[Answer]], watch: bool, asked: list[str]) -> None:
    answers = Answers(served, allowed)
    with caplog.at_level("INFO", logger="overcommit.agent"):
        assert decide(agent_with(tmp_path, answers)) is watch
    assert answers.asked == asked
    said = [r.getMessage() for r in caplog.records if "VirtualMachineInstances" in r.getMessage()]
    assert len(said) == (0 if watch else 1), said
    retries = [r for r in caplog.records if "cannot ask the API server" in r.getMessage()]
    assert len(retries) == asked.count("discovery") - 1


def test_a_slow_api_server_is_asked_again(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "ASK_TIMEOUT_SECONDS", 0.05)
    answers = Answers([True], {"list": [True], "watch": [True]}, slow=0.2)
    agent = agent_with(tmp_path, answers)

    async def speed_up() -> Answer:
        task = asyncio.create_task(_vmis_watchable(agent, asyncio.Event(), first_delay=0.01))
        await asyncio.sleep(0.3)
        answers.slow = 0.0  # the API server recovers
        return await task

    assert asyncio.run(speed_up()) is True


def test_a_stop_while_unanswered_ends_the_asking(tmp_path: Path) -> None:
    stop = asyncio.Event()
    answers = Answers([None] * 1000, {})
    agent = agent_with(tmp_path, answers)

    async def stop_soon() -> Answer:
        asyncio.get_running_loop().call_later(0.1, stop.set)
        return await _vmis_watchable(agent, stop, first_delay=0.01)

    assert asyncio.run(stop_soon()) is None
    assert 1 <= answers.asked.count("discovery") < 20  # backing off, not spinning


def test_the_registry_holds_the_vmi_index_only_when_asked_to(tmp_path: Path) -> None:
    agent = agent_with(tmp_path, Answers([], {}))

    def names(watch: bool) -> set[str]:
        selectors = agent.registry(watch_vmis=watch)._indexing.get_all_selectors()
        return {str(s.any_name) for s in selectors}

    assert "virtualmachineinstances" in names(True)
    assert "virtualmachineinstances" not in names(False)
    assert {"memoryovercommitpolicies", "nodes"} <= names(False)


class Scripted(AgentApi):
    """AgentApi with its one request scripted: a JSON answer, or an exception to raise."""

    def __init__(self, reply: dict[str, Any] | Exception) -> None:
        super().__init__(login=self._no_login)
        self.reply = reply

    @staticmethod
    async def _no_login() -> Any:
        raise AssertionError("no login in a scripted API")

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json",
                      accept: str = "application/json") -> dict[str, Any]:
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


@pytest.mark.parametrize(("reply", "answer"), [
    ({"resources": [{"name": "virtualmachineinstances"}]}, True),
    ({"resources": [{"name": "virtualmachines"}]}, False),
    (ApiError(404, "{}", "GET"), False),                 # the group is not there at all
    (ApiError(503, "{}", "GET"), None),
    (aiohttp.ClientConnectionError("refused"), None),
    (ValueError("not JSON"), None),
])
def test_discovery_answers(reply: dict[str, Any] | Exception, answer: Answer) -> None:
    assert asyncio.run(Scripted(reply).serves("kubevirt.io", "v1",
                                              "virtualmachineinstances")) is answer


@pytest.mark.parametrize(("reply", "answer"), [
    ({"status": {"allowed": True}}, True),
    ({"status": {"allowed": False}}, False),
    ({"status": {"allowed": False, "denied": True, "reason": "no"}}, False),
    # an authorizer that failed (a webhook down) is no answer, not a "no"
    ({"status": {"allowed": False, "evaluationError": "webhook timed out"}}, None),
    (ApiError(403, "{}", "POST"), None),
    (TimeoutError(), None),
])
def test_access_review_answers(reply: dict[str, Any] | Exception, answer: Answer) -> None:
    assert asyncio.run(Scripted(reply).may("list", "kubevirt.io",
                                           "virtualmachineinstances")) is answer
