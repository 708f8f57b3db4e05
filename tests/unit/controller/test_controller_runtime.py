"""The controller's shell without a cluster: batching of status writes, cleanup, and leader
election against an in-memory Lease with the API server's optimistic concurrency."""

from __future__ import annotations

import asyncio
import copy
from typing import Any, cast

import pytest

from overcommit.controller.api import ControllerApi
from overcommit.controller.fold import comparable, fold, policy_view
from overcommit.controller.reconciler import Controller, _Store
from overcommit.controller.settings import ControllerSettings
from overcommit.controller.sweep import sweep
from overcommit.kube.client import ApiError
from overcommit.kube.informer import Expired, Informer
from overcommit.kube.lease import Action, LeaderElector, LeaseRecord, Observer, Timing, decide
from overcommit.observability.metrics import ControllerMetrics
from testkit.cases import policy_document
from tests.unit.controller.test_controller_fold import state

JSON = dict[str, Any]
POOL = {"matchLabels": {"pool": "virt"}}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeApi:
    """Records status writes, deletions and Events; ``fail`` makes the next write fail,
    ``event_fail`` the next Event post."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, JSON]] = []
        self.deleted: list[tuple[str, str]] = []
        self.events: list[JSON] = []
        self.fail: Exception | None = None
        self.event_fail: Exception | None = None

    async def replace_policy_status(self, name: str, uid: str, status: JSON) -> JSON:
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        self.writes.append((name, copy.deepcopy(status)))
        return {}

    async def delete_node_state(self, name: str, uid: str) -> bool:
        self.deleted.append((name, uid))
        return True

    async def create_event(self, namespace: str, body: JSON) -> JSON:
        if self.event_fail is not None:
            exc, self.event_fail = self.event_fail, None
            raise exc
        self.events.append({"namespace": namespace, "involved": body["involvedObject"],
                            "type": body["type"], "reason": body["reason"],
                            "message": body["message"],
                            "component": body["source"]["component"],
                            "host": body["source"]["host"]})
        return body

    def reasons(self) -> list[str]:
        return [e["reason"] for e in self.events]


def settings(**overrides: Any) -> ControllerSettings:
    values: dict[str, Any] = {"identity": "me", "status_interval_seconds": 1.0,
                              "savings_interval_seconds": 10.0, "lease_seconds": 15}
    return ControllerSettings(**(values | overrides))


def policy_obj(generation: int = 1, status: JSON | None = None) -> JSON:
    doc = policy_document("p", {"nodeSelector": POOL, "ksm": {"enabled": True}})
    doc["metadata"].update(uid="uid-p", generation=generation)
    if status is not None:
        doc["status"] = status
    return doc


def node(name: str) -> JSON:
    return {"metadata": {"name": name, "labels": {"pool": "virt"}}}


def cluster(clock: Clock, api: FakeApi, merged: int = 100) -> Controller:
    ctl = Controller(cast(ControllerApi, api), settings(), clock=clock,
                     now=lambda: f"2026-01-01T00:00:{int(clock.now):02d}Z")
    for name in ("a", "b"):
        ctl.node_event("ADDED", node(name))
        ctl.state_event("ADDED", state(name, merged=merged))
    ctl.policy_event("ADDED", policy_obj())
    return ctl


def act(ctl: Controller) -> float | None:
    return asyncio.run(ctl.act())


def last_status(api: FakeApi) -> JSON:
    return api.writes[-1][1]


# -- status writes ---------------------------------------------------------------------------


def test_writes_are_batched_per_interval_and_never_repeat_an_unchanged_status() -> None:
    clock, api = Clock(), FakeApi()
    ctl = cluster(clock, api)
    assert act(ctl) is None
    assert len(api.writes) == 1 and last_status(api)["nodes"]["summary"] == "2/2"
    assert act(ctl) is None and len(api.writes) == 1  # nothing changed: nothing written

    clock.now = 0.4
    ctl.state_event("MODIFIED", state("b", merged=100, ready="False"))
    ctl.state_event("MODIFIED", state("a", merged=100, ready="False"))
    delay = act(ctl)
    assert len(api.writes) == 1 and delay == pytest.approx(0.6)  # due one interval after
    clock.now = 1.0
    act(ctl)
    assert len(api.writes) == 2 and last_status(api)["nodes"]["failed"] == 2  # both, one write

    # our own write comes back through the watch: not news
    ctl.policy_event("MODIFIED", policy_obj(status=last_status(api)))
    clock.now = 5.0
    assert act(ctl) is None and len(api.writes) == 2


def test_the_interval_stretches_with_the_nodes_every_write_fans_out_to() -> None:
    clock, api = Clock(), FakeApi()
    ctl = Controller(cast(ControllerApi, api), settings(status_fanout_per_second=2.0),
                     clock=clock, now=lambda: f"2026-01-01T00:00:{int(clock.now):02d}Z")
    for name in "abcdef":  # 6 agents watch the policy: 6 events per write, 2 allowed per s
        ctl.node_event("ADDED", node(name))
        ctl.state_event("ADDED", state(name))
    ctl.policy_event("ADDED", policy_obj())
    assert ctl.status_interval() == 3.0  # not the settings' 1 s
    act(ctl)
    assert len(api.writes) == 1
    clock.now = 1.0
    ctl.state_event("MODIFIED", state("b", ready="False"))
    assert act(ctl) == pytest.approx(2.0) and len(api.writes) == 1  # due 3 s after the fold
    clock.now = 3.0
    act(ctl)
    assert len(api.writes) == 2 and last_status(api)["nodes"]["failed"] == 1
    for name in "cdef":  # a small cluster again: back to the settings' floor
        ctl.node_event("DELETED", node(name))
    assert ctl.status_interval() == 1.0


def test_savings_alone_are_written_at_the_slower_pace() -> None:
    clock, api = Clock(), FakeApi()
    ctl = cluster(clock, api)
    act(ctl)
    clock.now = 11.0  # past the first savings interval of the policy (see the next test)
    ctl.state_event("MODIFIED", state("b", merged=100, ready="False"))  # news: written now
    act(ctl)
    assert len(api.writes) == 2
    clock.now = 13.0
    ctl.state_event("MODIFIED", state("a", merged=5000))
    assert act(ctl) == pytest.approx(8.0)  # due when the savings interval has passed
    assert len(api.writes) == 2
    clock.now = 14.0
    ctl.state_event("MODIFIED", state("b", merged=100))  # news again: written now
    act(ctl)
    assert len(api.writes) == 3
    assert last_status(api)["saved"]["mergedBytes"] == 5100  # the sums ride along


def test_a_new_or_changed_policy_shows_its_savings_at_once() -> None:
    """The demo's SAVED column: for a savings interval after the policy appears (or its
    generation changes) savings are written at the status pace, and a lever's first saving is
    news at any time."""
    clock, api = Clock(), FakeApi()
    ctl = cluster(clock, api, merged=0)
    act(ctl)
    assert last_status(api)["saved"]["totalBytes"] == 0
    clock.now = 2.0
    ctl.state_event("MODIFIED", state("a", merged=5000))
    act(ctl)
    assert len(api.writes) == 2 and last_status(api)["saved"]["totalBytes"] == 5000
    clock.now = 6.0  # still fresh: growth too is written at the status pace
    ctl.state_event("MODIFIED", state("a", merged=7000))
    act(ctl)
    assert len(api.writes) == 3
    clock.now = 12.0  # after the first savings interval: growth waits (written at 6)...
    ctl.state_event("MODIFIED", state("a", merged=9000))
    act(ctl)
    assert len(api.writes) == 3
    clock.now = 14.0  # ...but a lever's first saving does not
    ctl.state_event("MODIFIED", state("a", merged=9000, ballooned=100))
    act(ctl)
    assert len(api.writes) == 4 and last_status(api)["saved"]["balloonedBytes"] == 100
    clock.now = 22.0
    ctl.policy_event("MODIFIED", policy_obj(generation=2, status=last_status(api)))
    act(ctl)  # a changed policy: written (its generation), and fresh again
    assert len(api.writes) == 5
    clock.now = 27.0
    ctl.state_event("MODIFIED", state("a", merged=9500, ballooned=100, generation=2))
    act(ctl)
    assert len(api.writes) == 6 and last_status(api)["saved"]["totalBytes"] == 9600


def test_a_spec_change_is_folded_at_once_with_its_generation() -> None:
    clock, api = Clock(), FakeApi()
    ctl = cluster(clock, api)
    act(ctl)
    clock.now = 1.5
    ctl.policy_event("MODIFIED", policy_obj(generation=2, status=last_status(api)))
    act(ctl)
    status = last_status(api)
    assert status["observedGeneration"] == 2
    assert [c["observedGeneration"] for c in status["conditions"]] == [2, 2, 2]
    reconciling = next(c for c in status["conditions"] if c["type"] == "Reconciling")
    assert reconciling["status"] == "True"


def test_a_new_leader_adopts_an_equal_status_without_writing() -> None:
    clock, api = Clock(), FakeApi()
    first = cluster(clock, api)
    act(first)
    written = last_status(api)
    clock.now = 30.0
    successor = Controller(cast(ControllerApi, api), settings(), clock=clock)
    for name in ("a", "b"):
        successor.node_event("ADDED", node(name))
        successor.state_event("ADDED", state(name, merged=100))
    successor.policy_event("ADDED", policy_obj(status=written))
    assert act(successor) is None and len(api.writes) == 1
    assert api.reasons() == ["PolicyReady"]  # the first leader's; the successor adds none


def test_failed_writes_retry_unless_the_policy_is_gone_or_replaced() -> None:
    clock, api = Clock(), FakeApi()
    ctl = cluster(clock, api)
    api.fail = ApiError(500, '{"message": "etcd timeout"}', "PATCH")
    assert act(ctl) == pytest.approx(settings().retry_seconds)
    clock.now = settings().retry_seconds
    act(ctl)
    assert len(api.writes) == 1
    clock.now = 10.0
    ctl.state_event("MODIFIED", state("a", ready="False"))
    api.fail = ApiError(422, '{"message": "test operation failed"}', "PATCH")
    assert act(ctl) is None and len(api.writes) == 1  # the watch will bring the new policy


# -- events ----------------------------------------------------------------------------------


def test_events_follow_the_written_status_once_each() -> None:
    clock, api = Clock(), FakeApi()
    metrics = ControllerMetrics()
    ctl = Controller(cast(ControllerApi, api), settings(), clock=clock, metrics=metrics)
    for name in ("a", "b"):
        ctl.node_event("ADDED", node(name))
        ctl.state_event("ADDED", state(name, merged=100))
    ctl.policy_event("ADDED", policy_obj())
    act(ctl)
    assert api.events == [{
        "namespace": "default", "type": "Normal", "reason": "PolicyReady",
        "message": "Applied: generation 1 applied on 2 of 2 matched node(s)",
        "involved": {"apiVersion": "memoryovercommit.io/v1alpha1",
                     "kind": "MemoryOvercommitPolicy", "name": "p", "uid": "uid-p"},
        "component": "memory-overcommit-controller", "host": "me"}]
    clock.now = 1.0
    ctl.state_event("MODIFIED", state("b", merged=100, ready="False"))
    act(ctl)
    assert api.reasons() == ["PolicyReady", "PolicyStalled", "NodeProblem"]
    # the same facts over several intervals, the echo of our write, savings drifting: no Event
    ctl.policy_event("MODIFIED", policy_obj(status=last_status(api)))
    for step in range(2, 15):
        clock.now = float(step)
        ctl.state_event("MODIFIED", state("a", merged=100 + step))
        act(ctl)
    # (the drifting sums are written at the status pace in the policy's first savings
    # interval, at the savings pace after it; never as Events)
    assert len(api.writes) >= 3 and api.reasons() == ["PolicyReady", "PolicyStalled",
                                                      "NodeProblem"]
    assert metrics.registry.get_sample_value(
        "overcommit_controller_events_total", {"type": "Warning", "reason": "NodeProblem"}) == 1
    assert ctl.health()["eventsPosted"] == 3


def test_no_event_before_the_status_is_written() -> None:
    clock, api = Clock(), FakeApi()
    ctl = cluster(clock, api)
    api.fail = ApiError(500, '{"message": "etcd timeout"}', "PATCH")
    act(ctl)
    assert api.writes == [] and api.events == []
    clock.now = settings().retry_seconds
    act(ctl)
    assert api.reasons() == ["PolicyReady"]


def failing_node() -> tuple[Clock, FakeApi, ControllerMetrics, Controller]:
    """A controller whose next pass writes a status with news: the policy's one node fails."""
    clock, api = Clock(), FakeApi()
    metrics = ControllerMetrics()
    ctl = Controller(cast(ControllerApi, api), settings(), clock=clock, metrics=metrics)
    ctl.node_event("ADDED", node("a"))
    ctl.state_event("ADDED", state("a", ready="False"))
    ctl.policy_event("ADDED", policy_obj())
    return clock, api, metrics, ctl


