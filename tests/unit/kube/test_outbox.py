"""The Event outbox: what fails for now is posted later, in order, once; what is refused for
good, or too old to keep, is dropped and counted."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import kopf
import pytest

from overcommit.kube.client import ApiError
from overcommit.kube.events import NORMAL, WARNING, EventIntent
from overcommit.kube.outbox import EventOutbox

JSON = dict[str, Any]
INVOLVED = {"apiVersion": "v1", "kind": "Thing", "name": "n1", "uid": "u1"}


class Server:
    """Records posted Events; answers each post with the next queued failure, if any."""

    def __init__(self) -> None:
        self.posted: list[JSON] = []
        self.failures: list[BaseException | None] = []

    async def post(self, namespace: str, body: JSON) -> JSON:
        failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            raise failure
        self.posted.append(body)
        return body

    def reasons(self) -> list[str]:
        return [body["reason"] for body in self.posted]


def outbox_on(server: Server, capacity: int = 100) -> tuple[EventOutbox, list[tuple[str, ...]]]:
    counted: list[tuple[str, ...]] = []
    outbox = EventOutbox(server.post, component="c", host="h", capacity=capacity,
                         on_posted=lambda t, r: counted.append(("posted", t, r)),
                         on_dropped=lambda t, r, cause: counted.append(("dropped", r, cause)))
    return outbox, counted


def news(*reasons: str) -> list[EventIntent]:
    return [EventIntent(NORMAL, reason, f"{reason} happened") for reason in reasons]


def flush(outbox: EventOutbox) -> Exception | None:
    return asyncio.run(outbox.flush())


@pytest.mark.parametrize("failure", [
    ApiError(429, '{"message": "too many requests"}', "POST"),
    ApiError(503, '{"message": "etcd is down"}', "POST"),
    aiohttp.ServerDisconnectedError(), TimeoutError(), ConnectionRefusedError(),
    kopf.LoginError("no token yet")])
def test_a_post_that_may_work_later_keeps_it_and_everything_after_in_order(
        failure: Exception) -> None:
    server = Server()
    outbox, counted = outbox_on(server)
    outbox.add("ns", INVOLVED, news("A", "B"))
    server.failures = [None, failure]
    assert flush(outbox) is failure
    assert server.reasons() == ["A"] and [b["reason"] for b in outbox.pending] == ["B"]
    outbox.add("ns", INVOLVED, news("C"))
    assert flush(outbox) is None
    assert server.reasons() == ["A", "B", "C"] and not outbox.pending
    assert outbox.failed_attempts == 1
    assert [c for c in counted if c[0] == "dropped"] == []


def test_a_retried_event_is_the_same_event_and_one_that_did_land_is_not_posted_twice() -> None:
    server = Server()
    outbox, counted = outbox_on(server)
    outbox.add("ns", INVOLVED, news("A"))
    server.failures = [TimeoutError()]
    flush(outbox)
    # The timed-out post had landed after all: the retry meets AlreadyExists.
    server.failures = [ApiError(409, '{"message": "already exists"}', "POST")]
    assert flush(outbox) is None
    assert not outbox.pending and counted == [("posted", NORMAL, "A")]
    outbox.add("ns", INVOLVED, news("B"))
    server.failures = [TimeoutError()]
    flush(outbox)
    first_try = dict(outbox.pending[0])
    flush(outbox)
    # Name and timestamps are fixed when the Event is meant, not when it finally goes out.
    assert server.posted[-1] == first_try


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_a_post_refused_for_good_is_dropped_and_the_rest_still_go(status: int) -> None:
    server = Server()
    outbox, counted = outbox_on(server)
    outbox.add("ns", INVOLVED, news("A", "B"))
    refusal = ApiError(status, '{"message": "no"}', "POST")
    server.failures = [refusal]
    assert flush(outbox) is refusal
    assert server.reasons() == ["B"] and not outbox.pending
    assert ("dropped", "A", "refused") in counted


def test_an_unexpected_error_drops_that_event_instead_of_blocking_the_rest() -> None:
    server = Server()
    outbox, counted = outbox_on(server)
    outbox.add("ns", INVOLVED, news("A", "B"))
    server.failures = [KeyError("bug")]
    assert isinstance(flush(outbox), KeyError)
    assert server.reasons() == ["B"] and ("dropped", "A", "error") in counted


def test_a_full_outbox_drops_the_oldest_and_says_so() -> None:
    server = Server()
    outbox, counted = outbox_on(server, capacity=3)
    outbox.add("ns", INVOLVED, news("A", "B", "C", "D", "E"))
    assert [b["reason"] for b in outbox.pending] == ["C", "D", "E"]
    assert [c for c in counted if c[0] == "dropped"] == [("dropped", "A", "overflow"),
                                                         ("dropped", "B", "overflow")]
    flush(outbox)
    assert server.reasons() == ["C", "D", "E"]


def test_each_event_keeps_its_namespace_object_type_and_source() -> None:
    server = Server()
    outbox, _ = outbox_on(server)
    outbox.add("ns1", INVOLVED, [EventIntent(WARNING, "Bad", "it broke")])
    flush(outbox)
    body = server.posted[0]
    assert body["metadata"]["namespace"] == "ns1" and body["involvedObject"] == INVOLVED
    assert (body["type"], body["reason"], body["message"]) == (WARNING, "Bad", "it broke")
    assert body["source"] == {"component": "c", "host": "h"}


def test_two_flushes_at_once_post_each_event_once_in_order() -> None:
    """Two tasks of one component may flush at the same moment (bench.scale's agents do):
    they take turns, so nobody posts the head the other one is posting."""
    server = Server()
    outbox, counted = outbox_on(server)
    gate = asyncio.Event()

    async def slow_post(namespace: str, body: JSON) -> JSON:
        await gate.wait()
        return await server.post(namespace, body)

    outbox.post = slow_post

    async def both() -> None:
        outbox.add("ns", INVOLVED, news("A", "B"))
        first = asyncio.create_task(outbox.flush())
        second = asyncio.create_task(outbox.flush())
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, second)

    asyncio.run(both())
    assert server.reasons() == ["A", "B"] and not outbox.pending
    assert [c for c in counted if c[0] == "dropped"] == []


def test_an_overflow_while_posting_drops_the_oldest_not_on_its_way() -> None:
    server = Server()
    outbox, counted = outbox_on(server, capacity=2)

    async def post_then_overflow(namespace: str, body: JSON) -> JSON:
        if body["reason"] == "A":
            outbox.add("ns", INVOLVED, news("C"))  # A (on its way), B, C: one too many
        return await server.post(namespace, body)

    outbox.post = post_then_overflow
    outbox.add("ns", INVOLVED, news("A", "B"))
    flush(outbox)
    # B, the oldest not on its way, went; A is posted once and counted once; C follows.
    assert server.reasons() == ["A", "C"] and not outbox.pending
    assert counted == [("dropped", "B", "overflow"), ("posted", NORMAL, "A"),
                       ("posted", NORMAL, "C")]


def test_discard_gives_up_on_everything_waiting_under_its_cause() -> None:
    server = Server()
    outbox, counted = outbox_on(server)
    outbox.add("ns", INVOLVED, news("A", "B"))
    outbox.discard("leadership")
    assert not outbox.pending
    assert counted == [("dropped", "A", "leadership"), ("dropped", "B", "leadership")]
