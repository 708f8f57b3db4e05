"""Which Events a policy's status change deserves: transitions only, each fact once, and a
bounded number per fold whatever the number of nodes that move."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from overcommit.api.schema import to_json
from overcommit.api.status import PolicyStatus
from overcommit.controller.events import MAX_EVENTS, MAX_NODE_EVENTS, policy_news
from overcommit.controller.fold import MAX_PROBLEMS, fold, policy_view
from overcommit.kube.events import EventIntent
from tests.unit.controller.test_controller_fold import policy, reports, state, virt_nodes

JSON = dict[str, Any]
T = "2026-01-01T00:00:00Z"


def failing(node: str, reason: str = "KsmManagedElsewhere") -> JSON:
    return state(node, degraded=("True", reason, f"{reason} on {node}"))


class Policy:
    """Folds one policy step by step; each step's news compares it with the previous status,
    as the controller does after each write."""

    def __init__(self, *names: str) -> None:
        self.nodes = virt_nodes(*names)
        self.status = PolicyStatus()
        self.generation = 1

    def step(self, *objs: JSON) -> list[EventIntent]:
        new = fold(policy(generation=self.generation, status=to_json(self.status)),
                   reports(*objs), self.nodes, T)
        news, self.status = policy_news(self.status, new), new
        return news


def summary(news: list[EventIntent]) -> list[tuple[str, str]]:
    return [(n.type, n.reason) for n in news]


def test_a_failing_node_stalls_the_policy_once_and_its_fix_makes_it_ready_once() -> None:
    p = Policy("a", "b")
    assert summary(p.step(state("a"), state("b"))) == [("Normal", "PolicyReady")]
    broken = p.step(state("a"), failing("b"))
    # Stalled explains Ready=False: one policy Event, not two
    assert summary(broken) == [("Warning", "PolicyStalled"), ("Warning", "NodeProblem")]
    assert broken[0].message.startswith("KsmManagedElsewhere: 1 node(s) report problems")
    assert broken[1].message == "b: KsmManagedElsewhere: KsmManagedElsewhere on b"
    for _ in range(3):  # the same fact, folded again and again
        assert p.step(state("a"), failing("b")) == []
    fixed = p.step(state("a"), state("b"))
    assert summary(fixed) == [("Normal", "PolicyReady"), ("Normal", "NodeRecovered")]
    assert fixed[1].message == "b no longer reports a problem (was KsmManagedElsewhere)"
    assert p.step(state("a"), state("b")) == []


def test_a_new_policy_progresses_then_is_ready() -> None:
    p = Policy("a", "b")
    pending = p.step(state("a"))
    assert summary(pending) == [("Normal", "PolicyNotReady")]
    assert pending[0].message.startswith("Progressing: 1 node(s) have not reported")
    assert summary(p.step(state("a"), state("b"))) == [("Normal", "PolicyReady")]


def test_leaving_stalled_without_becoming_ready_says_so() -> None:
    p = Policy("a", "b", "c")
    p.step(state("a"), failing("b"), state("c"))
    news = p.step(state("a"), state("b"))  # b fixed, c gone quiet (not reported: pending)
    assert summary(news) == [("Normal", "PolicyNotStalled"), ("Normal", "NodeRecovered")]
    assert "Ready is False: Progressing" in news[0].message


def test_a_changed_reason_is_news_about_the_node_not_a_recovery() -> None:
    p = Policy("a")
    p.step(failing("a"))
    news = p.step(failing("a", "EngineMissing"))
    assert summary(news) == [("Warning", "NodeProblem")]
    assert news[0].message.startswith("a: EngineMissing (was KsmManagedElsewhere): ")


def test_a_new_generation_does_not_call_pending_nodes_recovered() -> None:
    p = Policy("a", "b")
    p.step(state("a"), failing("b"))
    p.generation = 2  # the spec changed: b has not reported generation 2 yet
    news = p.step(state("a", generation=2), failing("b"))
    assert summary(news) == [("Normal", "PolicyNotStalled")]
    assert "have not reported generation 2" in news[0].message
    # b reports generation 2 and still fails: a problem of the new generation is news
    again = p.step(state("a", generation=2), failing_at("b", 2))
    assert summary(again) == [("Warning", "PolicyStalled"), ("Warning", "NodeProblem")]


def failing_at(node: str, generation: int) -> JSON:
    return state(node, generation=generation,
                 degraded=("True", "KsmManagedElsewhere", f"KsmManagedElsewhere on {node}"))


def test_a_thousand_failing_nodes_make_one_summary() -> None:
    names = [f"n{i:04d}" for i in range(1000)]
    p = Policy(*names)
    p.step(*(state(n) for n in names))
    news = p.step(*(failing(n) for n in names))
    assert summary(news) == [("Warning", "PolicyStalled"), ("Warning", "NodeProblem")]
    assert news[1].message.startswith("1000 node(s) report problems now (0 before); newly "
                                      "failing include n0000, n0001, n0002, n0003, n0004")
    assert p.step(*(failing(n) for n in names)) == []
    healed = p.step(*(state(n) for n in names))
    assert summary(healed) == [("Normal", "PolicyReady"), ("Normal", "NodeRecovered")]
    assert healed[1].message.startswith("0 node(s) report problems now (1000 before)")


def test_more_than_a_few_moving_nodes_are_summarised_even_when_all_are_listed() -> None:
    names = [f"n{i}" for i in range(MAX_NODE_EVENTS + 1)]
    p = Policy(*names)
    p.step(*(state(n) for n in names))
    news = p.step(*(failing(n) for n in names))
    assert [n.reason for n in news].count("NodeProblem") == 1


def test_only_what_the_cut_list_proves_is_posted() -> None:
    """30 nodes fail, 20 are listed. When the first recovers, the 21st moves into the list:
    it failed before too, so that is no news."""
    names = [f"n{i:02d}" for i in range(30)]
    p = Policy(*names)
    p.step(*(failing(n) for n in names))
    news = p.step(state(names[0]), *(failing(n) for n in names[1:]))
    assert [(n.reason, n.message.split(" ")[0]) for n in news] == [("NodeRecovered", "n00")]
    assert (p.status.problems or [])[-1].node == names[MAX_PROBLEMS]
    # nodes beyond the list recover: only the counts show it, in one summary
    news = p.step(state(names[0]), *(failing(n) for n in names[1:25]),
                  *(state(n) for n in names[25:]))
    assert summary(news) == [("Normal", "NodeRecovered")]
    assert news[0].message == "24 node(s) report problems now (29 before)"


def parsed(raw: JSON) -> PolicyStatus:
    """A policy's status as the controller reads it from the API."""
    return policy_view({"metadata": {"name": "p"}, "status": raw}).status


