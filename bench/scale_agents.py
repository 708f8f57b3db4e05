"""N simulated node agents in one process: each a coroutine that cycles like the real agent,
writes only when its report changed (the real agent's gate), and keeps a policy watch.

``per_node_state``: the agent replaces its own MemoryOvercommitNodeState's status (one JSON
patch, as ``KubeApi.replace_status`` does). ``naive``: the agent puts its entry into the shared
policy's status the client-go way: GET, modify, PUT with the resourceVersion, and on 409
Conflict back off and start over.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from bench.scale_kube import ApiError, Kube, Tally, count_watch
from bench.scale_model import (
    NAIVE_POLICIES,
    NODE_STATES,
    PER_NODE,
    POLICIES,
    NodeView,
    conflict_backoff_s,
    naive_entry,
    node_status,
    with_naive_entry,
)
from overcommit.agent.status import should_write
from overcommit.api.schema import to_json
from overcommit.api.status import NodeStateStatus

JSON = dict[str, Any]
# What a write can fail with: an error answer (e.g. 504 when the API server gave up on the
# request), a dropped connection, or our own request timeout.
FAILURES = (ApiError, aiohttp.ClientError, OSError, TimeoutError)


@dataclass
class Writes:
    """Write requests the agents sent (attempts include the ones that conflicted)."""

    attempts: int = 0
    conflicts: int = 0
    failed: int = 0  # answered with another error (e.g. 504: the API server timed out)
    done: int = 0

    def copy(self) -> Writes:
        return replace(self)


@dataclass
class Agent:
    view: NodeView
    last_status: NodeStateStatus | None = None
    last_write: float = 0.0
    tally: Tally = field(default_factory=Tally)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class Timing:
    """The agent's --interval (one cycle each) and --status-interval (counter-only changes are
    written at most this often)."""

    interval_s: float
    status_interval_s: float


class Fleet:
    def __init__(self, kube: Kube, design: str, policy: str, views: list[NodeView],
                 timing: Timing, seed: int = 1) -> None:
        self.kube, self.design, self.policy, self.timing = kube, design, policy, timing
        self.agents = {v.node: Agent(v) for v in views}
        self.writes = Writes()
        self.churn = False  # counters move: every cycle observes new values
        self.rng = random.Random(seed)
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def policy_path(self) -> str:
        collection = POLICIES if self.design == PER_NODE else NAIVE_POLICIES
        return f"{collection}/{self.policy}"

    # -- watches and cycles ----------------------------------------------------------------
    async def start(self, resource_version: Callable[[], str]) -> None:
        """Open every agent's policy watch (waiting until all are established), then start
        every agent's cycle loop, staggered over one interval as a DaemonSet's agents are."""
        collection = POLICIES if self.design == PER_NODE else NAIVE_POLICIES
        ready = [asyncio.Event() for _ in self.agents]
        for agent, event in zip(self.agents.values(), ready, strict=True):
            self.tasks.append(asyncio.create_task(
                count_watch(self.kube, collection, resource_version, agent.tally, event)))
        for event in ready:
            await event.wait()
        for agent in self.agents.values():
            offset = self.rng.uniform(0, self.timing.interval_s)
            self.tasks.append(asyncio.create_task(self._loop(agent, offset)))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    def start_churn(self) -> None:
        """From now on counters move. Each agent's next write falls due at one of its next
        cycles, picked at random, so writes arrive evenly from the start, as on a cluster that
        has been busy for a while (a counter-only write comes every status interval, at the
        first cycle after it)."""
        now = time.monotonic()
        cycles = max(1, math.ceil(self.timing.status_interval_s / self.timing.interval_s))
        for agent in self.agents.values():
            due_in = self.timing.interval_s * self.rng.randrange(cycles)
            agent.last_write = now - self.timing.status_interval_s + due_in
        self.churn = True

    async def _loop(self, agent: Agent, offset: float) -> None:
        await asyncio.sleep(offset)
        while True:
            # The real agent logs a failed cycle and tries again at its next one.
            with contextlib.suppress(*FAILURES):
                await self.cycle(agent)
            await asyncio.sleep(self.timing.interval_s)

    async def cycle(self, agent: Agent, failed: bool | None = None) -> bool:
        """Observe, then write if the report changed; True when it wrote."""
        async with agent.lock:
            view = agent.view
            if self.churn:
                view = replace(view, tick=view.tick + 1)
            if failed is not None:
                view = replace(view, failed=failed)
            agent.view = view
            status = node_status(view, self.policy)
            since = time.monotonic() - agent.last_write
            if not should_write(status, agent.last_status, since, self.timing.status_interval_s):
                return False
            await self.write(view.node, status)
            agent.last_status, agent.last_write = status, time.monotonic()
            return True

    # -- writes ----------------------------------------------------------------------------
    async def write(self, node: str, status: NodeStateStatus) -> None:
        try:
            if self.design == PER_NODE:
                await self._replace_node_status(node, to_json(status))
            else:
                await self._put_naive_entry(node, naive_entry(status))
        except FAILURES:
            self.writes.failed += 1
            raise

    async def _replace_node_status(self, node: str, status: JSON) -> None:
        self.writes.attempts += 1
        patch = [{"op": "add", "path": "/status", "value": status}]
        code, body = await self.kube.attempt("PATCH", f"{NODE_STATES}/{node}/status", patch,
                                             "application/json-patch+json")
        if code >= 400:
            raise ApiError(code, f"PATCH {NODE_STATES}/{node}/status", str(body))
        self.writes.done += 1

    async def _put_naive_entry(self, node: str, entry: JSON) -> None:
        attempt = 0
        while True:
            current = await self.kube.call("GET", self.policy_path)
            self.writes.attempts += 1
            code, body = await self.kube.attempt("PUT", f"{self.policy_path}/status",
                                                 with_naive_entry(current, node, entry))
            if code < 400:
                self.writes.done += 1
                return
            if code != 409:
                raise ApiError(code, f"PUT {self.policy_path}/status", str(body))
            self.writes.conflicts += 1
            await asyncio.sleep(conflict_backoff_s(attempt, self.rng))
            attempt += 1

    # -- figures ---------------------------------------------------------------------------
    def tallies(self) -> list[Tally]:
        return [replace(agent.tally) for agent in self.agents.values()]
