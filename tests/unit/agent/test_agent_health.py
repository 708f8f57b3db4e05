"""The agent's probe verdicts (overcommit.agent.health), on a fake clock."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import pytest

from overcommit.agent.health import CycleHealth, serve_health
from overcommit.localcluster.ports import free_port


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_live_but_not_ready_before_the_first_cycle(clock: FakeClock) -> None:
    health = CycleHealth(clock=clock, stuck_after=60)
    clock.now += 3600  # an hour waiting for the API server is no reason to restart
    assert health.liveness_problem() is None
    assert health.readiness_problem() == "no cycle has completed yet"


def test_ready_once_a_cycle_returned_and_its_report_was_written(clock: FakeClock) -> None:
    health = CycleHealth(clock=clock, stuck_after=60)
    with health.cycle():
        clock.now += 2
    clock.now += 5
    # The host is done, but a Ready agent promises a node state to read: not yet.
    assert health.readiness_problem() == "no cycle's node state has been written yet"
    health.reported = True
    assert health.readiness_problem() is None
    assert health.report() == {"cyclesCompleted": 1, "reported": True,
                               "secondsSinceLastCycle": 5.0, "cycleRunningSeconds": None}


def test_a_failed_cycle_does_not_make_the_agent_ready(clock: FakeClock) -> None:
    health = CycleHealth(clock=clock, stuck_after=60)
    with pytest.raises(OSError), health.cycle():
        raise OSError("sysfs went away")
    assert health.completed == 0
    assert health.running_since is None
    assert health.readiness_problem() == "no cycle has completed yet"


def test_a_cycle_running_past_the_limit_fails_both_probes(clock: FakeClock) -> None:
    health = CycleHealth(clock=clock, stuck_after=60)
    with health.cycle():
        pass
    with health.cycle():
        clock.now += 60
        assert health.liveness_problem() is None  # at the limit: still a slow cycle
        clock.now += 1
        problem = health.liveness_problem()
        assert problem == "a cycle has been running for 61s (limit 60s)"
        assert health.readiness_problem() == problem
        assert health.report()["cycleRunningSeconds"] == 61.0
    assert health.liveness_problem() is None  # it returned after all


async def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, json.loads(await response.text())


def test_the_endpoints_answer_with_the_verdicts(clock: FakeClock) -> None:
    async def scenario() -> None:
        health = CycleHealth(clock=clock, stuck_after=60)
        port = free_port()
        runner = await serve_health(health, port, "127.0.0.1")
        assert runner is not None
        try:
            assert (await get(port, "/healthz"))[0] == 200
            status, body = await get(port, "/readyz")
            assert (status, body["problem"]) == (503, "no cycle has completed yet")
            with health.cycle():
                pass
            status, body = await get(port, "/readyz")
            assert (status, body["problem"]) == (503, "no cycle's node state has been written yet")
            health.reported = True
            status, body = await get(port, "/readyz")
            assert (status, body["ok"], body["cyclesCompleted"]) == (200, True, 1)
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_a_taken_port_turns_the_probes_off_instead_of_failing(
        clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            assert await serve_health(CycleHealth(clock=clock), port, "127.0.0.1") is None

    asyncio.run(scenario())
    assert "probes are off: cannot listen on port" in caplog.text


def test_port_zero_serves_nothing(clock: FakeClock) -> None:
    assert asyncio.run(serve_health(CycleHealth(clock=clock), 0)) is None
