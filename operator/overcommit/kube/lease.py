"""Leader election on a coordination.k8s.io/v1 Lease (the rules client-go's elector uses).

A replica holds the lease while it renews ``renewTime`` within ``leaseDurationSeconds``. A
candidate takes it over when the lease is free (no holder: the leader released it on shutdown)
or when the lease has not changed for a whole lease duration *as measured on the candidate's own
monotonic clock*: another machine's timestamps are never compared with ours, so clock skew
cannot hand the lease to two replicas. Every write carries the resourceVersion it was decided
on, so of two candidates acting at once the API server lets exactly one win.

The decisions are pure functions (``decide``, ``new_lease``, ``renewed``, ``acquired``,
``released``); :class:`LeaderElector` is the loop that applies them through the API and runs the
leader's work exactly while this replica holds the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import enum
import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from overcommit.kube.client import REQUEST_TIMEOUT_SECONDS, TRANSPORT_ERRORS, ApiError

log = logging.getLogger("overcommit.kube")

JSON = dict[str, Any]


def micro_time(now: datetime.datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Timing:
    """How long a lease lasts, how long a leader keeps trying to renew before it steps down
    (shorter, so it stops working before anyone may take over), and how often replicas act."""

    lease_seconds: int
    renew_deadline: float
    retry_period: float

    @classmethod
    def for_lease(cls, lease_seconds: int) -> Timing:
        # client-go's defaults are 15 s / 10 s / 2 s; keep those proportions for any duration.
        return cls(lease_seconds, lease_seconds * 2 / 3, max(0.2, lease_seconds / 7.5))


@dataclass(frozen=True)
class LeaseRecord:
    holder: str | None
    duration: int
    renew_time: str | None
    resource_version: str

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> LeaseRecord:
        spec = obj.get("spec") or {}
        return cls(holder=spec.get("holderIdentity") or None,
                   duration=int(spec.get("leaseDurationSeconds") or 0),
                   renew_time=spec.get("renewTime"),
                   resource_version=str((obj.get("metadata") or {}).get("resourceVersion", "")))


class Action(enum.Enum):
    CREATE = "create"  # no lease yet: make it, holding it
    RENEW = "renew"  # ours: extend it
    ACQUIRE = "acquire"  # free or expired: take it over
    WAIT = "wait"  # someone else holds a live lease


class Observer:
    """Remembers when this replica last saw the lease change, on its own monotonic clock."""

    def __init__(self) -> None:
        self._key: tuple[str | None, str | None, str] | None = None
        self._since = 0.0

    def unchanged_for(self, record: LeaseRecord, now: float) -> float:
        key = (record.holder, record.renew_time, record.resource_version)
        if key != self._key:
            self._key, self._since = key, now
        return now - self._since


def decide(record: LeaseRecord | None, me: str, unchanged_for: float) -> Action:
    if record is None:
        return Action.CREATE
    if record.holder == me:
        return Action.RENEW
    if record.holder is None or unchanged_for >= record.duration:
        return Action.ACQUIRE
    return Action.WAIT


def new_lease(namespace: str, name: str, me: str, lease_seconds: int,
              now: datetime.datetime) -> JSON:
    stamp = micro_time(now)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": "memory-overcommit",
                                    "app.kubernetes.io/component": "controller"}},
            "spec": {"holderIdentity": me, "leaseDurationSeconds": lease_seconds,
                     "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0}}


def renewed(obj: Mapping[str, Any], now: datetime.datetime) -> JSON:
    out = copy.deepcopy(dict(obj))
    out["spec"]["renewTime"] = micro_time(now)
    return out


def acquired(obj: Mapping[str, Any], me: str, lease_seconds: int,
             now: datetime.datetime) -> JSON:
    out = copy.deepcopy(dict(obj))
    spec = out.setdefault("spec", {})
    stamp = micro_time(now)
    spec.update(holderIdentity=me, leaseDurationSeconds=lease_seconds, acquireTime=stamp,
                renewTime=stamp, leaseTransitions=int(spec.get("leaseTransitions") or 0) + 1)
    return out


def released(obj: Mapping[str, Any], now: datetime.datetime) -> JSON:
    """Given up on shutdown: no holder, so a standby takes over at its next try, not after a
    whole lease duration."""
    out = copy.deepcopy(dict(obj))
    spec = out.setdefault("spec", {})
    spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=micro_time(now))
    return out


# -- the elector ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseConfig:
    """Which Lease the replicas share, who this replica is, and how long a lease lasts."""

    namespace: str
    name: str
    identity: str
    seconds: int


class LeaseApi(Protocol):
    async def get_lease(self, namespace: str, name: str) -> JSON | None: ...

    async def create_lease(self, namespace: str, body: JSON) -> JSON: ...

    async def replace_lease(self, namespace: str, name: str, body: JSON) -> JSON: ...


def _ignore(*_: object) -> None:
    return None


class LeaderElector:
    """Holds (or waits for) the Lease and runs ``lead`` exactly while holding it.

    ``on_leading(bool)`` hears every change of leadership and ``on_error(kind)`` every failure
    ("api": a request; "internal": the leader's work crashed and is started again)."""

    def __init__(self, api: LeaseApi, lease: LeaseConfig,
                 lead: Callable[[], Coroutine[Any, Any, None]],
                 clock: Callable[[], float] = time.monotonic,
                 on_leading: Callable[[bool], None] = _ignore,
                 on_error: Callable[[str], None] = _ignore) -> None:
        self.api, self.lease, self.lead, self.clock = api, lease, lead, clock
        self.on_leading, self.on_error = on_leading, on_error
        self.timing = Timing.for_lease(lease.seconds)
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
        except (ApiError, *TRANSPORT_ERRORS) as exc:
            log.warning("lease %s/%s: %s", self.lease.namespace, self.lease.name, exc)
            self.on_error("api")
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
        ns, name, me = self.lease.namespace, self.lease.name, self.lease.identity
        obj = await self.api.get_lease(ns, name)
        record = LeaseRecord.from_object(obj) if obj is not None else None
        unchanged = self.observer.unchanged_for(record, self.clock()) if record else 0.0
        action = decide(record, me, unchanged)
        if action is Action.WAIT:
            return False
        wall = datetime.datetime.now(datetime.UTC)
        seconds = self.lease.seconds
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
                    self.on_error("internal")
        else:
            self.transitions += 1
            log.info("%s is the leader now", self.lease.identity)
        self.task = asyncio.create_task(self.lead())
        self.on_leading(True)

    async def step_down(self, why: str) -> None:
        task, self.task = self.task, None
        if task is None:
            return
        log.info("%s stops leading: %s", self.lease.identity, why)
        self.on_leading(False)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def release(self) -> None:
        """Hand the lease over at once on a clean shutdown (only if it is still ours)."""
        ns, name = self.lease.namespace, self.lease.name
        with contextlib.suppress(ApiError, *TRANSPORT_ERRORS):
            obj = await self.api.get_lease(ns, name)
            if obj is not None and LeaseRecord.from_object(obj).holder == self.lease.identity:
                wall = datetime.datetime.now(datetime.UTC)
                await self.api.replace_lease(ns, name, released(obj, wall))
                log.info("released lease %s/%s", ns, name)

    def healthy(self) -> bool:
        """The election loop still turns. The limit outlasts two timed-out API requests: an
        unreachable API server is no reason to restart the pod, a wedged loop is."""
        limit = self.lease.seconds + 2 * REQUEST_TIMEOUT_SECONDS
        return self.clock() - self.last_tick < limit