def test_a_refused_event_is_dropped_and_counted_and_the_controller_goes_on() -> None:
    clock, api, metrics, ctl = failing_node()
    api.event_fail = ApiError(403, '{"message": "forbidden"}', "POST")
    act(ctl)
    assert len(api.writes) == 1 and api.reasons() == ["NodeProblem"]  # the refused one went
    assert metrics.registry.get_sample_value("overcommit_controller_errors_total",
                                             {"kind": "api"}) == 1
    assert metrics.registry.get_sample_value(
        "overcommit_controller_events_dropped_total",
        {"type": "Warning", "reason": "PolicyStalled", "cause": "refused"}) == 1
    clock.now = 1.0
    ctl.state_event("MODIFIED", state("a"))
    act(ctl)  # the controller goes on: the next change is written and posted
    assert len(api.writes) == 2 and api.reasons()[-1] == "NodeRecovered"


def test_an_event_that_fails_for_now_is_posted_at_the_next_pass_in_order() -> None:
    clock, api, metrics, ctl = failing_node()
    api.event_fail = ApiError(429, '{"message": "too many requests"}', "POST")
    delay = act(ctl)
    assert len(api.writes) == 1 and api.events == []
    meant = [body["reason"] for body in ctl.outbox.pending]
    assert meant and metrics.registry.get_sample_value(
        "overcommit_controller_events_pending") == len(meant)
    # Nothing else is due: the controller comes back for them after its retry interval.
    assert delay == settings().retry_seconds
    # Passes before then (every changed node state wakes the controller) do not try them.
    clock.now = delay / 2
    ctl.state_event("MODIFIED", state("a", ready="False"))
    assert act(ctl) == pytest.approx(delay / 2)
    assert api.events == []
    clock.now = delay
    act(ctl)
    assert api.reasons() == meant and len(api.writes) == 1
    assert metrics.registry.get_sample_value("overcommit_controller_events_pending") == 0


