"""The per-node agent: kopf watches, the node reconciler's cycles, the node state reports.

kopf keeps three server-side-filtered watches alive (reconnecting through API-server restarts):
all policies, this agent's own Node, and this node's MemoryOvercommitNodeState. Policies and the
Node are kopf *indexes*, so kopf guarantees the first cycle sees the complete initial listing
(an agent that restarts never mistakes a not-yet-listed policy for a deleted one and restores).
Every watch event wakes one reconcile loop; a timer wakes it otherwise. The loop runs the same
``NodeReconciler.cycle`` as local mode in a worker thread, then writes the node state's status
(only when it changed, counter-only changes at most once per status interval) and Events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from overcommit.agent.api import AgentApi
from overcommit.agent.events import EventMemory, cycle_news, failure_news
from overcommit.agent.health import CycleHealth, serve_health
from overcommit.agent.relief import Relief, migration_summary
from overcommit.agent.settings import AgentSettings
from overcommit.agent.status import (
    counter_interval,
    largest_node_count,
    node_status,
    policy_news,
    policy_news_delay,
    policy_news_window,
    should_write,
    with_relief,
)
from overcommit.api.model import Policy, PolicyError, policy_from_object
from overcommit.api.policy import GROUP, NODE_STATE_KIND, VERSION
from overcommit.api.schema import plain, to_json
from overcommit.api.status import NodeStateStatus
from overcommit.kube.backoff import retry_delay
from overcommit.kube.client import ApiError, make_login
from overcommit.kube.clock import now_rfc3339
from overcommit.kube.events import EventIntent
from overcommit.kube.outbox import EventOutbox
from overcommit.observability.logs import context_logger
from overcommit.observability.metrics import (
    AgentMetrics,
    MetricsServer,
    serve_metrics,
)
from overcommit.planning.plan import cycle_interval
from overcommit.reconcile.guests import VirtSettings
from overcommit.reconcile.node import CycleResult, NodeReconciler

KUBEVIRT_KSM_ANNOTATION = "kubevirt.io/ksm-handler-managed"
COMPONENT = "memory-overcommit-agent"
ASK_TIMEOUT_SECONDS = 10.0  # the start-up questions about VMIs, all of them together
MAX_ASK_DELAY_SECONDS = 30.0


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        virt = VirtSettings(uris=settings.libvirt_uris, pods_dir=settings.kubevirt_pods_dir,
                            host_root=settings.host_root) if settings.manage_guests else None
        self.node = NodeReconciler(host_root=settings.host_root, state_dir=settings.state_dir,
                                 virt=virt)
        self.metrics = AgentMetrics(settings.node_name)
        self._login = make_login(settings.kubeconfig, fall_back_to_kubeconfig=False)
        self.api = AgentApi(self._login, on_write=self.metrics.api_write)
        self.log = context_logger("overcommit.agent", node=settings.node_name)
        self.wake = asyncio.Event()
        self.policy_index: Mapping[Any, Any] | None = None
        self.node_index: Mapping[Any, Any] | None = None
        self.vmi_index: Mapping[Any, Any] | None = None
        self.migration_index: Mapping[Any, Any] | None = None
        self.relief = Relief(settings.node_name, self.api)
        self.state_uid: str | None = None
        self.recreate_state = True
        self.last_status: NodeStateStatus | None = None
        self.last_write = 0.0
        # The report of a policy change is held back until then (monotonic; None: nothing
        # held), see AgentSettings.policy_change_writes_per_second; nodes_seen is the largest
        # node count of any policy's status seen so far (kept when the policies go).
        self.policy_news_due: float | None = None
        self.nodes_seen: int | None = None
        self.held_seconds = 0.0  # what the last publish held back, for the loop's next wake-up
        self.held_news: list[tuple[str, EventIntent]] = []  # Events held with it, stamped
        self.failures = 0  # failed cycles in a row: the retry backs off (overcommit.kube.backoff)
        self.events = EventMemory()
        self.outbox = EventOutbox(lambda namespace, body: self.api.create_event(namespace, body),
                                  component=COMPONENT,
                                  host=settings.node_name,
                                  on_posted=self.metrics.events.posted_one,
                                  on_dropped=self.metrics.events.dropped_one)
        self.metrics.events.count_pending(lambda: len(self.outbox.pending))
        self.health = CycleHealth()  # what the probes report

    # -- kopf wiring -----------------------------------------------------------------------
    def configure(self, settings: kopf.OperatorSettings) -> None:
        node = self.settings.node_name
        settings.peering.standalone = True
        settings.posting.enabled = False  # our own Events, on our own object
        settings.scanning.disabled = True  # no CRD watch: needs no RBAC on CRDs
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.error_backoffs = [1, 1, 2, 4, 8]
        # Server-side filters: an agent receives events of its own node only, never O(N).
        settings.watching.field_selectors["v1", "nodes"] = f"metadata.name={node}"
        settings.watching.field_selectors[GROUP, "memoryovercommitnodestates"] = \
            f"metadata.name={node}"
        # KubeVirt labels each VMI with the node it runs on.
        settings.watching.label_selectors["kubevirt.io", "virtualmachineinstances"] = \
            f"kubevirt.io/nodeName={node}"

    def registry(self, watch_vmis: bool = True,
                 watch_migrations: bool = False) -> kopf.OperatorRegistry:
        """kopf's handlers; the VMI index only where KubeVirt serves VMIs (``watch_vmis``),
        so a cluster without KubeVirt gets no warning about an unresolvable resource; the
        migration index (relief counts the migrations in flight) only where this agent may
        watch them too."""
        registry = kopf.OperatorRegistry()
        agent = self

        @kopf.on.login(registry=registry)
        async def login(**_: Any) -> kopf.ConnectionInfo:
            return await agent._login()

        @kopf.index(GROUP, VERSION, "memoryovercommitpolicies", id="policy_index",
                    registry=registry)
        def policy_index(body: kopf.Body, name: str, **_: Any) -> dict[str, Any]:
            return {name: plain(body)}

        @kopf.index("", "v1", "nodes", id="node_index", registry=registry)
        def node_index(body: kopf.Body, name: str, **_: Any) -> dict[str, Any]:
            meta = body.get("metadata", {})
            return {name: {"uid": meta.get("uid"), "labels": dict(meta.get("labels") or {}),
                           "annotations": dict(meta.get("annotations") or {}),
                           "resourceVersion": meta.get("resourceVersion"),
                           "taints": plain(body.get("spec", {}).get("taints"))}}

        def vmi_index(body: kopf.Body, name: str, namespace: str | None,
                      **_: Any) -> dict[Any, Any]:
            # Labels, annotations and the memory request of this node's VMIs, for vmSelector,
            # shares and floors.
            return {(namespace, name): plain(body)}

        def migration_index(body: kopf.Body, name: str, namespace: str | None,
                            **_: Any) -> dict[Any, Any]:
            # Every migration in the cluster (relief's per-cluster limit), only what it needs.
            return {(namespace, name): migration_summary(body)}

        if watch_vmis:
            kopf.index("kubevirt.io", "v1", "virtualmachineinstances", id="vmi_index",
                       registry=registry)(vmi_index)
        if watch_migrations:
            kopf.index("kubevirt.io", "v1", "virtualmachineinstancemigrations",
                       id="migration_index", registry=registry)(migration_index)

        @kopf.on.event("", "v1", "nodes", registry=registry)
        def node_event(**kwargs: Any) -> None:
            # kopf passes each index under its function's name: live, always complete views.
            agent.policy_index, agent.node_index = kwargs["policy_index"], kwargs["node_index"]
            agent.vmi_index = kwargs.get("vmi_index")
            agent.migration_index = kwargs.get("migration_index")
            agent.wake.set()

        @kopf.on.event(GROUP, VERSION, "memoryovercommitpolicies", registry=registry)
        def policy_event(**_: Any) -> None:
            agent.wake.set()

        @kopf.on.event(GROUP, VERSION, "memoryovercommitnodestates", registry=registry)
        def state_event(type: str | None, **_: Any) -> None:
            if type == "DELETED":  # someone removed our report: make it again
                agent.recreate_state = True
                agent.wake.set()

        return registry

    # -- the loop --------------------------------------------------------------------------
    async def run_loop(self, stop: asyncio.Event) -> None:
        delay = 0.0
        while not stop.is_set():
            # asyncio.timeout, not wait_for: wait_for runs the wait in a new task, which kopf
            # cancels as "hung" 5 s after SIGTERM, killing this loop with a CancelledError.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay or None):
                    await self.wake.wait()
            self.wake.clear()
            if stop.is_set():
                break
            delay = await self.reconcile_safely()

    async def reconcile_safely(self) -> float:
        try:
            delay = await self.reconcile()
        except (TimeoutError, ApiError, OSError) as exc:
            kind = failure_kind(exc)
            delay = self._retry_delay()
            self.log.warning("cycle failed (%d in a row), retrying in %.1fs: %s", self.failures,
                             delay, exc, extra={"error_kind": kind})
            await self._cycle_failed(kind, f"{type(exc).__name__}: {exc}")
            return delay
        except Exception as exc:
            delay = self._retry_delay()
            self.log.exception("cycle failed unexpectedly", extra={"error_kind": "internal"})
            await self._cycle_failed("internal", f"{type(exc).__name__}: {exc}")
            return delay
        self.failures = 0
        return delay

    def _retry_delay(self) -> float:
        # Jittered and growing: every agent of the cluster fails at the same moment (a 429
        # storm after a policy change, an API server restart), and must not retry in step.
        self.failures += 1
        return retry_delay(self.failures, self.settings.retry_seconds,
                           self.settings.interval_seconds)

    async def _cycle_failed(self, kind: str, message: str) -> None:
        self.metrics.failed_cycle(kind)
        # The API may be what failed: the Event waits until it can be posted (once per
        # message), behind whatever is held back or waiting.
        self._queue(self.events.to_post([failure_news(message)], whole_picture=False))
        if not self.holding():
            await self.post_news()

    async def reconcile(self) -> float:
        node = self._node()
        if node is None:
            self.log.info("waiting for Node %s to appear", self.settings.node_name)
            return self.settings.interval_seconds
        with self.metrics.cycle_duration.time():
            return await self._cycle(node)

    async def _cycle(self, node: Mapping[str, Any]) -> float:
        policies, invalid = self._policies()
        owner = None
        if KUBEVIRT_KSM_ANNOTATION in node["annotations"]:
            owner = f"KubeVirt's KSM handler (annotation {KUBEVIRT_KSM_ANNOTATION})"
        with self.health.cycle():
            report = await asyncio.to_thread(self.node.cycle, policies, node["labels"],
                                             owner, self._vmis())
        policy = report.selection.winner.name if report.selection.winner else None
        self.log.info("cycle %d: policy=%s labels=%s changes=%d errors=%d restored=%s",
                      self.health.completed, policy, node["labels"], len(report.changes),
                      len(report.errors), report.restored, extra={"policy": policy})
        relief = await self.relief.cycle(report, node, self._migrations())
        status = with_relief(node_status(report, invalid, self.last_status, now=now_rfc3339()),
                             relief.status, relief.last, relief.taint)
        # Metrics first: they describe the host, which is done even if the API fails below.
        self.metrics.observe_cycle(status, cycle_errors(report, len(invalid)))
        if relief.requested:
            self.metrics.relief_requested(relief.requested)
        try:
            await self.publish(status, node["uid"])
        except Exception:
            # The host changed all the same: the Events of this cycle's changes are queued,
            # ahead of the failed cycle's own (reconcile_safely). This cycle's facts wait for
            # a cycle that completes: posting them would forget that this one failed.
            self.queue_news(report, invalid, relief.news, changes_only=True)
            raise
        self.health.reported = True
        await self.emit_events(report, invalid, relief.news)
        interval = self._interval(report)
        return min(interval, self.held_seconds) if self.held_seconds else interval

    def _node(self) -> dict[str, Any] | None:
        if self.node_index is None:
            return None
        for value in self.node_index.get(self.settings.node_name, []):
            return dict(value)
        return None

    def _vmis(self) -> dict[tuple[str, str], Any]:
        vmis = {}
        for key, store in (self.vmi_index or {}).items():
            for body in store:
                vmis[key] = body
        return vmis

    def _migrations(self) -> list[Mapping[str, Any]]:
        return [summary for store in (self.migration_index or {}).values()
                for summary in store]

    def _policies(self) -> tuple[list[Policy], list[PolicyError]]:
        policies, invalid = [], []
        bodies = [body for store in (self.policy_index or {}).values() for body in store]
        self.nodes_seen = largest_node_count(bodies) or self.nodes_seen
        for body in bodies:
            try:
                policies.append(policy_from_object(body, "cluster"))
            except PolicyError as err:  # admission bypassed or an older CRD: report it
                invalid.append(err)
        return policies, invalid

    def _interval(self, report: CycleResult) -> float:
        return cycle_interval(report.plan, self.settings.interval_seconds)

    # -- reporting -------------------------------------------------------------------------
    async def publish(self, status: NodeStateStatus, node_uid: str | None) -> bool:
        """Write the status if it changed (counter-only changes at most once per interval;
        a change of the policy in force within its spread, ``held_seconds`` from now)."""
        self.held_seconds = 0.0
        news = policy_news(status, self.last_status)
        if not news:
            self.policy_news_due = None  # back to what was written: nothing to hold any more
        force = False
        if self.recreate_state or self.state_uid is None:
            obj = await self.api.get_node_state(self.settings.node_name) or \
                await self.api.create_node_state(self.settings.node_name, node_uid)
            self.state_uid = obj["metadata"]["uid"]
            self.recreate_state = False
            force = obj.get("status") is None
        since_write = time.monotonic() - self.last_write
        if not (force or should_write(status, self.last_status, since_write,
                                      self.counter_interval())):
            return False
        self.held_seconds = self._hold_policy_news() if news and not force else 0.0
        if self.held_seconds:
            return False
        status = dataclasses.replace(status, last_update=now_rfc3339())
        await self.api.replace_status(self.settings.node_name, to_json(status))
        self.last_status, self.last_write = status, time.monotonic()
        self.policy_news_due = None
        return True

    def counter_interval(self) -> float:
        """The least seconds between counter-only writes: the status interval, stretched on
        a large cluster to keep all agents' such writes near ``counter_writes_per_second``."""
        return counter_interval(self.nodes_seen, self.settings.counter_writes_per_second,
                                self.settings.status_interval_seconds)

    def _hold_policy_news(self) -> float:
        """Seconds to hold back a write of policy news (0: write now). A change of a policy
        (its spec, a new one, a deleted one) usually reaches every agent it concerns at once:
        each writes at a random moment of a window scaled to the largest node count of any
        policy (the agent cannot tell a fleet-wide change from its own node's relabelling, so
        that waits too). The moment is drawn once per hold: further changes during it keep
        it."""
        if self.policy_news_due is None:
            rate, cap = (self.settings.policy_change_writes_per_second,
                         self.settings.interval_seconds)
            delay = policy_news_delay(self.nodes_seen, rate, cap)
            self.policy_news_due = time.monotonic() + delay
            if delay:
                self.log.info("reporting the change of the policy in force in %.1fs (reports "
                              "spread over %.1fs: %d nodes at %g writes/s)", delay,
                              policy_news_window(self.nodes_seen, rate, cap),
                              self.nodes_seen or 0, rate)
        return max(0.0, self.policy_news_due - time.monotonic())

    async def emit_events(self, report: CycleResult, invalid: Sequence[PolicyError] = (),
                          relief: Sequence[EventIntent] = ()) -> None:
        """Queue this cycle's news (:meth:`queue_news`) and post what waits, unless the
        report of a policy change is held back."""
        self.queue_news(report, invalid, relief)
        if not self.holding():
            await self.post_news()

    def queue_news(self, report: CycleResult, invalid: Sequence[PolicyError] = (),
                   relief: Sequence[EventIntent] = (), *, changes_only: bool = False) -> None:
        """An Event for every change, and for every fact (policy, error, problem) once while
        it holds (see overcommit.agent.events); ``relief``: what relief had to say. While the
        report of a policy change is held back (``publish``, at most one ``--interval``), so
        are every Event of those cycles, then queued in order: every node posting a policy
        change's Events at once is the same burst."""
        news = [*cycle_news(report, invalid), *relief]
        if changes_only:
            news = [n for n in news if n.change]
        self._queue(self.events.to_post(news, whole_picture=not changes_only))

    def _queue(self, news: Sequence[EventIntent]) -> None:
        """Into the outbox, or held back with the report of a policy change; either way
        stamped now, when they are meant."""
        stamp = now_rfc3339()
        self.held_news.extend((stamp, item) for item in news)
        if self.holding():
            return
        involved = node_state_ref(self.settings.node_name, self.state_uid or "")
        for stamp, item in self.held_news:
            self.outbox.add(self.settings.event_namespace, involved, [item], stamp)
        self.held_news = []

    def holding(self) -> bool:
        """Whether the report of a policy change is held back now (``publish``), and with it
        every Event (``queue_news``)."""
        return self.policy_news_due is not None and time.monotonic() < self.policy_news_due

    async def post_news(self) -> None:
        """Post what the outbox holds; what fails for now waits for the next cycle
        (overcommit.kube.outbox). Also called from a failed cycle's handler, where nothing
        may escape and stop the loop: flush returns its failure instead of raising it."""
        failure = await self.outbox.flush()
        if failure is not None:
            self.log.warning("could not post an Event (%d waiting for the next cycle): %s",
                             len(self.outbox.pending), failure)


