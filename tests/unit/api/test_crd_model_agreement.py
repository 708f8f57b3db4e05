"""The CRDs and the Python model are one source of truth, checked both ways.

* The committed CRD files are exactly what the generator makes from the dataclasses.
* For every leaf of the CRD's spec schema, the Python validator rejects a value just outside
  each bound, outside each enum and against each pattern, and accepts the boundary values.
* Every CEL rule in the CRD has a Python twin, and on a corpus of objects both give the same
  verdict (evaluated with an offline CEL interpreter).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from overcommit.api import crd
from overcommit.api.model import spec_schema
from overcommit.api.policy import API_CLASSES
from overcommit.api.schema import rules_of, validate

CRD_DIR = Path("deploy/crds")


def test_committed_crds_are_generated_from_the_model() -> None:
    for name, text in crd.generated_files().items():
        committed = (CRD_DIR / name).read_text()
        assert committed == text, f"{name} is stale: run python -m overcommit.api.crd --write " \
                                  f"deploy/crds"


def _committed_spec_schema() -> dict[str, Any]:
    text = (CRD_DIR / "memoryovercommit.io_memoryovercommitpolicies.yaml").read_text()
    doc = yaml.safe_load(text)
    schema: dict[str, Any] = \
        doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def _leaves(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if schema.get("type") == "object" and "properties" in schema:
        for name, sub in schema["properties"].items():
            yield from _leaves(sub, f"{path}.{name}")
    else:
        yield path, schema


def test_every_field_is_described() -> None:
    def walk(schema: dict[str, Any], path: str) -> Iterator[str]:
        for name, sub in schema.get("properties", {}).items():
            if not sub.get("description") and f"{path}.{name}" != ".metadata":
                yield f"{path}.{name}"
            yield from walk(sub, f"{path}.{name}")
            if isinstance(sub.get("items"), dict):
                yield from walk(sub["items"], f"{path}.{name}[]")
    for name in crd.generated_files():
        doc = yaml.safe_load((CRD_DIR / name).read_text())
        root = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert list(walk(root, "")) == []


def _minimal_container(path: str) -> dict[str, Any]:
    """A valid spec in which ``path`` can be set (sections whose rules need a mode get it)."""
    parts = path.split(".")[1:]
    spec: dict[str, Any] = {"ksm": {"enabled": True}}
    if parts[0] == "ksm" and len(parts) > 2 and parts[1] == "advisor":
        spec = {"ksm": {"mode": "KernelAdvisor"}}
    if parts[0] == "ksm" and len(parts) > 2 and parts[1] == "adaptive":
        spec = {"ksm": {"mode": "Adaptive"}}
    if parts[0] == "balloon" and len(parts) > 2 and parts[1] == "static":
        spec = {"balloon": {"mode": "Static", "static": {}}}
    if parts[0] == "balloon" and len(parts) > 2 and parts[1] == "auto":
        spec = {"balloon": {"mode": "Auto"}}
    return spec


def _set(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    node = spec
    parts = path.split(".")[1:]
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    if path.startswith("spec.balloon.static.") and parts[-1] == "target":
        node.pop("targetPercent", None)
    elif path == "spec.balloon.static.targetPercent":
        node.pop("target", None)
    elif path.startswith("spec.balloon.static"):
        node.setdefault("targetPercent", 50)
    return spec


def _errors(spec: dict[str, Any]) -> list[str]:
    return validate(copy.deepcopy(spec), spec_schema(), "spec")


def _bound_cases() -> Iterator[tuple[str, str, Any, bool]]:
    schema = _committed_spec_schema()
    for path, leaf in _leaves(schema, "spec"):
        if path in ("spec.ksm.pagesToScan", "spec.ksm.sleepMillisecs"):
            continue  # they need mode Static without other fields: covered by the bounds below
        if "minimum" in leaf:
            yield path, "minimum", leaf["minimum"] - 1, False
            yield path, "minimum", leaf["minimum"], True
        if "maximum" in leaf:
            yield path, "maximum", leaf["maximum"] + 1, False
            yield path, "maximum", leaf["maximum"], True
        if "enum" in leaf:
            yield path, "enum", "NotAValue", False
            for value in leaf["enum"]:
                yield path, "enum", value, True
        if leaf.get("type") == "boolean":
            yield path, "type", "true", False


BOUND_CASES = list(_bound_cases())


def test_bound_cases_cover_the_schema() -> None:
    kinds = {kind for _, kind, _, _ in BOUND_CASES}
    assert {"minimum", "maximum", "enum", "type"} <= kinds
    assert len(BOUND_CASES) > 80


@pytest.mark.parametrize("path,kind,value,ok", BOUND_CASES,
                         ids=[f"{p}-{k}-{v}" for p, k, v, _ in BOUND_CASES])
def test_python_enforces_every_crd_bound(path: str, kind: str, value: Any, ok: bool) -> None:
    spec = _set(_minimal_container(path), path, value)
    if path in ("spec.balloon.floor.minPercent",):
        spec["balloon"].setdefault("mode", "Off")
    errors = [e for e in _errors(spec) if e.startswith(path + ":")]
    if ok:
        assert errors == [], errors
    else:
        assert errors, f"{path}={value!r} ({kind}) was accepted"


def test_stricter_patterns_hold() -> None:
    assert _errors({"uksm": {"cpuRatios": ["1", "10000", "MAX/1", "MAX/10000"]}}) == []
    assert _errors({"uksm": {"cpuRatios": ["0", "40", "MAX/4", "MAX/1"]}})
    assert _errors({"uksm": {"cpuRatios": ["10001", "40", "MAX/4", "MAX/1"]}})
    assert _errors({"balloon": {"mode": "Static", "static": {"target": "1.5Gi"}}}) == []
    assert _errors({"balloon": {"mode": "Static", "static": {"target": 1073741824}}}) == []
    assert _errors({"balloon": {"mode": "Static", "static": {"target": "-1Gi"}}})


# ---------------------------------------------------------------------------------------------
# CEL rules: the Python twin agrees with the CEL the API server runs.

def _cel_corpus() -> dict[str, list[dict[str, Any]]]:
    """Objects for each rule's scope, keyed by the class name that declares the rule."""
    ksm = [{"mode": m, **extra} for m in ("Static", "Adaptive", "KernelAdvisor") for extra in (
        {}, {"enabled": True}, {"enabled": False}, {"pagesToScan": 10}, {"sleepMillisecs": 5},
        {"advisor": {}}, {"adaptive": {}}, {"pagesToScan": 1, "advisor": {}})]
    return {
        "LabelSelectorRequirement": [
            {"key": "k", "operator": op, **vals} for op in ("In", "NotIn", "Exists",
                                                            "DoesNotExist")
            for vals in ({}, {"values": []}, {"values": ["a"]})],
        "KsmAdvisor": [{}, {"minPagesToScan": 5}, {"minPagesToScan": 5, "maxPagesToScan": 5},
                       {"minPagesToScan": 6, "maxPagesToScan": 5}],
        "KsmAdaptive": [
            {"minPagesToScan": a, "maxPagesToScan": b, "sleepMillisecs": c,
             "idleSleepMillisecs": d} for a, b in ((1, 2), (2, 2), (3, 2))
            for c, d in ((10, 500), (500, 500), (501, 500))],
        "KsmSpec": ksm,
        "BalloonStatic": [{}, {"targetPercent": 5}, {"target": "1Gi"},
                          {"targetPercent": 5, "target": "1Gi"}],
        "BalloonAuto": [{"hostAvailableLowPercent": a, "hostAvailableHighPercent": b}
                        for a, b in ((10, 20), (20, 20), (30, 20))],
        "BalloonSpec": [{"mode": m, **extra} for m in ("Off", "Static", "Auto") for extra in (
            {}, {"static": {"targetPercent": 30}}, {"auto": {}},
            {"static": {"targetPercent": 30}, "floor": {"minPercent": 40}},
            {"static": {"targetPercent": 50}, "floor": {"minPercent": 40}},
            {"floor": {"minPercent": 40}})],
        "PolicySpec": [{}, {"priority": 3}, {"ksm": {}}, {"uksm": {}}, {"swap": {}},
                       {"zswap": {}}, {"balloon": {}}],
    }