def test_events_still_waiting_when_leadership_is_lost_are_given_up_on() -> None:
    _, api, metrics, ctl = failing_node()
    api.event_fail = ApiError(503, '{"message": "etcd is down"}', "POST")
    act(ctl)
    waiting = len(ctl.outbox.pending)
    assert waiting
    ctl._reset()  # lead()'s end: this replica no longer leads
    assert not ctl.outbox.pending
    assert metrics.registry.get_sample_value("overcommit_controller_events_pending") == 0
    dropped = [s for m in metrics.registry.collect()
               if m.name == "overcommit_controller_events_dropped" for s in m.samples
               if s.name.endswith("_total")]
    assert {s.labels["cause"] for s in dropped} == {"leadership"}
    assert sum(s.value for s in dropped) == waiting


# -- cleanup ---------------------------------------------------------------------------------


def test_the_state_of_a_deleted_node_is_deleted_with_its_uid() -> None:
    clock, api = Clock(), FakeApi()
    ctl = cluster(clock, api)
    act(ctl)
    ctl.node_event("DELETED", node("b"))
    clock.now = 2.0
    act(ctl)
    assert api.deleted == [("b", "state-b")]
    assert last_status(api)["nodes"]["matched"] == 1  # and the policy no longer counts it


def test_a_node_that_comes_back_keeps_its_state() -> None:
    clock, api = Clock(), FakeApi()
    ctl = cluster(clock, api)
    ctl.node_event("DELETED", node("b"))
    ctl.node_event("ADDED", node("b"))
    act(ctl)
    assert api.deleted == []


