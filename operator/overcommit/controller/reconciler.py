"""What the leading controller replica does: list+watch caches, batched status writes, cleanup.

Why plain aiohttp watches and not kopf (which the agent uses):

* kopf's peering is priority-based through its own KopfPeering CRDs: replicas of equal priority
  all freeze, and there is no Lease with a duration after which a standby takes over. Two safe
  replicas need a coordination.k8s.io Lease, which is a small state machine (``lease``).
* A standby must cost nothing: here it holds no watch and no cache, only a GET every couple of
  seconds; kopf would keep its watches (and per-object workers) running while paused.
* Memory at thousands of nodes: kopf keeps whole bodies (in indexes) and one worker task per
  object; the controller keeps ~200 bytes per node state (``fold.NodeSummary``) and a Node's
  labels only, listing and watching Nodes as metadata (PartialObjectMetadata) to skip their
  status.

kopf still provides the credentials (``kube.client.make_login``), so both components log in
the same way. Leader election is ``kube.lease``; the process around both is ``runtime``.

Data flow: watch events update the caches and mark the policies they concern as due; one act
loop folds each due policy (``fold``) and writes its status only when it differs (ignoring
timestamps), at most once per status interval per policy; savings-only changes at most once per
savings interval. After a write, the differences a human acts on (``events``) are posted as
Events on the policy through an outbox (``kube.outbox``: a post that fails for now is tried
again later, in order). The same loop deletes node states whose Node is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from overcommit.api.policy import GROUP, POLICY_KIND, VERSION
from overcommit.api.schema import fit, to_json
from overcommit.api.status import KubeVirtRatio, PolicyCapacity, PolicyStatus, condition_of
from overcommit.controller import kubevirt_ratio
from overcommit.controller.api import ControllerApi
from overcommit.controller.events import policy_news
from overcommit.controller.fold import (
    Labels,
    NodeSummary,
    PolicyView,
    comparable,
    fold,
    node_summary,
    policy_view,
    without_savings,
)
from overcommit.controller.settings import ControllerSettings
from overcommit.controller.sweep import sweep
from overcommit.kube.client import TRANSPORT_ERRORS, ApiError
from overcommit.kube.clock import now_rfc3339
from overcommit.kube.events import EventIntent
from overcommit.kube.informer import Informer
from overcommit.kube.outbox import RETRYABLE_ERRORS, EventOutbox
from overcommit.kube.resources import METADATA_LIST, METADATA_WATCH, NODE_STATES, NODES, POLICIES
from overcommit.observability.metrics import ControllerMetrics

log = logging.getLogger("overcommit.controller")

JSON = dict[str, Any]
Clock = Callable[[], float]
STATE_PAGE = 100
API_ERRORS = (ApiError, *TRANSPORT_ERRORS)
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
                 metrics: ControllerMetrics | None = None,
                 wall: Clock = time.time) -> None:
        self.api, self.settings, self.clock, self.now = api, settings, clock, now
        self.wall = wall  # epoch seconds: when KubeVirt's ratio was last changed
        self.metrics = metrics or ControllerMetrics()
        self.nodes: dict[str, Labels] = {}
        self.reports: dict[str, NodeSummary] = {}
        self.policies: dict[str, PolicyView] = {}
        self.due: dict[str, float] = {}  # policy -> earliest time to fold and maybe write it
        self.last_fold: dict[str, float] = {}
        self.last_write: dict[str, float] = {}
        # Until when a policy's savings are written at the status pace: for a savings interval
        # after it was first seen (by this leader) or its generation changed, so a new or
        # changed policy shows what it saves at once.
        self.fresh_until: dict[str, float] = {}
        self.to_delete: set[str] = set()  # node states to delete: their Node is gone
        self.strays_seen: set[str] = set()
        self.wake = asyncio.Event()
        self.synced = False
        self.informers: list[Informer] = []
        self.status_writes = 0
        self.states_deleted = 0
        self.events_posted = 0
        # Events whose post failed for now are not tried again before events_retry_at
        # (clock); meanwhile new ones queue behind them.
        self.events_retry_at = -math.inf
        self.outbox = EventOutbox(lambda namespace, body: self.api.create_event(namespace, body),
                                  component=COMPONENT, host=settings.identity,
                                  on_posted=self._event_posted,
                                  on_dropped=self.metrics.events.dropped_one)
        self.metrics.events.count_pending(lambda: len(self.outbox.pending))

    # -- cache updates (pure bookkeeping, called by the informers) -------------------------
    def mark_due(self, names: Iterable[str]) -> None:
        """Fold these policies again, at most once per status interval each: under constant
        churn (thousands of agents) the fold rate, and so the CPU, stays bounded too."""
        now, interval = self.clock(), self.status_interval()
        for name in names:
            if name in self.policies:
                earliest = max(now, self.last_fold.get(name, -math.inf) + interval)
                self.due[name] = min(self.due.get(name, math.inf), earliest)
        self.wake.set()

    def status_interval(self) -> float:
        """The settings' interval, stretched on large clusters so the watch events a status
        write fans out to every agent stay within the fan-out budget."""
        return max(self.settings.status_interval_seconds,
                   len(self.nodes) / self.settings.status_fanout_per_second)

    def node_event(self, event_type: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        if event_type == "DELETED":
            self.nodes.pop(name, None)
            if name in self.reports:
                self.to_delete.add(name)
            self.mark_due(list(self.policies))
            return
        labels = _labels(obj)
        if self.nodes.get(name) != labels:  # a heartbeat changes nothing we use
            self.nodes[name] = labels
            self.mark_due(list(self.policies))
        self.to_delete.discard(name)

    def state_event(self, event_type: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        old = self.reports.pop(name, None)
        touched = old.policies() if old else set()
        if event_type != "DELETED":
            report = node_summary(obj)
            self.reports[name] = report
            if report == old:
                return
            touched |= report.policies()
        else:
            self.to_delete.discard(name)
        self.mark_due(touched)

    def policy_event(self, event_type: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        if event_type == "DELETED":
            self.policies.pop(name, None)
            self.due.pop(name, None)
            self.last_fold.pop(name, None)
            self.last_write.pop(name, None)
            self.fresh_until.pop(name, None)
            self.wake.set()  # its metrics series go at the next act
            return
        old = self.policies.get(name)
        meta = obj["metadata"]
        if old is not None and (old.uid, old.generation) == (meta.get("uid"),
                                                             meta.get("generation")):
            return  # a status echo (ours, or the previous leader's): nothing new to fold
        view = policy_view(obj)
        self.fresh_until[name] = self.clock() + self.settings.savings_interval_seconds
        if old is not None and old.uid == view.uid:
            view = replace(view, status=old.status)  # keep what we wrote, not its echo
        self.policies[name] = view
        self.mark_due([name])

    # -- acting ----------------------------------------------------------------------------
    async def act(self) -> float | None:
        """Delete the node states whose Node is gone, then fold and write every due policy;
        returns the seconds until the next policy, or the next try of Events whose post
        failed, is due (None: nothing is)."""
        # Events whose post failed for now wait until their retry time, however many passes
        # come first (every changed node state wakes the controller: in a 429 storm, trying
        # at each pass would be part of the storm); new ones queue behind them.
        if self.outbox.pending and not self.events_stalled():  # earlier ones go first
            await self.post_events()
        for name in sorted(self.to_delete):
            await self.delete_state(name)
        now = self.clock()
        for name, due in sorted(self.due.items()):
            if due <= now:
                del self.due[name]
                await self.reconcile(name, now)
        self.publish()
        retry = self.events_retry_at if self.outbox.pending else math.inf
        due = min([*self.due.values(), retry])
        return None if due == math.inf else max(0.0, due - self.clock())

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
        status = await self.with_kubevirt_ratio(policy, status)
        new, old = comparable(status), comparable(policy.status)
        if new == old:
            return
        savings_due = self.last_write.get(name, -math.inf) + \
            self.settings.savings_interval_seconds
        fresh = now < self.fresh_until.get(name, -math.inf)
        if without_savings(new) == without_savings(old) and now < savings_due and not fresh:
            self.due[name] = savings_due  # only the sums moved: fold again when that is due
            return
        await self.write(policy, status)

    async def with_kubevirt_ratio(self, policy: PolicyView, status: PolicyStatus) -> PolicyStatus:
        """KubeVirt's memoryOvercommit for a policy that covers KubeVirt's nodes: read, and
        (``spec.capacity.kubevirt.manage``) set from what the nodes support
        (``kubevirt_ratio``); the result goes into ``status.capacity.kubevirt``."""
        spec = policy.capacity.kubevirt if policy.capacity is not None else None
        views = self._ratio_views()
        vm_nodes = kubevirt_ratio.schedulable(self.nodes)
        covered = kubevirt_ratio.covers(policy.name, vm_nodes, views) is None
        if policy.error is not None or not (covered or (spec is not None and spec.manage)):
            return status
        previous = policy.status.capacity.kubevirt if policy.status.capacity else None
        kubevirt = None
        if covered:
            kubevirt, problem = await self._read_kubevirt()
            if problem:
                return self._with_ratio(status, replace(previous or KubeVirtRatio(),
                                                        reason=problem))
        decision = kubevirt_ratio.decide(policy.name, spec, self.nodes, views, kubevirt,
                                         previous, self.wall())
        if decision is None:
            return status
        ratio = decision.status
        if decision.set_to is not None and kubevirt is not None:
            ratio = await self._set_ratio(policy, kubevirt, decision.set_to, ratio, previous)
        if decision.recheck_in is not None:
            due = self.clock() + decision.recheck_in
            self.due[policy.name] = min(self.due.get(policy.name, math.inf), due)
        return self._with_ratio(status, ratio)

    def _ratio_views(self) -> dict[str, kubevirt_ratio.NodeView]:
        """What the ratio manager needs of each known node's report."""
        return {name: kubevirt_ratio.NodeView(
            report.policy.name if report.policy else None,
            report.capacity.supported_percent if report.capacity else None,
            bool(report.capacity and report.capacity.settled))
            for name, report in self.reports.items() if name in self.nodes}

    async def _read_kubevirt(self) -> tuple[dict[str, Any] | None, str]:
        """The KubeVirt CR, or why it could not be read."""
        namespace, name = self.settings.kubevirt_namespace, self.settings.kubevirt_name
        try:
            return await self.api.get_kubevirt(namespace, name), ""
        except API_ERRORS as exc:
            log.warning("could not read the KubeVirt CR %s/%s: %s", namespace, name, exc)
            self.metrics.error("api")
            return None, f"could not read the KubeVirt CR {namespace}/{name}: {exc}"

    async def _set_ratio(self, policy: PolicyView, kubevirt: Mapping[str, Any], percent: int,
                         ratio: KubeVirtRatio, previous: KubeVirtRatio | None) -> KubeVirtRatio:
        """Patch KubeVirt's memoryOvercommit to ``percent`` and announce it; on failure, the
        ratio as it stays, with the reason, and a retry."""
        namespace, name = self.settings.kubevirt_namespace, self.settings.kubevirt_name
        before = kubevirt_ratio.configured_percent(kubevirt)
        try:
            await self.api.patch_kubevirt(namespace, name, kubevirt_ratio.merge_patch(percent))
        except API_ERRORS as exc:
            log.warning("could not set memoryOvercommit on %s/%s: %s", namespace, name, exc)
            self.metrics.error("api")
            self.due[policy.name] = self.clock() + self.settings.retry_seconds
            return replace(ratio, configured_percent=before,
                           last_change=previous.last_change if previous else None,
                           reason=f"could not set memoryOvercommit to {percent}%: {exc}")
        log.info("KubeVirt memoryOvercommit %d%% -> %d%% for policy %s: %s", before, percent,
                 policy.name, ratio.reason)
        await self.announce(policy, [EventIntent(
            "Normal" if percent > before else "Warning", "KubeVirtRatioChanged",
            f"memoryOvercommit {before}% -> {percent}% on KubeVirt {namespace}/{name}: "
            f"{ratio.reason}", change=True)])
        return ratio

    @staticmethod
    def _with_ratio(status: PolicyStatus,
                    ratio: KubeVirtRatio) -> PolicyStatus:
        capacity = status.capacity or PolicyCapacity()
        return fit(replace(status, capacity=replace(capacity, kubevirt=ratio)))

    async def write(self, policy: PolicyView, status: PolicyStatus) -> None:
        try:
            await self.api.replace_policy_status(policy.name, policy.uid, to_json(status))
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
        ready = condition_of(status, "Ready")
        log.info("status of %s (generation %d): %s Ready=%s %s", policy.name, policy.generation,
                 status.nodes.summary if status.nodes else "-", ready.status, ready.reason)
        # Compared with the status it replaced, never with what a previous fold saw: what was
        # not written is not news, and a new leader starts from the status in the API.
        await self.announce(policy, policy_news(policy.status, status))

    async def announce(self, policy: PolicyView, news: list[EventIntent]) -> None:
        """Post ``news`` as Events on the policy, behind those still waiting. What fails for
        now is posted again at the next pass (overcommit.kube.outbox); nothing of it may stop
        the controller: the status carries the truth."""
        involved = {"apiVersion": f"{GROUP}/{VERSION}", "kind": POLICY_KIND,
                    "name": policy.name, "uid": policy.uid}
        self.outbox.add(self.settings.event_namespace, involved, news)
        if not self.events_stalled():
            await self.post_events()

    async def post_events(self) -> None:
        failure = await self.outbox.flush()
        if self.outbox.pending:  # a post failed for now (429, 5xx, no answer)
            self.events_retry_at = self.clock() + self.settings.retry_seconds
        if failure is not None:
            log.warning("could not post an Event (%d waiting): %s", len(self.outbox.pending),
                        failure)
            self.metrics.error("api" if isinstance(failure, (*RETRYABLE_ERRORS, ApiError))
                               else "internal")

    def events_stalled(self) -> bool:
        """Whether Events wait for their retry time: new ones queue behind them."""
        return self.clock() < self.events_retry_at

    def _event_posted(self, event_type: str, reason: str) -> None:
        self.metrics.events.posted_one(event_type, reason)
        self.events_posted += 1

    def _retry_later(self, name: str, exc: Exception) -> None:
        log.warning("could not write the status of %s, retrying: %s", name, exc)
        self.metrics.status_written(False)
        self.metrics.error("api")
        self.due[name] = self.clock() + self.settings.retry_seconds

    async def delete_state(self, name: str) -> None:
        self.to_delete.discard(name)
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
        self.fresh_until = {}
        self.to_delete, self.strays_seen = set(), set()
        self.synced = False
        # A standby posts nothing, and a leader regained hours later must not post stale
        # news behind its successor's: what still waits is given up on (and counted).
        self.outbox.discard("leadership")
        self.events_retry_at = -math.inf
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
            strays, self.strays_seen = sweep(self.reports, self.nodes, self.strays_seen)
            if strays:
                self.to_delete |= strays
                self.wake.set()
            await asyncio.sleep(self.settings.sweep_interval_seconds)

    def health(self) -> JSON:
        return {"synced": self.synced, "nodes": len(self.nodes),
                "nodeStates": len(self.reports), "policies": len(self.policies),
                "statusWrites": self.status_writes, "nodeStatesDeleted": self.states_deleted,
                "eventsPosted": self.events_posted,
                "watchEvents": sum(i.events for i in self.informers)}
