"""N simulated node agents in one process: each a coroutine with its OWN identity (a pod-bound
service-account token of the shipped ``overcommit-agent`` account, bound to a pod on its kwok
node), its own connections, its own policy watch; it cycles like the real agent and writes only
when its report changed (the real agent's gate, ``should_write``).

Writes go through the product's own Kubernetes I/O layer (``overcommit.agent.api.AgentApi``, a
``KubeClient``): the node state is created with ``create_node_state`` and its status replaced
with ``replace_status``, exactly the calls the real agent makes, under the shipped RBAC and
ValidatingAdmissionPolicy. The naive baselines use the same client for their requests:

- ``naive``: the agent puts its entry into the shared policy's status the client-go way: GET,
  modify, PUT with the resourceVersion, and on 409 Conflict back off and start over.
- ``naive_merge``: one JSON merge patch that sets its own entry: no resourceVersion, no
  conflicts (the API server still rewrites the whole object, and every watcher gets it).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from bench.scale_kube import AgentWatches, ApiError, Tally, count_watch
from bench.scale_model import (
    NAIVE,
    NODE_STATES,
    PER_NODE,
    NodeView,
    conflict_backoff_s,
    naive_entry,
    naive_merge_patch,
    node_status,
    policy_collection,
    with_naive_entry,
)
from overcommit.agent.api import AgentApi
from overcommit.agent.runner import COMPONENT, node_state_ref
from overcommit.agent.settings import AgentSettings
from overcommit.agent.status import counter_interval, policy_news_delay, should_write
from overcommit.api.schema import to_json
from overcommit.api.status import NodeStateStatus
from overcommit.kube.backoff import retry_delay
from overcommit.kube.client import ApiError as ProductApiError
from overcommit.kube.events import NORMAL, EventIntent
from overcommit.kube.outbox import EventOutbox

JSON = dict[str, Any]
# What a write can fail with: an error answer (e.g. 429 from API Priority and Fairness, 504 when
# the API server gave up on the request), a dropped connection, or a request timeout.
FAILURES = (ApiError, ProductApiError, aiohttp.ClientError, OSError, TimeoutError)
RETRY_S = AgentSettings("-").retry_seconds  # the shipped agent's
EVENT_NAMESPACE = AgentSettings("-").event_namespace


@dataclass
class Writes:
    """Write requests the agents sent (attempts include the ones that conflicted)."""

    attempts: int = 0
    conflicts: int = 0
    failed: int = 0  # answered with another error (429, 5xx) or none at all
    done: int = 0
    event_posts: int = 0  # the Events a policy change makes each agent post (core v1)
    event_posts_failed: int = 0  # posts that failed for now: kept, tried again as the agent
    events_dropped: int = 0  # given up on (refused, or the outbox overflowed)

    def copy(self) -> Writes:
        return replace(self)


def token_login(server: str, ca_path: Path, token: str) -> Callable[[], Any]:
    """What ``make_login`` gives the real agent in its pod: the server, the cluster's CA and
    the pod's projected service-account token (here: handed over, not read from a file)."""
    async def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server, ca_path=str(ca_path), token=token,
                                   scheme="Bearer")
    return login


@dataclass
class Agent:
    view: NodeView
    token: str
    api: AgentApi
    last_status: NodeStateStatus | None = None
    last_write: float = 0.0
    tally: Tally = field(default_factory=Tally)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    reacting: bool = False
    outbox: EventOutbox | None = None  # the agent's own (Fleet sets it up)


def events_of(agent: Agent) -> Callable[[str, JSON], Awaitable[JSON]]:
    """Posts an Event as ``agent`` (its client looked up at each post, as tests replace it)."""
    async def post(namespace: str, body: JSON) -> JSON:
        return await agent.api.create_event(namespace, body)
    return post


@dataclass
class Timing:
    """The agent's --interval (one cycle each), --status-interval (counter-only changes are
    written at most this often), --counter-write-rate (which stretches that interval to
    nodes / rate; 0: not stretched) and --policy-change-rate (the spread of a policy change's
    writes; 0: none)."""

    interval_s: float
    status_interval_s: float
    policy_change_rate: float = AgentSettings("-").policy_change_writes_per_second
    counter_rate: float = AgentSettings("-").counter_writes_per_second


