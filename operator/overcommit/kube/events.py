"""Kubernetes Events: what a component means to say (:class:`EventIntent`) and the Event object
that says it. Which intents a cycle or a fold produces is each component's own business
(``agent.events``, ``controller.events``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

NORMAL, WARNING = "Normal", "Warning"
MESSAGE_LIMIT = 1024  # what kubectl describe shows in full; Events are for people, not records


@dataclass(frozen=True)
class EventIntent:
    """An Event to post: its type, a CamelCase reason and a message."""

    type: str
    reason: str
    message: str
    change: bool = False  # something happened (else: a fact that holds, posted once)


def event_body(namespace: str, involved: dict[str, Any], event_type: str, reason: str,
               message: str, component: str, host: str, stamp: str) -> dict[str, Any]:
    """A core/v1 Event about ``involved`` (its apiVersion, kind, name and uid)."""
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{involved['name']}.{uuid.uuid4().hex[:16]}",
                     "namespace": namespace},
        "involvedObject": involved, "type": event_type, "reason": reason,
        "message": message[:MESSAGE_LIMIT], "source": {"component": component, "host": host},
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        "reportingComponent": component, "reportingInstance": host,
    }
