"""Whether the agent watches KubeVirt's VMIs: decided once at start, from discovery and a
SelfSubjectAccessReview, before kopf is given its handlers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from overcommit.agent.runner import Agent, _vmis_watchable
from overcommit.agent.settings import AgentSettings


class Answers:
    """A stand-in for KubeApi's two questions."""

    def __init__(self, served: bool | None, allowed: dict[str, bool | None]) -> None:
        self.served, self.allowed = served, allowed
        self.asked: list[str] = []

    async def serves(self, group: str, version: str, plural: str) -> bool | None:
        assert (group, version, plural) == ("kubevirt.io", "v1", "virtualmachineinstances")
        return self.served

    async def may(self, verb: str, group: str, resource: str) -> bool | None:
        self.asked.append(verb)
        return self.allowed[verb]


@pytest.mark.parametrize(("served", "allowed", "watch", "asked"), [
    (True, {"list": True, "watch": True}, True, ["list", "watch"]),
    (False, {}, False, []),                                    # no KubeVirt: no review
    (True, {"list": False, "watch": True}, False, ["list"]),   # the libvirt overlay's RBAC
    (True, {"list": True, "watch": False}, False, ["list", "watch"]),
    (None, {"list": None, "watch": None}, True, ["list", "watch"]),  # API down: let kopf try
])
def test_vmis_are_watched_only_where_served_and_allowed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, served: bool | None,
        allowed: dict[str, bool | None], watch: bool, asked: list[str]) -> None:
    agent = Agent(AgentSettings(node_name="n1", host_root=str(tmp_path),
                                state_dir=str(tmp_path / "state"), manage_guests=False))
    answers = Answers(served, allowed)
    agent.api = answers  # type: ignore[assignment]
    with caplog.at_level("INFO", logger="overcommit.agent"):
        assert asyncio.run(_vmis_watchable(agent)) is watch
    assert answers.asked == asked
    said = [r.getMessage() for r in caplog.records if "VirtualMachineInstances" in r.getMessage()]
    assert len(said) == (0 if watch else 1), said


def test_the_registry_holds_the_vmi_index_only_when_asked_to(tmp_path: Path) -> None:
    agent = Agent(AgentSettings(node_name="n1", host_root=str(tmp_path),
                                state_dir=str(tmp_path / "state"), manage_guests=False))

    def plurals(watch: bool) -> set[str]:
        selectors = agent.registry(watch_vmis=watch)._indexing.get_all_selectors()
        return {str(s.any_name) for s in selectors}

    assert "virtualmachineinstances" in plurals(True)
    assert "virtualmachineinstances" not in plurals(False)
    assert {"memoryovercommitpolicies", "nodes"} <= plurals(False)