def node_state_ref(node_name: str, uid: str) -> dict[str, str]:
    """The node state an agent's Events are about (their involvedObject)."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": NODE_STATE_KIND, "name": node_name,
            "uid": uid}


def cycle_errors(report: CycleResult, invalid_policies: int) -> dict[str, int]:
    """How many errors of each kind one cycle met (for ``overcommit_agent_errors_total``)."""
    return {"setting": len(report.errors), "guest": len(report.guests.trouble),
            "policy": invalid_policies}


def failure_kind(exc: BaseException) -> str:
    """api: the API server failed or was unreachable; host: the node's files; else internal."""
    if isinstance(exc, ApiError | TimeoutError | aiohttp.ClientError):
        return "api"
    return "host" if isinstance(exc, OSError) else "internal"


async def run(settings: AgentSettings, stop: asyncio.Event | None = None) -> None:
    """Run the agent until ``stop`` is set (or SIGTERM/SIGINT, which kopf handles)."""
    agent = Agent(settings)
    kopf_settings = kopf.OperatorSettings()
    agent.configure(kopf_settings)
    # No stop_flag for kopf unless the caller has one: kopf awaits it in a task that a signal
    # leaves pending, and then waits 5 s for that "hung" task on every SIGTERM.
    loop_stop = stop or asyncio.Event()
    # Probes first: while the API server cannot be asked below, the agent is live, not ready.
    server = await _serve_metrics(agent)
    probes = await serve_health(agent.health, settings.health_port, log=agent.log)
    loop: asyncio.Task[None] | None = None
    try:
        watches = await _kubevirt_watches(agent, loop_stop)
        if watches is None:
            return  # stopped before the API server could be asked
        registry = agent.registry(watch_vmis=watches.vmis,
                                  watch_migrations=watches.migrations)
        loop = asyncio.create_task(agent.run_loop(loop_stop))
        await kopf.operator(registry=registry, settings=kopf_settings, standalone=True,
                            clusterwide=True, stop_flag=stop)
    finally:
        loop_stop.set()
        agent.wake.set()
        try:
            if loop is not None:
                await loop
        finally:
            await agent.api.close()
            if server is not None:
                await server.stop()
            if probes is not None:
                await probes.cleanup()


