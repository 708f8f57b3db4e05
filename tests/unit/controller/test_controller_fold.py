"""The folding core: node states + nodes + a policy -> the policy's status, no cluster needed."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from overcommit.api.schema import openapi_schema, to_json, validate
from overcommit.api.status import PolicyRef, PolicyStatus, Saved
from overcommit.controller.fold import (
    MAX_PROBLEMS,
    NO_SAVINGS,
    NodeSummary,
    PolicyView,
    comparable,
    node_summary,
    policy_view,
    without_savings,
)
from overcommit.controller.fold import fold as fold_status
from testkit.cases import policy_document
from tests.unit.controller import kstatus

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
POOL = {"matchLabels": {"pool": "virt"}}
STATUS_SCHEMA = openapi_schema(PolicyStatus)


def policy(name: str = "p", generation: int = 1, status: dict[str, Any] | None = None,
           **spec: Any) -> PolicyView:
    doc = policy_document(name, {"nodeSelector": POOL, "ksm": {"enabled": True}, **spec})
    doc["metadata"].update(uid=f"uid-{name}", generation=generation)
    doc["status"] = status or {}
    return policy_view(doc)


def state(node: str, policy_name: str | None = "p", generation: int = 1, ready: str = "True",
          degraded: tuple[str, str, str] = ("False", "AsExpected", "no problems"),
          merged: int = 0, ballooned: int = 0, compressed: int = 0,
          overridden: tuple[str, ...] = (), uid: str | None = None,
          guests: int = 0) -> dict[str, Any]:
    """A node state shaped as the agent writes it."""
    status: dict[str, Any] = {
        "policy": None if policy_name is None else {
            "name": policy_name, "uid": uid or f"uid-{policy_name}", "generation": generation},
        "overridden": [{"name": o, "reason": "priority 1 is lower"} for o in overridden],
        "conditions": [
            {"type": "Ready", "status": ready,
             "reason": "Applied" if ready == "True" else "ApplyFailed",
             "message": "applied" if ready == "True" else "run: EBUSY: busy"},
            {"type": "Degraded", "status": degraded[0], "reason": degraded[1],
             "message": degraded[2]}],
        "saved": {"mergedBytes": merged, "mergingProfitBytes": merged // 2,
                  "balloonedBytes": ballooned, "compressedBytes": compressed,
                  "totalBytes": merged + ballooned + compressed},
        "guests": [{"domain": f"vm{i}", "maxBytes": 1 << 30} for i in range(guests)],
    }
    return {"metadata": {"name": node, "uid": f"state-{node}"}, "spec": {"nodeName": node},
            "status": status}


def reports(*objs: dict[str, Any]) -> dict[str, NodeSummary]:
    return {o["metadata"]["name"]: node_summary(o) for o in objs}


def fold(view: PolicyView, summaries: dict[str, NodeSummary], nodes: dict[str, Any],
         now: str) -> dict[str, Any]:
    """The folded status as the API server receives it."""
    status: dict[str, Any] = to_json(fold_status(view, summaries, nodes, now))
    return status


def virt_nodes(*names: str) -> dict[str, dict[str, str]]:
    return {n: {"pool": "virt", "kubernetes.io/hostname": n} for n in names}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == kind)
    return found


def as_object(view: PolicyView, status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": view.name, "generation": view.generation}, "status": status}


# -- node reports ----------------------------------------------------------------------------


def test_node_summary_keeps_only_what_folding_needs() -> None:
    report = node_summary(state("n1", merged=4096, ballooned=10, compressed=5,
                                overridden=("low",), guests=50))
    assert report == NodeSummary(node="n1", uid="state-n1", policy=PolicyRef("p", "uid-p", 1),
                                 overridden=("low",), ready=True, problem=None,
                                 saved=Saved(4096, 2048, 10, 5, 4111))
    assert report.policies() == {"p", "low"}


def test_node_summary_problems_come_from_ready_false_or_degraded_true() -> None:
    failed = node_summary(state("n1", ready="False"))
    assert failed.problem == ("ApplyFailed", "run: EBUSY: busy") and failed.ready is False
    degraded = node_summary(state("n1", degraded=("True", "ZswapMissing", "no zswap here")))
    assert degraded.problem == ("ZswapMissing", "no zswap here") and degraded.ready is True
    # InvalidPolicy on a node is about another policy the agent could not parse
    foreign = node_summary(state("n1", degraded=("True", "InvalidPolicy", "q: spec.ksm: bad")))
    assert foreign.problem is None


def test_node_summary_of_a_fresh_state_reports_nothing() -> None:
    report = node_summary({"metadata": {"name": "n1", "uid": "u"}, "spec": {"nodeName": "n1"}})
    assert (report.policy, report.ready, report.problem, report.saved) == \
        (None, None, None, NO_SAVINGS)


# -- counts, sums, problems ------------------------------------------------------------------


def test_counts_and_sums_over_the_nodes_in_force() -> None:
    view = policy()
    states = reports(state("a", merged=100, ballooned=7), state("b", merged=50, compressed=3),
                     state("c", policy_name="high", overridden=("p",), merged=999),
                     state("d", ready="False", merged=1))
    status = fold(view, states, virt_nodes("a", "b", "c", "d", "e") | {"x": {"pool": "web"}}, T0)
    assert status["nodes"] == {"matched": 5, "applied": 2, "failed": 1, "overridden": 1,
                               "summary": "2/5"}
    assert status["saved"] == {"mergedBytes": 151, "mergingProfitBytes": 50 + 25 + 0,
                               "balloonedBytes": 7, "compressedBytes": 3, "totalBytes": 161,
                               "summary": "161B"}
    assert status["problems"] == [{"node": "d", "reason": "ApplyFailed",
                                   "message": "run: EBUSY: busy"}]
    assert validate(status, STATUS_SCHEMA, "status") == []


def test_a_failing_node_stalls_the_policy_as_kstatus_prescribes() -> None:
    view = policy()
    status = fold(view, reports(state("a"), state("b", degraded=(
        "True", "KsmManagedElsewhere", "KSM is managed by KubeVirt"))), virt_nodes("a", "b"), T0)
    ready, stalled = condition(status, "Ready"), condition(status, "Stalled")
    assert (ready["status"], ready["reason"]) == ("False", "KsmManagedElsewhere")
    assert (stalled["status"], stalled["reason"]) == ("True", "KsmManagedElsewhere")
    assert condition(status, "Reconciling")["status"] == "False"
    assert "b: KsmManagedElsewhere: KSM is managed by KubeVirt" in ready["message"]
    assert kstatus.compute(as_object(view, status)) == kstatus.FAILED


def test_fixing_the_node_clears_the_problem() -> None:
    view = policy()
    bad = fold(view, reports(state("a", ready="False")), virt_nodes("a"), T0)
    fixed = fold(replace(view, status=policy_view({"status": bad}).status),
                 reports(state("a")), virt_nodes("a"), T1)
    assert fixed["problems"] == [] and fixed["nodes"]["failed"] == 0
    assert (condition(fixed, "Ready")["status"], condition(fixed, "Stalled")["status"]) == \
        ("True", "False")
    assert kstatus.compute(as_object(view, fixed)) == kstatus.CURRENT


def test_nodes_behind_the_current_generation_are_reconciling() -> None:
    view = policy(generation=3)
    status = fold(view, reports(state("a", generation=3), state("b", generation=2)),
                  virt_nodes("a", "b", "c"), T0)
    reconciling = condition(status, "Reconciling")
    assert (reconciling["status"], reconciling["reason"]) == ("True", "Progressing")
    assert "2 node(s) have not reported generation 3" in reconciling["message"]
    assert "b, c" in reconciling["message"]
    assert (condition(status, "Ready")["status"], condition(status, "Stalled")["status"]) == \
        ("False", "False")
    assert status["nodes"]["applied"] == 1 and status["problems"] == []
    assert kstatus.compute(as_object(view, status)) == kstatus.IN_PROGRESS


def test_every_condition_names_the_generation_it_describes() -> None:
    view = policy(generation=7)
    status = fold(view, reports(state("a", generation=7)), virt_nodes("a"), T0)
    assert status["observedGeneration"] == 7
    assert {c["observedGeneration"] for c in status["conditions"]} == {7}
    assert [c["type"] for c in status["conditions"]] == ["Ready", "Reconciling", "Stalled"]


def test_a_recreated_policy_does_not_count_reports_of_its_namesake() -> None:
    view = policy()
    status = fold(view, reports(state("a", uid="uid-of-the-deleted-p")), virt_nodes("a"), T0)
    assert status["nodes"]["applied"] == 0
    assert condition(status, "Reconciling")["status"] == "True"


def test_reports_of_vanished_nodes_are_ignored() -> None:
    status = fold(policy(), reports(state("a", merged=5), state("gone", merged=1000)),
                  virt_nodes("a"), T0)
    assert status["nodes"]["applied"] == 1 and status["saved"]["mergedBytes"] == 5


def test_problems_are_capped_and_sorted_whatever_the_order_of_arrival() -> None:
    names = [f"node-{i:03d}" for i in range(45)]
    objs = [state(n, degraded=("True", "EngineMissing" if i % 3 else "ZswapMissing", n))
            for i, n in enumerate(names)]
    shuffled = objs[:]
    random.Random(4).shuffle(shuffled)
    first = fold(policy(), reports(*objs), virt_nodes(*names), T0)
    second = fold(policy(), reports(*shuffled), virt_nodes(*reversed(names)), T0)
    assert first == second
    assert [p["node"] for p in first["problems"]] == names[:MAX_PROBLEMS]
    assert first["nodes"]["failed"] == 45
    # the most frequent reason names the condition
    assert condition(first, "Stalled")["reason"] == "EngineMissing"
    assert validate(first, STATUS_SCHEMA, "status") == []


def test_long_messages_are_cut_to_the_schema() -> None:
    status = fold(policy(), reports(state("a", degraded=("True", "GuestsFailed", "x" * 5000))),
                  virt_nodes("a"), T0)
    assert len(status["problems"][0]["message"]) == 1024
    assert validate(status, STATUS_SCHEMA, "status") == []


# -- the Ready reasons -----------------------------------------------------------------------


def test_ready_reasons() -> None:
    nodes = virt_nodes("a")
    assert condition(fold(policy(), {}, {}, T0), "Ready")["reason"] == "NoMatchingNodes"
    lost = fold(policy(), reports(state("a", policy_name="high", overridden=("p",))), nodes, T0)
    assert (condition(lost, "Ready")["status"], condition(lost, "Ready")["reason"]) == \
        ("True", "Overridden")
    dry = fold(policy(dryRun=True), reports(state("a")), nodes, T0)
    assert condition(dry, "Ready")["reason"] == "DryRun"
    applied = fold(policy(), reports(state("a")), nodes, T0)
    assert condition(applied, "Ready")["message"] == \
        "generation 1 applied on 1 of 1 matched node(s)"


def test_an_invalid_policy_is_stalled_with_the_reason() -> None:
    doc = policy_document("bad", {"nodeSelector": POOL, "ksm": {"pagesToScan": -5}})
    doc["metadata"].update(uid="u", generation=2)
    view = policy_view(doc)
    assert view.error is not None and "pagesToScan" in view.error
    status = fold(view, reports(state("a")), virt_nodes("a"), T0)
    stalled = condition(status, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "InvalidPolicy")
    assert "pagesToScan" in stalled["message"]
    assert "matched" not in status["nodes"]
    assert validate(status, STATUS_SCHEMA, "status") == []


# -- transitions and change detection --------------------------------------------------------


def test_transition_times_move_only_when_a_condition_flips() -> None:
    nodes = virt_nodes("a", "b")
    first = fold(policy(), reports(state("a"), state("b")), nodes, T0)
    # b fails: Ready and Stalled flip, Reconciling stays False
    second = fold(policy(status=first), reports(state("a"), state("b", ready="False")), nodes,
                  T1)
    times = {c["type"]: c["lastTransitionTime"] for c in second["conditions"]}
    assert times == {"Ready": T1, "Reconciling": T0, "Stalled": T1}
    # nothing flips: every time is kept, and the folded status equals the previous one
    third = fold(policy(status=second), reports(state("a"), state("b", ready="False")), nodes,
                 "2026-01-01T00:09:00Z")
    assert third == second


def test_comparable_ignores_timestamps_and_without_savings_ignores_savings() -> None:
    nodes = virt_nodes("a")
    before = fold_status(policy(), reports(state("a", merged=1)), nodes, T0)
    later = fold_status(policy(), reports(state("a", merged=1)), nodes, T1)
    assert later != before and comparable(later) == comparable(before)
    more_saved = fold_status(policy(), reports(state("a", merged=2)), nodes, T0)
    assert comparable(more_saved) != comparable(before)
    assert without_savings(comparable(more_saved)) == without_savings(comparable(before))
    failed = fold_status(policy(), reports(state("a", merged=1, ready="False")), nodes, T0)
    assert without_savings(comparable(failed)) != without_savings(comparable(before))


# -- invariants over random clusters ---------------------------------------------------------

NODE_NAMES = [f"n{i}" for i in range(12)]
node_states = st.fixed_dictionaries({
    "policy": st.sampled_from([None, "p", "q"]),
    "generation": st.integers(1, 3),
    "ready": st.sampled_from(["True", "False"]),
    "degraded": st.sampled_from([("False", "AsExpected", ""), ("True", "EngineMissing", "e"),
                                 ("True", "InvalidPolicy", "i")]),
    "merged": st.integers(0, 1 << 40),
    "overridden": st.sampled_from([(), ("p",), ("q",)]),
})


@settings(max_examples=100, deadline=None)
@given(cluster=st.dictionaries(st.sampled_from(NODE_NAMES), node_states),
       labelled=st.sets(st.sampled_from(NODE_NAMES)), existing=st.sets(
           st.sampled_from(NODE_NAMES), min_size=1), generation=st.integers(1, 3))
def test_invariants(cluster: dict[str, dict[str, Any]], labelled: set[str], existing: set[str],
                    generation: int) -> None:
    view = policy(generation=generation)
    nodes = {n: ({"pool": "virt"} if n in labelled else {"pool": "web"}) for n in existing}
    objs = [state(n, policy_name=s["policy"], generation=s["generation"], ready=s["ready"],
                  degraded=s["degraded"], merged=s["merged"],
                  overridden=s["overridden"] if s["policy"] != "p" else ())
            for n, s in cluster.items()]
    status = fold(view, reports(*objs), nodes, T0)
    in_force = [n for n, s in cluster.items() if s["policy"] == "p" and n in existing]
    current = [n for n in in_force if cluster[n]["generation"] == generation]
    failing = [n for n in current if cluster[n]["ready"] == "False"
               or cluster[n]["degraded"][1] == "EngineMissing"]
    counts = status["nodes"]
    assert counts["matched"] == len(labelled & existing)
    assert counts["applied"] == len(current) - len(failing)
    assert counts["failed"] == len(failing)
    assert status["saved"]["mergedBytes"] == sum(cluster[n]["merged"] for n in in_force)
    assert [p["node"] for p in status["problems"]] == sorted(failing)[:MAX_PROBLEMS]
    lost = {n for n, s in cluster.items() if "p" in s["overridden"] and s["policy"] != "p"}
    assert counts["overridden"] == len(lost & existing)
    pending = {n for n in in_force if n not in current} | \
        (labelled & existing) - set(in_force) - lost
    verdict = kstatus.compute(as_object(view, status))
    expected = kstatus.FAILED if failing else \
        kstatus.IN_PROGRESS if pending else kstatus.CURRENT
    assert verdict == expected
    assert (condition(status, "Ready")["status"] == "True") == (verdict == kstatus.CURRENT)
    assert validate(status, STATUS_SCHEMA, "status") == []


def test_capacity_folds_to_the_least_supported_ratio_and_names_its_node() -> None:
    from overcommit.api.status import CapacityEvidence, NodeCapacity
    from overcommit.controller.fold import capacity_summary, fold_capacity

    def node_capacity(percent: int, settled: bool) -> NodeCapacity:
        return NodeCapacity(physical_bytes=100, guest_committed_bytes=50, counted_bytes=10,
                            headroom_bytes=-5 if percent < 110 else 20,
                            supported_percent=percent,
                            evidence=CapacityEvidence(settled=settled))

    summaries = {"a": capacity_summary(node_capacity(130, True)),
                 "b": capacity_summary(node_capacity(108, False)),
                 "c": capacity_summary(node_capacity(108, True))}
    folded = fold_capacity({k: v for k, v in summaries.items() if v is not None})
    assert folded is not None
    assert (folded.supported_percent, folded.limiting_node) == (108, "b")  # ties: first name
    assert (folded.nodes, folded.settled_nodes) == (3, 2)
    assert folded.physical_bytes == 300 and folded.headroom_bytes == 20 - 5 - 5
    assert folded.summary == "108%"
    assert fold_capacity({}) is None
    assert capacity_summary(NodeCapacity()) is None
