"""What of KubeVirt the agent watches: its node's VMIs, and every migration (relief's
in-flight count). Decided once at start, from discovery and a SelfSubjectAccessReview per verb,
before kopf is given its handlers; asked again until answered, never guessed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from overcommit.agent import runner
from overcommit.agent.api import AgentApi
from overcommit.agent.runner import Agent, Watches, _kubevirt_watches
from overcommit.agent.settings import AgentSettings
from overcommit.kube.client import ApiError

Answer = bool | None
VMIS, MIGRATIONS = "virtualmachineinstances", "virtualmachineinstancemigrations"


class Answers:
    """A stand-in for AgentApi's two questions: each call takes the next scripted answer
    (``served`` per resource, ``allowed`` per verb) and is noted as "<question> <resource>"."""

    def __init__(self, served: dict[str, list[Answer]], allowed: dict[str, list[Answer]],
                 slow: float = 0.0) -> None:
        self.served, self.allowed, self.slow = served, allowed, slow
        self.asked: list[str] = []

    async def serves(self, group: str, version: str, plural: str) -> Answer:
        assert (group, version) == ("kubevirt.io", "v1")
        await asyncio.sleep(self.slow)
        self.asked.append(f"discovery {plural}")
        return self.served[plural].pop(0)

    async def may(self, verb: str, group: str, resource: str) -> Answer:
        self.asked.append(f"{verb} {resource}")
        return self.allowed[verb].pop(0)


def agent_with(tmp_path: Path, answers: Answers) -> Agent:
    agent = Agent(AgentSettings(node_name="n1", host_root=str(tmp_path),
                                state_dir=str(tmp_path / "state"), manage_guests=False))
    agent.api = answers  # type: ignore[assignment]
    return agent


def decide(agent: Agent, stop: asyncio.Event | None = None) -> Watches | None:
    return asyncio.run(_kubevirt_watches(agent, stop or asyncio.Event(), first_delay=0.01))


ALL_VMIS = [f"discovery {VMIS}", f"list {VMIS}", f"watch {VMIS}"]
ALL_MIGRATIONS = [f"discovery {MIGRATIONS}", f"list {MIGRATIONS}", f"watch {MIGRATIONS}",
                  f"create {MIGRATIONS}"]


@pytest.mark.parametrize(("served", "allowed", "watches", "asked"), [
    ({VMIS: [True], MIGRATIONS: [True]},
     {"list": [True, True], "watch": [True, True], "create": [True]},
     Watches(True, True), ALL_VMIS + ALL_MIGRATIONS),
    ({VMIS: [False]}, {}, Watches(False, False), [f"discovery {VMIS}"]),  # no KubeVirt
    # the libvirt overlay's RBAC: no VMIs, so no migrations either
    ({VMIS: [True]}, {"list": [False]}, Watches(False, False), ALL_VMIS[:2]),
    ({VMIS: [True]}, {"list": [True], "watch": [False]}, Watches(False, False), ALL_VMIS),
    # VMIs, but relief may not create migrations: watched VMIs, no migrations
    ({VMIS: [True], MIGRATIONS: [True]},
     {"list": [True, True], "watch": [True, True], "create": [False]},
     Watches(True, False), ALL_VMIS + ALL_MIGRATIONS),
    # unanswered: asked again (from the start), not guessed
    ({VMIS: [None, True], MIGRATIONS: [True]},
     {"list": [True, True], "watch": [True, True], "create": [True]},
     Watches(True, True), [f"discovery {VMIS}", *ALL_VMIS, *ALL_MIGRATIONS]),
    ({VMIS: [True, True], MIGRATIONS: [True, True]},
     {"list": [True, None, True, True], "watch": [True, True, True], "create": [False]},
     Watches(True, False), [*ALL_VMIS, *ALL_MIGRATIONS[:2], *ALL_VMIS, *ALL_MIGRATIONS]),
])
def test_kubevirt_is_watched_only_where_served_and_allowed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, served: dict[str, list[Answer]],
        allowed: dict[str, list[Answer]], watches: Watches, asked: list[str]) -> None:
    answers = Answers(served, allowed)
    agent = agent_with(tmp_path, answers)
    with caplog.at_level("INFO", logger="overcommit.agent"):
        assert decide(agent) == watches
    assert answers.asked == asked
    said = [r.getMessage() for r in caplog.records if "KubeVirt serves no" in r.getMessage()
            or "this agent may not" in r.getMessage()]
    assert len(said) == (0 if watches == Watches(True, True) else 1), said
    retries = [r for r in caplog.records if "cannot ask the API server" in r.getMessage()]
    assert len(retries) == asked.count(f"discovery {VMIS}") - 1
    # Relief without a count of the migrations in flight never asks for one, and says why.
    assert (agent.relief.blind is not None) == (watches == Watches(True, False))


def test_a_slow_api_server_is_asked_again(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "ASK_TIMEOUT_SECONDS", 0.05)
    answers = Answers({VMIS: [True, True, True, True], MIGRATIONS: [True] * 4},
                      {"list": [True] * 8, "watch": [True] * 8, "create": [True] * 4},
                      slow=0.2)
    agent = agent_with(tmp_path, answers)

    async def speed_up() -> Watches | None:
        task = asyncio.create_task(_kubevirt_watches(agent, asyncio.Event(), first_delay=0.01))
        await asyncio.sleep(0.3)
        answers.slow = 0.0  # the API server recovers
        return await task

    assert asyncio.run(speed_up()) == Watches(True, True)


def test_a_stop_while_unanswered_ends_the_asking(tmp_path: Path) -> None:
    stop = asyncio.Event()
    answers = Answers({VMIS: [None] * 1000}, {})
    agent = agent_with(tmp_path, answers)

    async def stop_soon() -> Watches | None:
        asyncio.get_running_loop().call_later(0.1, stop.set)
        return await _kubevirt_watches(agent, stop, first_delay=0.01)

    assert asyncio.run(stop_soon()) is None
    assert 1 <= answers.asked.count(f"discovery {VMIS}") < 20  # backing off, not spinning


def test_the_registry_holds_kubevirt_indexes_only_when_asked_to(tmp_path: Path) -> None:
    agent = agent_with(tmp_path, Answers({}, {}))

    def names(vmis: bool, migrations: bool) -> set[str]:
        registry = agent.registry(watch_vmis=vmis, watch_migrations=migrations)
        return {str(s.any_name) for s in registry._indexing.get_all_selectors()}

    assert {VMIS, MIGRATIONS} <= names(True, True)
    assert VMIS in names(True, False) and MIGRATIONS not in names(True, False)
    assert not {VMIS, MIGRATIONS} & names(False, False)
    assert {"memoryovercommitpolicies", "nodes"} <= names(False, False)


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