def test_deleted_status_or_garbage_does_not_break_the_decision() -> None:
    garbage = parsed({"conditions": "x", "problems": [1, None], "nodes": {"failed": True}})
    assert garbage == PolicyStatus()  # what the schema cannot vouch for is not read
    assert summary(policy_news(garbage, parsed({}))) == []
    assert summary(policy_news(parsed({"nodes": "x", "problems": "abc"}),
                               parsed({"nodes": []}))) == []
    assert summary(policy_news(parsed({}), parsed({"problems": [{"node": "a"}],
                                                   "nodes": {"failed": 3}}))) == \
        [("Warning", "NodeProblem")]


# -- properties ------------------------------------------------------------------------------

NODES = [f"node-{i}" for i in range(40)]
kinds = st.sampled_from(["ok", "ready-false", "missing", "pending"])


def node_object(name: str, kind: str) -> JSON | None:
    return {"ok": state(name), "ready-false": state(name, ready="False"),
            "missing": failing(name, "EngineMissing"),
            "pending": None}[kind]


def objects(cluster: dict[str, str]) -> list[JSON]:
    return [o for n, k in cluster.items() if (o := node_object(n, k)) is not None]


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.dictionaries(st.sampled_from(NODES), kinds), min_size=1, max_size=5))
def test_any_fold_posts_a_bounded_number_and_nothing_twice(steps: list[dict[str, str]]) -> None:
    p = Policy(*NODES)
    for cluster in steps:
        assert len(p.step(*objects(cluster))) <= MAX_EVENTS
        assert p.step(*objects(cluster)) == []  # folded again: nothing new


@settings(max_examples=60, deadline=None)
@given(flips=st.lists(st.tuples(st.sampled_from(NODES[:8]), kinds), min_size=1, max_size=12))
def test_events_one_at_a_time_track_exactly_the_failing_nodes(
        flips: list[tuple[str, str]]) -> None:
    """One node changing per fold: the last node Event of each node says whether it fails,
    and the last policy Event whether the policy is stalled."""
    p = Policy(*NODES[:8])
    cluster: dict[str, str] = {}
    last: dict[str, str] = {}
    stalled = False
    for node, kind in flips:
        cluster[node] = kind
        for item in p.step(*objects(cluster)):
            if item.reason in ("NodeProblem", "NodeRecovered"):
                last[item.message.split(":")[0].split(" ")[0]] = item.reason
            stalled = {"PolicyStalled": True, "PolicyNotStalled": False,
                       "PolicyReady": False}.get(item.reason, stalled)
        failing_now = {n for n, k in cluster.items() if k in ("ready-false", "missing")}
        assert {n for n, r in last.items() if r == "NodeProblem"} == failing_now
        assert stalled == bool(failing_now)