def _portable_rules() -> list[tuple[str, Any]]:
    return [(cls.__name__, rule) for cls in API_CLASSES for rule in rules_of(cls)
            if rule.portable_cel]


def test_every_crd_rule_has_a_python_twin() -> None:
    text = (CRD_DIR / "memoryovercommit.io_memoryovercommitpolicies.yaml").read_text()
    in_crd = {r["rule"] for r in _find_rules(yaml.safe_load(text))}
    declared = {rule.cel for cls in API_CLASSES for rule in rules_of(cls)}
    assert in_crd == declared


def _find_rules(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield from node.get("x-kubernetes-validations", [])
        for key, value in node.items():
            if key != "x-kubernetes-validations":
                yield from _find_rules(value)
    elif isinstance(node, list):
        for item in node:
            yield from _find_rules(item)


@pytest.mark.parametrize("owner,rule", _portable_rules(),
                         ids=[r.message[:50] for _, r in _portable_rules()])
def test_cel_and_python_agree(owner: str, rule: Any) -> None:
    corpus = _cel_corpus()[owner]
    env = celpy.Environment()
    program = env.program(env.compile(rule.cel))
    verdicts = set()
    for obj in corpus:
        cel = bool(program.evaluate({"self": celpy.json_to_cel(obj)}))
        assert cel == rule.check(obj), f"{rule.cel} disagrees on {obj}"
        verdicts.add(cel)
    assert verdicts == {True, False}, f"corpus for {owner} does not exercise {rule.cel}"
