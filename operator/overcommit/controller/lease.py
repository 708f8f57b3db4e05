"""Pure leader election on a coordination.k8s.io/v1 Lease (the rules client-go's elector uses).

A replica holds the lease while it renews ``renewTime`` within ``leaseDurationSeconds``. A
candidate takes it over when the lease is free (no holder: the leader released it on shutdown)
or when the lease has not changed for a whole lease duration *as measured on the candidate's own
monotonic clock*: another machine's timestamps are never compared with ours, so clock skew
cannot hand the lease to two replicas. Every write carries the resourceVersion it was decided
on, so of two candidates acting at once the API server lets exactly one win.
"""

from __future__ import annotations

import copy
import datetime
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