def test_a_stray_is_deleted_on_its_second_sighting_only() -> None:
    nodes: dict[str, object] = {"a": {}}
    doomed, suspects = sweep({"a", "x", "y"}, nodes, set())
    assert (doomed, suspects) == (set(), {"x", "y"})
    # y's node showed up meanwhile (its Node event was late); x is still a stray
    doomed, suspects = sweep({"a", "x", "y"}, {"a": {}, "y": {}}, suspects)
    assert (doomed, suspects) == ({"x"}, set())


# -- leader election -------------------------------------------------------------------------


class FakeLeases:
    """One Lease with the API server's rules: create fails if it exists, a replace fails
    unless it carries the current resourceVersion."""

    def __init__(self) -> None:
        self.obj: JSON | None = None
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise OSError("connection refused")

    async def get_lease(self, namespace: str, name: str) -> JSON | None:
        self._check()
        return copy.deepcopy(self.obj)

    async def create_lease(self, namespace: str, body: JSON) -> JSON:
        self._check()
        if self.obj is not None:
            raise ApiError(409, '{"message": "already exists"}', "POST")
        return self._store(body)

    async def replace_lease(self, namespace: str, name: str, body: JSON) -> JSON:
        self._check()
        assert self.obj is not None
        if body["metadata"].get("resourceVersion") != self.obj["metadata"]["resourceVersion"]:
            raise ApiError(409, '{"message": "the object has been modified"}', "PUT")
        return self._store(body)

    def _store(self, body: JSON) -> JSON:
        self.version += 1
        self.obj = copy.deepcopy(body)
        self.obj["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.obj)

    @property
    def holder(self) -> str | None:
        return None if self.obj is None else self.obj["spec"].get("holderIdentity")


class Replica:
    def __init__(self, leases: FakeLeases, clock: Clock, name: str, seconds: int = 15) -> None:
        self._working = False
        self.elector = LeaderElector(leases, settings(identity=name, lease_seconds=seconds).lease(),
                                     self.work, clock=clock)

    def working(self) -> bool:
        """A call, not an attribute: mypy would keep an asserted value across the awaits."""
        return self._working

    async def work(self) -> None:
        self._working = True
        try:
            await asyncio.Event().wait()
        finally:
            self._working = False


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_one_leader_and_the_standby_takes_over_after_the_lease_expires() -> None:
    async def scenario() -> None:
        leases, clock = FakeLeases(), Clock()
        a, b = Replica(leases, clock, "a"), Replica(leases, clock, "b")
        await asyncio.gather(a.elector.step(), b.elector.step())  # both race to create
        await settle()
        assert [a.working(), b.working()].count(True) == 1
        leader, standby = (a, b) if a.working() else (b, a)
        for _ in range(3):  # the leader renews, the standby waits
            clock.now += 2
            await leader.elector.step()
            await standby.elector.step()
        assert leases.obj is not None and leases.obj["spec"]["leaseTransitions"] == 0
        # the leader dies (stops renewing): the standby waits one whole lease duration
        died = clock.now
        while clock.now - died < 14:
            clock.now += 2
            await standby.elector.step()
            await settle()
            assert not standby.working()
        clock.now = died + 16
        await standby.elector.step()
        await settle()
        assert standby.working() and leases.holder == standby.elector.lease.identity
        assert leases.obj["spec"]["leaseTransitions"] == 1
        # the old leader wakes up (a paused process): it sees it lost and stops working
        await leader.elector.step()
        await settle()
        assert not leader.working() and leases.holder == standby.elector.lease.identity
        await standby.elector.step_down("test over")

    asyncio.run(scenario())


def test_a_leader_that_cannot_renew_stops_before_the_lease_can_expire() -> None:
    async def scenario() -> None:
        leases, clock = FakeLeases(), Clock()
        a = Replica(leases, clock, "a")
        await a.elector.step()
        await settle()
        assert a.working()
        leases.down = True
        timing = Timing.for_lease(15)
        clock.now = timing.renew_deadline - 0.5
        await a.elector.step()
        await settle()
        assert a.working()  # a short outage does not interrupt the leader
        clock.now = timing.renew_deadline + 0.1
        await a.elector.step()
        await settle()
        assert not a.working() and timing.renew_deadline < 15

    asyncio.run(scenario())


def test_a_clean_shutdown_hands_the_lease_over_at_once() -> None:
    async def scenario() -> None:
        leases, clock = FakeLeases(), Clock()
        a, b = Replica(leases, clock, "a", seconds=2), Replica(leases, clock, "b", seconds=2)
        stop = asyncio.Event()
        running = asyncio.create_task(a.elector.run(stop))
        async with asyncio.timeout(5):
            while not a.working():
                await asyncio.sleep(0.01)
        await b.elector.step()
        assert not b.working()
        stop.set()
        await running
        assert not a.working() and leases.holder is None
        await b.elector.step()  # no waiting for the lease to expire
        await settle()
        assert b.working()
        await b.elector.step_down("test over")

    asyncio.run(scenario())


def test_decisions() -> None:
    record = LeaseRecord(holder="other", duration=15, renew_time="t", resource_version="1")
    assert decide(None, "me", 0) is Action.CREATE
    assert decide(record, "other", 0) is Action.RENEW
    assert decide(record, "me", 14.9) is Action.WAIT
    assert decide(record, "me", 15) is Action.ACQUIRE
    free = LeaseRecord(holder=None, duration=1, renew_time="t", resource_version="2")
    assert decide(free, "me", 0) is Action.ACQUIRE
    observer = Observer()
    assert observer.unchanged_for(record, 100.0) == 0
    assert observer.unchanged_for(record, 110.0) == 10
    renewed = LeaseRecord(holder="other", duration=15, renew_time="t2", resource_version="3")
    assert observer.unchanged_for(renewed, 111.0) == 0  # a renewal restarts the count


def test_fold_output_is_what_gets_written() -> None:
    clock, api = Clock(), FakeApi()
    ctl = cluster(clock, api)
    act(ctl)
    expected = fold(ctl.policies["p"], ctl.reports, ctl.nodes, "whenever")
    assert comparable(policy_view({"status": last_status(api)}).status) == comparable(expected)


def test_a_spec_change_during_a_write_is_not_lost() -> None:
    clock, api = Clock(), FakeApi()
    ctl = cluster(clock, api)

    class SlowApi(FakeApi):
        async def replace_policy_status(self, name: str, uid: str, status: JSON) -> JSON:
            ctl.policy_event("MODIFIED", policy_obj(generation=2))  # arrives mid-write
            return await super().replace_policy_status(name, uid, status)

    ctl.api = cast(ControllerApi, SlowApi())
    act(ctl)
    assert ctl.policies["p"].generation == 2
    clock.now = 1.0
    act(ctl)
    written = cast(FakeApi, ctl.api).writes
    assert [w[1]["observedGeneration"] for w in written] == [1, 2]


def test_churn_folds_each_policy_at_most_once_per_interval() -> None:
    clock, api = Clock(), FakeApi()
    ctl = cluster(clock, api)
    act(ctl)
    folds = 0
    for step in range(1, 41):  # 40 counter changes within 4 status intervals
        clock.now = 11 + step * 0.1  # after the policy's first savings interval
        ctl.state_event("MODIFIED", state("a", merged=100 + step))
        before = ctl.last_fold.get("p")
        act(ctl)
        folds += ctl.last_fold.get("p") != before
    assert folds <= 4
    # savings alone wait for the savings interval: written once when it allows (10 s after
    # the first write), then not again within these 4 s
    assert len(api.writes) == 2


class RelistApi:
    """Lists from a script of pages, one list per call; every watch expires at once (410)."""

    def __init__(self, *lists: list[JSON]) -> None:
        self.lists = list(lists)

    async def get(self, path: str, params: JSON, accept: str) -> JSON:
        return {"items": self.lists.pop(0), "metadata": {"resourceVersion": "7"}}

    async def watch(self, path: str, params: JSON, accept: str) -> Any:
        yield {"type": "ERROR", "object": {"code": 410, "message": "too old"}}


def test_a_relist_forgets_what_was_deleted_while_no_watch_was_open() -> None:
    """Node b and its state vanish while the watch is gone: the relist after the 410 must turn
    them into DELETED events, or the policy would count b for ever."""
    ctl = cluster(Clock(), FakeApi())
    api = RelistApi([node("a"), node("b")], [node("a")])
    informer = Informer(cast(ControllerApi, api), "/api/v1/nodes",
                        _Store(ctl.node_event, lambda: ctl.nodes))

    async def scenario() -> None:
        version = await informer.relist()
        with pytest.raises(Expired):
            await informer.follow(version)
        await informer.relist()

    asyncio.run(scenario())
    assert set(ctl.nodes) == {"a"}
