"""schema.fit: a status is cut to the CRD's bounds, so the API server never refuses it whole."""

from __future__ import annotations

from overcommit.api.schema import fit, meta_of, openapi_schema, parse, to_json, validate
from overcommit.api.status import (
    Condition,
    Guest,
    NodeProblem,
    NodeStateStatus,
    OverriddenPolicy,
    PolicyStatus,
    condition,
    condition_of,
    without_timestamps,
)


def test_every_list_map_and_string_is_cut_to_its_declared_bound() -> None:
    status = NodeStateStatus(
        overridden=[OverriddenPolicy(f"p{i}", "lower priority") for i in range(100)],
        conditions=[Condition("Ready", "False", "ApplyFailed", "x" * 40_000)],
        guests=[Guest(domain="ns_" + "v" * 400, reason="why " * 2000)],
        settings={f"sys/x/{i}": "1" * 300 for i in range(200)},
        last_errors=["e" * 5000] * 40)
    wire = to_json(fit(status))
    assert validate(wire, openapi_schema(NodeStateStatus), "status") == []
    assert len(wire["overridden"]) == meta_of(NodeStateStatus, "overridden").max_items == 64
    assert wire["overridden"][0]["name"] == "p0"  # the first entries are the ones kept
    assert len(wire["conditions"][0]["message"]) == meta_of(Condition, "message").max_length
    assert len(wire["guests"][0]["domain"]) == meta_of(Guest, "domain").max_length
    assert len(wire["settings"]) == 128
    assert {len(v) for v in wire["settings"].values()} == {256}
    assert len(wire["lastErrors"]) == 32 and {len(e) for e in wire["lastErrors"]} == {1024}


def test_a_status_within_bounds_is_returned_as_it_is() -> None:
    status = PolicyStatus(observed_generation=2,
                          problems=[NodeProblem("n1", "ApplyFailed", "run: EBUSY")])
    assert fit(status) is status


def test_parse_reads_what_the_schema_vouches_for_and_nothing_else() -> None:
    good = {"problems": [{"node": "n1", "reason": "ApplyFailed"}], "nodes": {"failed": 1}}
    parsed = parse(PolicyStatus, good)
    assert parsed is not None and parsed.problems == [NodeProblem("n1", "ApplyFailed")]
    assert good == {"problems": [{"node": "n1", "reason": "ApplyFailed"}],
                    "nodes": {"failed": 1}}  # left as it was
    assert parse(PolicyStatus, {"problems": "abc"}) is None
    assert parse(PolicyStatus, {"conditions": [{"reason": "no type, no status"}]}) is None
    assert parse(PolicyStatus, "not an object") is None


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    first = condition("Ready", "True", "Applied", "ok", "t0")
    same = condition("Ready", "True", "Applied", "still ok", "t1", [first], generation=3)
    assert (same.last_transition_time, same.message, same.observed_generation) == \
        ("t0", "still ok", 3)
    flipped = condition("Ready", "False", "ApplyFailed", "no", "t2", [same])
    assert flipped.last_transition_time == "t2"
    assert condition_of(PolicyStatus(conditions=[flipped]), "Ready") == flipped
    assert condition_of(PolicyStatus(), "Ready").status == "Unknown"
    later = condition("Ready", "False", "ApplyFailed", "no", "t9")
    assert PolicyStatus(conditions=[flipped]) != PolicyStatus(conditions=[later])
    assert without_timestamps(PolicyStatus(conditions=[flipped])) == \
        without_timestamps(PolicyStatus(conditions=[later]))
