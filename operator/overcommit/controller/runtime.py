"""The controller's shell: leader election, list+watch caches, batched status writes, cleanup.

Why plain aiohttp watches and not kopf (which the agent uses):

* kopf's peering is priority-based through its own KopfPeering CRDs: replicas of equal priority
  all freeze, and there is no Lease with a duration after which a standby takes over. Two safe
  replicas need a coordination.k8s.io Lease, which is a small state machine (``lease``).
* A standby must cost nothing: here it holds no watch and no cache, only a GET every couple of
  seconds; kopf would keep its watches (and per-object workers) running while paused.
* Memory at thousands of nodes: kopf keeps whole bodies (in indexes) and one worker task per
  object; the controller keeps ~200 bytes per node state (``fold.NodeReport``) and a Node's
  labels only, listing and watching Nodes as metadata (PartialObjectMetadata) to skip their
  status.

kopf still provides the credentials (``agent.kubeapi.make_login``), so both components log in
the same way.

Data flow: watch events update the caches and mark the policies they concern as due; one act
loop folds each due policy (``fold``) and writes its status only when it differs (ignoring
timestamps), at most once per status interval per policy; savings-only changes at most once per
savings interval. After a write, the differences a human acts on (``events``) are posted as
Events on the policy, best effort. The same loop deletes node states whose Node is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from aiohttp import web

from overcommit.agent.events import News
from overcommit.agent.health import serve_probes
from overcommit.agent.kubeapi import NODE_STATES, REQUEST_TIMEOUT_SECONDS, ApiError, make_login
from overcommit.agent.status import now_rfc3339
from overcommit.api.policy import GROUP, POLICY_KIND, VERSION
from overcommit.api.status import find_condition
from overcommit.controller.events import policy_news
from overcommit.controller.fold import (
    Labels,
    NodeReport,
    PolicyView,
    comparable,
    fold,
    node_report,
    policy_view,
    without_savings,
)
from overcommit.controller.informer import Informer
from overcommit.controller.kube import (
    METADATA_LIST,
    METADATA_WATCH,
    NODES,
    POLICIES,
    ControllerApi,
)
from overcommit.controller.lease import (
    Action,
    LeaseRecord,
    Observer,
    Timing,
    acquired,
    decide,
    new_lease,
    released,
    renewed,
)
from overcommit.controller.settings import ControllerSettings
from overcommit.controller.sweep import sweep
from overcommit.observability.metrics import ControllerMetrics, serve_metrics

log = logging.getLogger("overcommit.controller")

JSON = dict[str, Any]
Clock = Callable[[], float]
RETRY_SECONDS = 2.0
STATE_PAGE = 100
API_ERRORS = (ApiError, aiohttp.ClientError, TimeoutError, OSError)
COMPONENT = "memory-overcommit-controller"


@dataclass
class _Store:
    """Adapts a controller's event method and the names it holds to the informer's Store:
    after a relist, every name the list no longer has is a DELETED event."""

    on_event: Callable[[str, JSON], None]
    held: Callable[[], Iterable[str]]

    def apply(self, event_type: str, obj: JSON) -> None:
        self.on_event(event_type, obj)

    def retain(self, names: set[str]) -> None:
        for name in set(self.held()) - names:
            self.on_event("DELETED", {"metadata": {"name": name}})


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    # Every node carries the same few label keys and values: share one copy of each string.
    return {sys.intern(k): sys.intern(str(v)) for k, v in labels.items()}


class Controller:
    """What the leader does: caches of nodes, node states and policies; status writes; cleanup.

    Created once; ``lead()`` runs while this replica holds the lease and starts from empty
    caches each time, so a replica that lost and regained leadership never acts on stale data.
    """

    def __init__(self, api: ControllerApi, settings: ControllerSettings,
                 clock: Clock = time.monotonic, now: Callable[[], str] = now_rfc3339,
                 metrics: ControllerMetrics | None = None) -> None:
        self.api, self.settings, self.clock, self.now = api, settings, clock, now
        self.metrics = metrics or ControllerMetrics()
        self.nodes: dict[str, Labels] = {}
        self.reports: dict[str, NodeReport] = {}
        self.policies: dict[str, PolicyView] = {}
        self.due: dict[str, float] = {}  # policy -> earliest time to fold and maybe write it
        self.last_fold: dict[str, float] = {}
        self.last_write: dict[str, float] = {}
        self.doomed: set[str] = set()  # node states to delete: their Node is gone
        self.suspects: set[str] = set()
        self.wake = asyncio.Event()
        self.synced = False
        self.informers: list[Informer] = []
        self.status_writes = 0
        self.states_deleted = 0
        self.events_posted = 0

    # -- cache updates (pure bookkeeping, called by the informers) -------------------------
    def mark_due(self, names: Iterable[str]) -> None:
        """Fold these policies again, at most once per status interval each: under constant
        churn (thousands of agents) the fold rate, and so the CPU, stays bounded too."""
        now = self.clock()
        for name in names:
            if name in self.policies:
                earliest = max(now, self.last_fold.get(name, -math.inf)
                               + self.settings.status_interval_seconds)
                self.due[name] = min(self.due.get(name, math.inf), earliest)
        self.wake.set()

    def node_event(self, event_type: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        if event_type == "DELETED":
            self.nodes.pop(name, None)
            if name in self.reports:
                self.doomed.add(name)
            self.mark_due(list(self.policies))
            return
        labels = _labels(obj)
        if self.nodes.get(name) != labels:  # a heartbeat changes nothing we use
            self.nodes[name] = labels
            self.mark_due(list(self.policies))
        self.doomed.discard(name)

    def state_event(self, event_type: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        old = self.reports.pop(name, None)
        touched = old.policies() if old else set()
        if event_type != "DELETED":
            report = node_report(obj)
            self.reports[name] = report
            if report == old:
                return
            touched |= report.policies()
        else:
            self.doomed.discard(name)
        self.mark_due(touched)

    def policy_event(self, event_type: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        if event_type == "DELETED":
            self.policies.pop(name, None)
            self.due.pop(name, None)
            self.last_fold.pop(name, None)
            self.last_write.pop(name, None)
            self.wake.set()  # its metrics series go at the next act
            return
        old = self.policies.get(name)
        meta = obj["metadata"]
        if old is not None and (old.uid, old.generation) == (meta.get("uid"),
                                                             meta.get("generation")):
            return  # a status echo (ours, or the previous leader's): nothing new to fold
        view = policy_view(obj)
        if old is not None and old.uid == view.uid:
            view = replace(view, status=old.status)  # keep what we wrote, not its echo
        self.policies[name] = view
        self.mark_due([name])

    # -- acting ----------------------------------------------------------------------------
    async def act(self) -> float | None:
        """Delete doomed node states, then fold and write every due policy; returns the
        seconds until the next policy is due (None: none is)."""
        for name in sorted(self.doomed):
            await self.delete_state(name)
        now = self.clock()
        for name, due in sorted(self.due.items()):
            if due <= now:
                del self.due[name]
                await self.reconcile(name, now)
        self.publish()
        return max(0.0, min(self.due.values()) - self.clock()) if self.due else None

    def publish(self) -> None:
        """The metrics of what this replica holds (nothing while it does not lead)."""
        self.metrics.counts(len(self.policies), len(self.reports))
        self.metrics.observe_policies({name: view.status for name, view in
                                       self.policies.items()})

    async def reconcile(self, name: str, now: float) -> None:
        policy = self.policies.get(name)
        if policy is None:
            return
        with self.metrics.fold():
            status = fold(policy, self.reports, self.nodes, self.now())
        self.last_fold[name] = now
        new, old = comparable(status), comparable(policy.status)
        if new == old:
            return
        savings_due = self.last_write.get(name, -math.inf) + \
            self.settings.savings_interval_seconds
        if without_savings(new) == without_savings(old) and now < savings_due:
            self.due[name] = savings_due  # only the sums moved: fold again when that is due
            return
        await self.write(policy, status)

    async def write(self, policy: PolicyView, status: JSON) -> None:
        try:
            await self.api.replace_policy_status(policy.name, policy.uid, status)
        except ApiError as exc:
            if exc.status in (404, 422):  # deleted, or made again: the watch will tell us
                return
            self._retry_later(policy.name, exc)
            return
        except API_ERRORS as exc:
            self._retry_later(policy.name, exc)
            return
        current = self.policies.get(policy.name)
        if current is not None and current.uid == policy.uid:
            # A spec change may have arrived while we wrote: keep that newer view.
            self.policies[policy.name] = replace(current, status=status)
        self.last_write[policy.name] = self.clock()
        self.status_writes += 1
        self.metrics.status_written(True)
        ready = find_condition(status, "Ready")
        log.info("status of %s (generation %d): %s Ready=%s %s", policy.name, policy.generation,
                 status["nodes"].get("summary", "-"), ready.get("status"), ready.get("reason"))
        # Compared with the status it replaced, never with what a previous fold saw: what was
        # not written is not news, and a new leader starts from the status in the API.
        await self.announce(policy, policy_news(policy.status, status))

    async def announce(self, policy: PolicyView, news: list[News]) -> None:
        """Post ``news`` as Events on the policy. Best effort: the status carries the truth,
        and a failed post is neither retried nor allowed to stop the controller."""
        involved = {"apiVersion": f"{GROUP}/{VERSION}", "kind": POLICY_KIND,
                    "name": policy.name, "uid": policy.uid}
        for item in news:
            try:
                await self.api.post_event(self.settings.event_namespace, involved, item.type,
                                          item.reason, item.message, COMPONENT,
                                          self.settings.identity)
            except Exception as exc:
                log.warning("could not post event %s on %s: %s", item.reason, policy.name, exc)
                self.metrics.error("api" if isinstance(exc, API_ERRORS) else "internal")
                return  # the rest would most likely fail (and wait) the same way
            self.metrics.event_posted(item.type, item.reason)
            self.events_posted += 1

    def _retry_later(self, name: str, exc: Exception) -> None:
        log.warning("could not write the status of %s, retrying: %s", name, exc)
        self.metrics.status_written(False)
        self.metrics.error("api")
        self.due[name] = self.clock() + RETRY_SECONDS

    async def delete_state(self, name: str) -> None:
        self.doomed.discard(name)
        report = self.reports.get(name)
        if report is None or name in self.nodes:
            return
        try:
            if await self.api.delete_node_state(name, report.uid):
                self.states_deleted += 1
                log.info("deleted node state %s: its Node no longer exists", name)
        except API_ERRORS as exc:
            log.warning("could not delete node state %s: %s", name, exc)
            self.metrics.error("api")

    # -- the leader's tasks ----------------------------------------------------------------
    def _reset(self) -> None:
        self.nodes, self.reports, self.policies = {}, {}, {}
        self.due, self.last_fold, self.last_write = {}, {}, {}
        self.doomed, self.suspects = set(), set()
        self.synced = False
        self.informers = [
            Informer(self.api, NODES, _Store(self.node_event, lambda: self.nodes),
                     METADATA_LIST, METADATA_WATCH, on_error=self._api_error),
            # Node states can list a thousand guests each: smaller pages bound the peak.
            Informer(self.api, NODE_STATES, _Store(self.state_event, lambda: self.reports),
                     page=STATE_PAGE, on_error=self._api_error),
            Informer(self.api, POLICIES, _Store(self.policy_event, lambda: self.policies),
                     on_error=self._api_error),
        ]

    def _api_error(self) -> None:
        self.metrics.error("api")

    async def lead(self) -> None:
        """Runs until cancelled (when this replica stops leading)."""
        self._reset()
        try:
            await self._lead()
        finally:
            self._reset()  # a standby keeps no cache and exports no policy series
            self.publish()

    async def _lead(self) -> None:
        async with asyncio.TaskGroup() as group:
            for informer in self.informers:
                group.create_task(informer.run())
            await asyncio.gather(*(informer.synced.wait() for informer in self.informers))
            self.synced = True
            log.info("caches synced: %d nodes, %d node states, %d policies", len(self.nodes),
                     len(self.reports), len(self.policies))
            self.mark_due(list(self.policies))
            group.create_task(self._act_loop())
            group.create_task(self._sweep_loop())

    async def _act_loop(self) -> None:
        while True:
            self.wake.clear()  # before acting: anything marked while we act wakes us again
            delay = await self.act()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.wake.wait()

    async def _sweep_loop(self) -> None:
        while True:
            doomed, self.suspects = sweep(self.reports, self.nodes, self.suspects)
            if doomed:
                self.doomed |= doomed
                self.wake.set()
            await asyncio.sleep(self.settings.sweep_interval_seconds)

    def health(self) -> JSON:
        return {"synced": self.synced, "nodes": len(self.nodes),
                "nodeStates": len(self.reports), "policies": len(self.policies),
                "statusWrites": self.status_writes, "nodeStatesDeleted": self.states_deleted,
                "eventsPosted": self.events_posted,
                "watchEvents": sum(i.events for i in self.informers)}


class LeaderElector:
    """Holds (or waits for) the Lease and runs ``lead`` exactly while holding it."""

    def __init__(self, api: ControllerApi, settings: ControllerSettings,
                 lead: Callable[[], Coroutine[Any, Any, None]],
                 clock: Clock = time.monotonic, metrics: ControllerMetrics | None = None) -> None:
        self.api, self.settings, self.lead, self.clock = api, settings, lead, clock
        self.metrics = metrics or ControllerMetrics()
        self.timing = Timing.for_lease(settings.lease_seconds)
        self.observer = Observer()
        self.task: asyncio.Task[None] | None = None
        self.renewed_at = -math.inf
        self.last_tick = clock()
        self.transitions = 0

    @property
    def leading(self) -> bool:
        return self.task is not None

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.step()
                self.last_tick = self.clock()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.timing.retry_period):
                        await stop.wait()
        finally:
            await self.step_down("shutting down")
            await self.release()

    async def step(self) -> None:
        try:
            held: bool | None = await self.acquire_or_renew()
        except API_ERRORS as exc:
            log.warning("lease %s/%s: %s", self.settings.lease_namespace,
                        self.settings.lease_name, exc)
            self.metrics.error("api")
            held = None  # unknown: a leader keeps working until its renew deadline
        now = self.clock()
        if held:
            self.renewed_at = now
            if self.task is None or self.task.done():
                self._start()
        elif held is False:
            await self.step_down("another replica holds the lease")
        elif now - self.renewed_at > self.timing.renew_deadline:
            await self.step_down(f"lease not renewed for {self.timing.renew_deadline:.1f}s")

    async def acquire_or_renew(self) -> bool:
        ns, name, me = (self.settings.lease_namespace, self.settings.lease_name,
                        self.settings.identity)
        obj = await self.api.get_lease(ns, name)
        record = LeaseRecord.from_object(obj) if obj is not None else None
        unchanged = self.observer.unchanged_for(record, self.clock()) if record else 0.0
        action = decide(record, me, unchanged)
        if action is Action.WAIT:
            return False
        wall = datetime.datetime.now(datetime.UTC)
        seconds = self.settings.lease_seconds
        try:
            if obj is None:
                await self.api.create_lease(ns, new_lease(ns, name, me, seconds, wall))
            elif action is Action.RENEW:
                await self.api.replace_lease(ns, name, renewed(obj, wall))
            else:
                await self.api.replace_lease(ns, name, acquired(obj, me, seconds, wall))
        except ApiError as exc:
            if exc.status == 409:  # another replica wrote first: it holds the lease
                return False
            raise
        return True

    def _start(self) -> None:
        if self.task is not None:  # the leader's work crashed: log why, start it again
            with contextlib.suppress(asyncio.CancelledError):
                if exc := self.task.exception():
                    log.error("controller work failed, restarting it", exc_info=exc)
                    self.metrics.error("internal")
        else:
            self.transitions += 1
            log.info("%s is the leader now", self.settings.identity)
        self.task = asyncio.create_task(self.lead())
        self.metrics.set_leader(True)

    async def step_down(self, why: str) -> None:
        task, self.task = self.task, None
        if task is None:
            return
        log.info("%s stops leading: %s", self.settings.identity, why)
        self.metrics.set_leader(False)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def release(self) -> None:
        """Hand the lease over at once on a clean shutdown (only if it is still ours)."""
        ns, name = self.settings.lease_namespace, self.settings.lease_name
        with contextlib.suppress(*API_ERRORS):
            obj = await self.api.get_lease(ns, name)
            if obj is not None and \
                    LeaseRecord.from_object(obj).holder == self.settings.identity:
                wall = datetime.datetime.now(datetime.UTC)
                await self.api.replace_lease(ns, name, released(obj, wall))
                log.info("released lease %s/%s", ns, name)

    def healthy(self) -> bool:
        """The election loop still turns. The limit outlasts two timed-out API requests: an
        unreachable API server is no reason to restart the pod, a wedged loop is."""
        limit = self.settings.lease_seconds + 2 * REQUEST_TIMEOUT_SECONDS
        return self.clock() - self.last_tick < limit


async def serve_health(port: int, elector: LeaderElector,
                       controller: Controller) -> web.AppRunner | None:
    """/healthz (liveness: the election loop turns) and /readyz (a standby is ready; a leader
    once its caches are synced), each with a JSON body describing the replica."""
    def body() -> JSON:
        return {"identity": elector.settings.identity, "leader": elector.leading,
                "leaderTransitions": elector.transitions, **controller.health()}

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(body(), status=200 if elector.healthy() else 503,
                                 dumps=json.dumps)

    async def readyz(_: web.Request) -> web.Response:
        ready = elector.healthy() and (not elector.leading or controller.synced)
        return web.json_response(body(), status=200 if ready else 503, dumps=json.dumps)

    return await serve_probes(port, "0.0.0.0", healthz, readyz, log)


async def run(settings: ControllerSettings, stop: asyncio.Event | None = None) -> None:
    """Run one replica until ``stop`` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    metrics = ControllerMetrics()
    api = ControllerApi(make_login(settings.kubeconfig), on_write=metrics.api_write)
    controller = Controller(api, settings, metrics=metrics)
    elector = LeaderElector(api, settings, controller.lead, metrics=metrics)
    health = await serve_health(settings.health_port, elector, controller)
    metrics_server = await serve_metrics(metrics.registry, settings.metrics_port,
                                         settings.metrics_address, log)
    log.info("%s: lease %s/%s, %ss; status interval %ss", settings.identity,
             settings.lease_namespace, settings.lease_name, settings.lease_seconds,
             settings.status_interval_seconds)
    try:
        await elector.run(stop)
    finally:
        if health is not None:
            await health.cleanup()
        if metrics_server is not None:
            await metrics_server.stop()
        await api.close()