@dataclass(frozen=True)
class Watches:
    """What of KubeVirt the agent watches: its node's VMIs, and every migration (relief)."""

    vmis: bool
    migrations: bool


async def _kubevirt_watches(agent: Agent, stop: asyncio.Event,
                            first_delay: float = 1.0) -> Watches | None:
    """What of KubeVirt to watch: only what the API serves and this identity may list and
    watch (the plain-libvirt overlay's RBAC grants neither). kopf would warn about an
    unserved resource, and would wait for ever for an index it may not list, so nothing
    would be applied. Decided once, as kopf resolves its resources once (scanning is off),
    so not guessed: asked again, backing off, until answered. None if stopped first."""
    delay = first_delay
    while not stop.is_set():
        answer = await _ask_about_kubevirt(agent)
        if answer is not None:
            return answer
        agent.log.warning("cannot ask the API server about KubeVirt's resources yet; again "
                          "in %.1fs", delay)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
        delay = min(2 * delay, MAX_ASK_DELAY_SECONDS)
    return None


async def _ask_about_kubevirt(agent: Agent) -> Watches | None:
    """Discovery, then a SelfSubjectAccessReview per verb; None when one went unanswered."""
    try:
        async with asyncio.timeout(ASK_TIMEOUT_SECONDS):
            vmis = await _ask_about(agent, "VirtualMachineInstances", ("list", "watch"),
                                    "no VMI labels, shares or memory floors")
            if not vmis:
                return None if vmis is None else Watches(False, False)
            migrations = await _ask_about(
                agent, "VirtualMachineInstanceMigrations", ("list", "watch", "create"),
                "no relief by live migration")
            if migrations is None:
                return None
            agent.relief.blind = None if migrations else (
                "this agent may not list, watch and create VirtualMachineInstanceMigrations "
                "(its RBAC), so it cannot ask for a live migration")
            return Watches(True, migrations)
    except TimeoutError:
        return None


async def _ask_about(agent: Agent, kinds: str, verbs: Sequence[str],
                     without: str) -> bool | None:
    """Whether KubeVirt's ``kinds`` (plural Kind) are served and this agent may ``verbs``
    them (None: not answered); logs what the agent goes without when not."""
    plural = kinds.lower()
    served = await agent.api.serves("kubevirt.io", "v1", plural)
    if served is None:
        return None
    if not served:
        agent.log.info("KubeVirt serves no %s here: %s (restart the agent after installing "
                       "KubeVirt)", kinds, without)
        return False
    for verb in verbs:
        allowed = await agent.api.may(verb, "kubevirt.io", plural)
        if allowed is False:
            agent.log.info("this agent may not %s %s (its RBAC, as the plain-libvirt "
                           "overlay's): %s", verb, kinds, without)
            return False
        if allowed is None:
            return None
    return True


async def _serve_metrics(agent: Agent) -> MetricsServer | None:
    port = agent.settings.metrics_port
    server = await serve_metrics(agent.metrics.registry, port, agent.settings.metrics_address,
                                 agent.log)
    if server is not None:
        agent.log.info("serving metrics on port %s", port)
    return server
