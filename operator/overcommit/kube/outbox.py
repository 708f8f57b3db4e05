"""Events that could not be posted yet, posted again later (agent and controller alike).

An Event is best effort, but "best effort" must not mean "the first 429 loses it": a policy
change makes every agent of a cluster post at the same moment, and API Priority and Fairness
rejects a third of those posts or more (bench.scale measured 33-41 % at 5,000 nodes when each
was tried once). So every Event goes through an outbox:

- its body, its name included, is made when it is meant, so it keeps the time it happened
  however late it is posted, and a retry of a post that did land (an answer lost to a timeout)
  meets 409 AlreadyExists instead of posting it twice;
- the outbox posts in order and stops at the first failure worth retrying (429, 5xx, no
  answer): the rest would most likely fail and wait the same way, and order is kept;
- a post the API server refuses for good (403, 422, a missing namespace) is dropped at once:
  trying it again would fail again;
- it holds at most ``capacity`` Events; beyond, the oldest go first. An API server down for
  hours must not grow a node daemon without bound, and the newest news matters most.

The caller flushes at its own pace (the agent each cycle, the controller each pass), which
is the retry's backoff.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import kopf

from overcommit.kube.client import JSON, TRANSPORT_ERRORS, ApiError
from overcommit.kube.clock import now_rfc3339
from overcommit.kube.events import EventIntent, event_body

OUTBOX_CAPACITY = 100  # a few cycles' news of a node, or of the controller's policies
ALREADY_EXISTS = 409
# No answer, or no credentials yet (a token being rotated): the same post may work later.
RETRYABLE_ERRORS = (*TRANSPORT_ERRORS, kopf.LoginError)

Post = Callable[[str, JSON], Awaitable[Any]]  # (namespace, Event body)
OnPosted = Callable[[str, str], None]  # (type, reason)
# (type, reason, cause) of an Event given up on: "refused" by the API server, "overflow",
# "error" (an unexpected exception), or what the caller names in :meth:`EventOutbox.discard`.
OnDropped = Callable[[str, str, str], None]


class EventOutbox:
    """Events in the order they were meant, posted through ``post`` by :meth:`flush`."""

    def __init__(self, post: Post, *, component: str, host: str,
                 on_posted: OnPosted = lambda event_type, reason: None,
                 on_dropped: OnDropped = lambda event_type, reason, cause: None,
                 capacity: int = OUTBOX_CAPACITY) -> None:
        self.post, self.component, self.host = post, component, host
        self.on_posted, self.on_dropped = on_posted, on_dropped
        self.capacity = capacity
        self.pending: deque[JSON] = deque()
        self.failed_attempts = 0  # posts that failed for now (the Event was kept)
        self._flushing = asyncio.Lock()  # one flush at a time: each posts the head
        self._in_flight: JSON | None = None  # the head being posted

    def add(self, namespace: str, involved: JSON, news: Iterable[EventIntent],
            stamp: str | None = None) -> None:
        """Queue ``news`` about ``involved``, stamped ``stamp`` (RFC 3339; default now)."""
        stamp = stamp or now_rfc3339()
        for item in news:
            self.pending.append(event_body(namespace, involved, item.type, item.reason,
                                           item.message, self.component, self.host, stamp))
            if len(self.pending) > self.capacity:
                # The oldest goes, unless it is on its way: then the one after it.
                oldest = 1 if self.pending[0] is self._in_flight else 0
                body = self.pending[oldest]
                del self.pending[oldest]
                self._drop(body, "overflow")

    def discard(self, cause: str) -> None:
        """Give up on everything pending (counted under ``cause``)."""
        while self.pending:
            self._drop(self.pending.popleft(), cause)

    async def flush(self) -> Exception | None:
        """Post what is pending, in order. Returns the last failure met (None: none): a
        retryable one stops the flush and keeps the Events from there on."""
        async with self._flushing:
            failure: Exception | None = None
            while self.pending:
                body = self._in_flight = self.pending[0]
                try:
                    await self.post(body["metadata"]["namespace"], body)
                except ApiError as exc:
                    if exc.status != ALREADY_EXISTS:  # else: an earlier attempt did land
                        if retryable(exc):
                            self.failed_attempts += 1
                            return exc
                        failure = exc
                        self._done(body, "refused")
                        continue
                except RETRYABLE_ERRORS as exc:
                    self.failed_attempts += 1
                    return exc
                except Exception as exc:  # a bug: retrying would block every later Event
                    failure = exc
                    self._done(body, "error")
                    continue
                finally:
                    self._in_flight = None
                self._done(body)
            return failure

    def _done(self, body: JSON, dropped: str | None = None) -> None:
        """``body``, the head, was posted (or given up on: ``dropped``); a :meth:`discard`
        while it was on its way has taken it off already."""
        if self.pending and self.pending[0] is body:
            self.pending.popleft()
        if dropped is None:
            self.on_posted(body["type"], body["reason"])
        else:
            self._drop(body, dropped)

    def _drop(self, body: JSON, cause: str) -> None:
        self.on_dropped(body["type"], body["reason"], cause)


def retryable(exc: ApiError) -> bool:
    """Whether the same request may succeed later: throttled (429) or a server-side failure
    (5xx), not a refusal of the request itself."""
    return exc.status == 429 or exc.status >= 500