class Fleet:
    def __init__(self, watches: AgentWatches, design: str, policy: str, views: list[NodeView],
                 tokens: dict[str, str], ca_path: Path, timing: Timing, seed: int = 1) -> None:
        self.watches, self.design, self.policy, self.timing = watches, design, policy, timing
        self.agents = {v.node: Agent(v, tokens[v.node], AgentApi(
            token_login(watches.server, ca_path, tokens[v.node]))) for v in views}
        self.writes = Writes()
        for agent in self.agents.values():
            agent.outbox = EventOutbox(events_of(agent), component=COMPONENT,
                                       host=agent.view.node, on_posted=self._event_posted,
                                       on_dropped=self._event_dropped)
        self.churn = False  # counters move: every cycle observes new values
        self.generation = views[0].generation if views else 1  # the policy's, as last known
        self.rng = random.Random(seed)
        self.reactions: set[asyncio.Task[None]] = set()

    @property
    def policy_path(self) -> str:
        return f"{policy_collection(self.design)}/{self.policy}"

    # -- set-up ----------------------------------------------------------------------------
    async def create_node_state(self, node: str, node_uid: str) -> None:
        """The agent's first cycle (per_node_state): create its node state (owned by its Node)
        and write the status, as itself: the admission policy checks the token's node."""
        agent = self.agents[node]
        await agent.api.create_node_state(node, node_uid)
        status = node_status(agent.view, self.policy)
        await agent.api.replace_status(node, to_json(status))
        agent.last_status, agent.last_write = status, time.monotonic()

    # -- watches and cycles ----------------------------------------------------------------
    async def start(self, resource_version: Callable[[], str]) -> None:
        """Open every agent's policy watch (waiting until all are established), then start
        every agent's cycle loop, staggered over one interval as a DaemonSet's agents are."""
        collection = policy_collection(self.design)
        ready = [asyncio.Event() for _ in self.agents]
        for agent, event in zip(self.agents.values(), ready, strict=True):
            agent.tasks.append(asyncio.create_task(count_watch(
                self.watches, agent.token, collection, resource_version, agent.tally, event,
                on_event=lambda agent=agent: self._on_policy_event(agent))))  # type: ignore[misc]
        for event in ready:
            await event.wait()
        for agent in self.agents.values():
            offset = self.rng.uniform(0, self.timing.interval_s)
            agent.tasks.append(asyncio.create_task(self._loop(agent, offset)))

    async def stop(self) -> None:
        # Reactions first: one still running would meet its agent's closed session.
        for task in self.reactions:
            task.cancel()
        await asyncio.gather(*self.reactions, return_exceptions=True)
        # All at once: closing a session waits for its TLS connections' shutdown, which an
        # overloaded API server can stretch to seconds each; 5,000 in turn took hours.
        await asyncio.gather(*(self._stop_agent(agent) for agent in self.agents.values()),
                             return_exceptions=True)
        for task in self.reactions:  # one a policy event started while the agents stopped
            task.cancel()
        await asyncio.gather(*self.reactions, return_exceptions=True)

    async def _stop_agent(self, agent: Agent) -> None:
        for task in agent.tasks:
            task.cancel()
        await asyncio.gather(*agent.tasks, return_exceptions=True)
        agent.tasks.clear()
        await agent.api.close()

    async def remove(self, nodes: list[str]) -> None:
        """These nodes vanished: their agents stop (the pod went with the node)."""
        gone = [self.agents.pop(node) for node in nodes]
        for task in list(self.reactions):
            if task.get_name() in nodes:
                task.cancel()
        await asyncio.gather(*(self._stop_agent(agent) for agent in gone))

    def start_churn(self) -> None:
        """From now on counters move. Each agent's next write falls due at one of its next
        cycles, picked at random, so writes arrive evenly from the start, as on a cluster that
        has been busy for a while (a counter-only write comes every status interval, at the
        first cycle after it)."""
        now, every = time.monotonic(), self.counter_interval_s()
        cycles = max(1, math.ceil(every / self.timing.interval_s))
        for agent in self.agents.values():
            due_in = self.timing.interval_s * self.rng.randrange(cycles)
            agent.last_write = now - every + due_in
        self.churn = True

    def counter_interval_s(self) -> float:
        """The real agent's least seconds between counter-only writes (Agent.counter_interval);
        one policy matches every node, so the fleet's size is the count it would see."""
        return counter_interval(len(self.agents), self.timing.counter_rate,
                                self.timing.status_interval_s)

    def stop_churn(self) -> None:
        self.churn = False

    def _on_policy_event(self, agent: Agent) -> None:
        """The real agent reconciles at once when its policy changes (a new generation): the
        burst. Other events (the controller's status writes) change nothing on the node."""
        if agent.view.generation < self.generation and not agent.reacting:
            agent.reacting = True
            task = asyncio.create_task(self._react(agent), name=agent.view.node)
            self.reactions.add(task)
            task.add_done_callback(self.reactions.discard)

    async def _react(self, agent: Agent) -> None:
        try:
            # A vanished node's agent stops reacting (its client is closed).
            failures = 0
            if self.design == PER_NODE:
                # The real agent holds its report of a policy change back a random moment of
                # a window scaled to the nodes the policy matches (Agent._hold_policy_news);
                # the naive designs are the baselines without it.
                # One policy matches every node: its count is the fleet's.
                await asyncio.sleep(policy_news_delay(
                    len(self.agents), self.timing.policy_change_rate, self.timing.interval_s,
                    self.rng.random))
            while agent.view.generation < self.generation and \
                    self.agents.get(agent.view.node) is agent:
                try:
                    await self.cycle(agent, generation=self.generation)
                except FAILURES:
                    # The agent's retry after a failed cycle: its backoff, with its settings.
                    failures += 1
                    await asyncio.sleep(retry_delay(failures, RETRY_S, self.timing.interval_s))
            if self.agents.get(agent.view.node) is agent:
                await self._post_policy_events(agent)
        finally:
            agent.reacting = False

    async def _post_policy_events(self, agent: Agent) -> None:
        """The two Events the real agent posts with its report of a policy change
        (agent.events: SettingsApplied for what it changed, PolicyInForce for the new
        generation), after the report, through the agent's own outbox: what fails is tried
        again at the next cycle, as there."""
        assert agent.outbox is not None
        agent.outbox.add(EVENT_NAMESPACE, node_state_ref(agent.view.node, ""),
                         self._policy_events())
        await self._flush(agent)

    def _policy_events(self) -> list[EventIntent]:
        return [
            EventIntent(NORMAL, "SettingsApplied", f"policy {self.policy}: pages_to_scan "
                        f"{999 + self.generation}->{1000 + self.generation}", change=True),
            EventIntent(NORMAL, "PolicyInForce", f"policy {self.policy} generation "
                        f"{self.generation} is in force")]

    async def _flush(self, agent: Agent) -> None:
        if agent.outbox is None or not agent.outbox.pending:
            return
        failed = agent.outbox.failed_attempts
        await agent.outbox.flush()
        self.writes.event_posts_failed += agent.outbox.failed_attempts - failed

    def _event_posted(self, event_type: str, reason: str) -> None:
        self.writes.event_posts += 1

    def _event_dropped(self, event_type: str, reason: str, cause: str) -> None:
        self.writes.events_dropped += 1

    def events_outstanding(self) -> int:
        """Events not posted yet: waiting in an outbox, or still to come from an agent that
        is reacting to a policy change."""
        return sum(len(a.outbox.pending) if a.outbox else 0 for a in self.agents.values()) + \
            len(self._policy_events()) * sum(1 for a in self.agents.values() if a.reacting)

    async def _loop(self, agent: Agent, offset: float) -> None:
        await asyncio.sleep(offset)
        while True:
            # The real agent logs a failed cycle and tries again at its next one; while it
            # holds back the report of a policy change (_react) it writes nothing.
            with contextlib.suppress(*FAILURES):
                if not agent.reacting:
                    await self.cycle(agent)
            if not agent.reacting:  # Events still waiting go out with each cycle
                await self._flush(agent)
            await asyncio.sleep(self.timing.interval_s)

    async def cycle(self, agent: Agent, failed: bool | None = None,
                    generation: int | None = None) -> bool:
        """Observe, then write if the report changed; True when it wrote."""
        async with agent.lock:
            view = agent.view
            if self.churn:
                view = replace(view, tick=view.tick + 1)
            if failed is not None:
                view = replace(view, failed=failed)
            if generation is not None:
                view = replace(view, generation=max(view.generation, generation))
            status = node_status(view, self.policy)
            since = time.monotonic() - agent.last_write
            if not should_write(status, agent.last_status, since, self.counter_interval_s()):
                agent.view = view
                return False
            await self.write(agent, status)
            agent.view = view
            agent.last_status, agent.last_write = status, time.monotonic()
            return True

    # -- writes ----------------------------------------------------------------------------
    async def write(self, agent: Agent, status: NodeStateStatus) -> None:
        node = agent.view.node
        try:
            if self.design == PER_NODE:
                self.writes.attempts += 1
                await agent.api.replace_status(node, to_json(status))
                self.writes.done += 1
            elif self.design == NAIVE:
                await self._put_naive_entry(agent, naive_entry(status))
            else:
                self.writes.attempts += 1
                await agent.api.request("PATCH", f"{self.policy_path}/status",
                                        naive_merge_patch(node, naive_entry(status)),
                                        "application/merge-patch+json")
                self.writes.done += 1
        except FAILURES:
            self.writes.failed += 1
            raise

    async def _put_naive_entry(self, agent: Agent, entry: JSON) -> None:
        attempt = 0
        while True:
            current = await agent.api.get(self.policy_path)
            self.writes.attempts += 1
            try:
                await agent.api.request("PUT", f"{self.policy_path}/status",
                                        with_naive_entry(current, agent.view.node, entry))
            except ProductApiError as exc:
                if exc.status != 409:
                    raise
                self.writes.conflicts += 1
                await asyncio.sleep(conflict_backoff_s(attempt, self.rng))
                attempt += 1
                continue
            self.writes.done += 1
            return

    # -- figures ---------------------------------------------------------------------------
    def tallies(self) -> dict[str, Tally]:
        return {node: replace(agent.tally) for node, agent in self.agents.items()}


__all__ = ["FAILURES", "NODE_STATES", "Agent", "Fleet", "Timing", "Writes", "token_login"]
