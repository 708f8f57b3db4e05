"""The CRDs and the Python model are one source of truth, checked both ways.

* The committed CRD files are exactly what the generator makes from the dataclasses.
* For every bound of the CRD's spec schema (minimum, maximum, enum, pattern, maxLength,
  minItems, maxItems, maxProperties, also on array items and map values), the Python validator
  and a JSON Schema validator running the committed CRD schema both reject a value just outside
  it and accept the boundary values.
* Every CEL rule in the CRD has a Python twin, and on a corpus of objects both give the same
  verdict (evaluated with an offline CEL interpreter).
"""

from __future__ import annotations

import copy
import functools
import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import celpy
import celpy.adapter
import jsonschema  # via kubernetes-validate (dev extra)
import pytest
import yaml

from overcommit.api import crd
from overcommit.api.model import spec_schema
from overcommit.api.policy import (
    API_CLASSES,
    LABEL_KEY_PATTERN,
    NAMESPACE_PATTERN,
    UKSM_RATIO_PATTERN,
)
from overcommit.api.schema import QUANTITY_PATTERN, rules_of, validate

CRD_DIR = Path("deploy/crds")


def test_committed_crds_are_generated_from_the_model() -> None:
    for name, text in crd.generated_files().items():
        committed = (CRD_DIR / name).read_text()
        assert committed == text, f"{name} is stale: run python -m overcommit.api.crd --write " \
                                  f"deploy/crds"


@functools.cache
def _committed_spec_schema() -> dict[str, Any]:
    """The spec schema of the committed policy CRD (shared: do not modify it)."""
    text = (CRD_DIR / "memoryovercommit.io_memoryovercommitpolicies.yaml").read_text()
    doc = yaml.safe_load(text)
    schema: dict[str, Any] = \
        doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


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


# ---------------------------------------------------------------------------------------------
# Bounds: every minimum, maximum, enum, pattern, maxLength, minItems, maxItems and maxProperties
# of the committed CRD, also those of array items and map values, gets a value just inside and
# one just outside. The Python validator and a JSON Schema validator run on the CRD's own schema
# (standing in for the API server's structural validation) must both give the expected verdict.

Part = str | int  # a property name, or 0 for the first item of an array

# Values each pattern of the CRD must accept and reject; a new pattern needs an entry here.
# ``make(i)`` gives distinct valid values, for lists that need several.
PATTERN_SAMPLES: dict[str, tuple[Callable[[int], str], list[str], list[str]]] = {
    LABEL_KEY_PATTERN: (lambda i: f"k{i}", ["k", "a.b-c_d", "example.com/role", "a-b.c/K_1"],
                        ["", "-k", "k-", "Example.com/k", "/k", "a/b/c", "k v", "k/"]),
    NAMESPACE_PATTERN: (lambda i: f"ns-{i}", ["a", "default", "kube-system", "n0"],
                        ["", "Default", "-ns", "ns-", "ns_1", "a.b"]),
    UKSM_RATIO_PATTERN: (lambda i: str(i + 1), ["1", "40", "10000", "MAX/1", "MAX/10000"],
                         ["", "0", "01", "10001", "MAX/0", "max/4", "MAX/", "MAX/10001", "1.5"]),
    QUANTITY_PATTERN: (lambda i: f"{i + 1}Mi", ["0", "1", "1.5Gi", "512Mi", "2G", "100k"],
                       ["", "-1Gi", "1 Gi", "Gi", "1gi", "1.Gi", ".5Gi", "1Gib", "1e3"]),
}

# Valid items of arrays of objects, keyed by the item's property names.
OBJECT_ITEMS: dict[frozenset[str], Callable[[int], dict[str, Any]]] = {
    frozenset({"key", "operator", "values"}):
        lambda i: {"key": f"k{i}", "operator": "In", "values": ["v"]},
}

# How the Python validator words each kind of violation.
PYTHON_MESSAGES = {
    "minimum": "should be greater than or equal to", "maximum": "should be less than or equal to",
    "enum": "Unsupported value", "type": "must be of type", "pattern": "should match",
    "maxLength": "Too long", "minItems": "should have at least", "maxItems": "Too many",
    "maxProperties": "Too many",
}
BOUND_KEYWORDS = set(PYTHON_MESSAGES) - {"type"}


def _show_path(parts: tuple[Part, ...]) -> str:
    return "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _leaves(schema: dict[str, Any], parts: tuple[Part, ...] = ()
            ) -> Iterator[tuple[tuple[Part, ...], dict[str, Any]]]:
    """Every field below ``schema`` that is not an object with properties; the fields of the
    items of arrays of objects too (under the first item)."""
    if schema.get("type") == "object" and "properties" in schema:
        for name, sub in schema["properties"].items():
            yield from _leaves(sub, (*parts, name))
        return
    yield parts, schema
    items = schema.get("items")
    if isinstance(items, dict) and "properties" in items:
        yield from _leaves(items, (*parts, 0))


def _sample(schema: dict[str, Any], i: int = 0) -> Any:
    """A valid value of ``schema``, distinct for distinct ``i``."""
    if "enum" in schema:
        return schema["enum"][0]
    if "pattern" in schema:
        return PATTERN_SAMPLES[schema["pattern"]][0](i)
    if schema.get("type") == "object" and "properties" in schema:
        return OBJECT_ITEMS[frozenset(schema["properties"])](i)
    if schema.get("type") == "integer":
        return min(schema.get("minimum", 0) + i, schema.get("maximum", 2**62))
    if schema.get("type") == "boolean":
        return True
    if schema.get("type") == "string":
        return f"v{i}"
    raise AssertionError(f"no sample for {schema}")


def _string_cases(schema: dict[str, Any]) -> Iterator[tuple[str, Any, bool]]:
    if "pattern" in schema:
        _, good, bad = PATTERN_SAMPLES[schema["pattern"]]
        yield from (("pattern", value, True) for value in good)
        yield from (("pattern", value, False) for value in bad)
    if "maxLength" in schema:
        n = schema["maxLength"]
        # the longest valid value (unless the pattern allows none that long: uksm cpuRatios)
        at_limit = [v for v in ("a" * n, "1" * n)
                    if "pattern" not in schema or re.search(schema["pattern"], v)]
        yield from (("maxLength", value, True) for value in at_limit[:1])
        yield "maxLength", "a" * (n + 1), False


def _value_cases(schema: dict[str, Any]) -> Iterator[tuple[str, Any, bool]]:
    """(kind, value, accepted) for each bound of ``schema``; a kind names the keyword, with
    ``items.`` or ``values.`` in front when the bound is on array items or map values."""
    if "minimum" in schema:
        yield "minimum", schema["minimum"] - 1, False
        yield "minimum", schema["minimum"], True
    if "maximum" in schema:
        yield "maximum", schema["maximum"] + 1, False
        yield "maximum", schema["maximum"], True
    if "enum" in schema:
        yield "enum", "NotAValue", False
        yield from (("enum", value, True) for value in schema["enum"])
    if schema.get("type") == "boolean":
        yield "type", "true", False
        yield "type", True, True
        yield "type", False, True
    yield from _string_cases(schema)
    if schema.get("type") == "array":
        items = schema["items"]
        for keyword, delta in (("minItems", -1), ("maxItems", +1)):
            if keyword in schema:
                yield keyword, [_sample(items, i) for i in range(schema[keyword] + delta)], False
                yield keyword, [_sample(items, i) for i in range(schema[keyword])], True
        if "properties" not in items:  # fields of object items are leaves of their own
            others = [_sample(items, i) for i in range(1, schema.get("minItems", 1))]
            for kind, value, ok in _value_cases(items):
                yield f"items.{kind}", [value, *others], ok
    extra = schema.get("additionalProperties")
    if schema.get("type") == "object" and isinstance(extra, dict):
        if "maxProperties" in schema:
            n = schema["maxProperties"]
            yield "maxProperties", {f"k{i}": _sample(extra, i) for i in range(n + 1)}, False
            yield "maxProperties", {f"k{i}": _sample(extra, i) for i in range(n)}, True
        for kind, value, ok in _value_cases(extra):
            yield f"values.{kind}", {"k": value}, ok


def _minimal_container(parts: tuple[Part, ...]) -> dict[str, Any]:
    """A valid spec in which ``parts`` can be set (sections whose rules need a mode get it)."""
    spec: dict[str, Any] = {"ksm": {"enabled": True}}
    if parts[0] == "ksm" and len(parts) == 2:
        # pagesToScan and sleepMillisecs are allowed with mode Static only (a CEL rule)
        spec = {"ksm": {"mode": "Static", "enabled": True}}
    if parts[0] == "ksm" and len(parts) > 2 and parts[1] == "advisor":
        spec = {"ksm": {"mode": "KernelAdvisor"}}
    if parts[0] == "ksm" and len(parts) > 2 and parts[1] == "adaptive":
        spec = {"ksm": {"mode": "Adaptive"}}
    if parts[0] == "balloon" and len(parts) > 2 and parts[1] == "static":
        spec = {"balloon": {"mode": "Static", "static": {}}}
    if parts[0] == "balloon" and len(parts) > 2 and parts[1] == "auto":
        spec = {"balloon": {"mode": "Auto"}}
    if parts[0] == "balloon" and len(parts) > 2 and parts[1] == "floor":
        spec = {"balloon": {"mode": "Off"}}
    return spec


def _set(spec: dict[str, Any], parts: tuple[Part, ...], value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    node: Any = spec
    schema = _committed_spec_schema()
    for part, after in itertools.pairwise(parts):
        schema = schema["properties"][part] if isinstance(part, str) else schema["items"]
        if isinstance(after, int):  # an array of objects: one valid item to set a field in
            node = node.setdefault(part, [_sample(schema["items"])])
        elif isinstance(node, list):  # reached through the array's name: part is its index
            node = node[cast(int, part)]
        else:
            node = node.setdefault(part, {})
    node[parts[-1]] = value
    if parts[:2] == ("balloon", "static") and parts[-1] == "target":
        node.pop("targetPercent", None)
    elif parts == ("balloon", "static", "targetPercent"):
        node.pop("target", None)
    elif parts[:2] == ("balloon", "static"):
        node.setdefault("targetPercent", 50)
    if parts[-1] == "operator" and value in ("Exists", "DoesNotExist"):
        node.pop("values", None)  # values go only with In and NotIn (a CEL rule)
    return spec


def _errors(spec: dict[str, Any]) -> list[str]:
    return validate(copy.deepcopy(spec), spec_schema(), "spec")


def _crd_errors(spec: dict[str, Any]) -> list[jsonschema.ValidationError]:
    """The committed CRD's structural validation (OpenAPI v3 is JSON Schema draft 4 plus
    extensions the validator ignores; CEL rules are checked separately below)."""
    return list(_crd_validator().iter_errors(spec))


@functools.cache
def _crd_validator() -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(_committed_spec_schema())


def _bound_cases() -> Iterator[tuple[tuple[Part, ...], str, Any, bool]]:
    for parts, leaf in _leaves(_committed_spec_schema()):
        for kind, value, ok in _value_cases(leaf):
            yield parts, kind, value, ok


def _short(value: Any) -> str:
    if isinstance(value, list | dict) or (isinstance(value, str) and len(value) > 16):
        return f"{type(value).__name__}{len(value)}"
    return repr(value)


BOUND_CASES = list(_bound_cases())


def _schema_bounds(schema: dict[str, Any], parts: tuple[Part, ...] = (), prefix: str = ""
                   ) -> Iterator[tuple[tuple[Part, ...], str]]:
    """Every bound keyword anywhere in the schema, named as the cases name it."""
    for keyword in BOUND_KEYWORDS & set(schema):
        yield parts, prefix + keyword
    if schema.get("type") == "boolean":
        yield parts, prefix + "type"
    for name, sub in schema.get("properties", {}).items():
        yield from _schema_bounds(sub, (*parts, name))
    items = schema.get("items")
    if isinstance(items, dict):
        if "properties" in items:
            yield from _schema_bounds(items, (*parts, 0))
        else:
            yield from _schema_bounds(items, parts, prefix + "items.")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _schema_bounds(schema["additionalProperties"], parts, prefix + "values.")


def test_bound_cases_cover_the_schema() -> None:
    rejected = {(parts, kind) for parts, kind, _, ok in BOUND_CASES if not ok}
    accepted = {(parts, kind) for parts, kind, _, ok in BOUND_CASES if ok}
    bounds = set(_schema_bounds(_committed_spec_schema()))
    assert bounds - rejected == set(), "bounds of the CRD without a case outside them"
    # at the limit: all but maxLength where the pattern allows no value that long
    assert bounds - accepted == {(("uksm", "cpuRatios"), "items.maxLength")}
    kinds = {kind.rpartition(".")[2] for _, kind in bounds}
    assert kinds == set(PYTHON_MESSAGES)
    assert {(("ksm", "pagesToScan"), "minimum"), (("ksm", "sleepMillisecs"), "maximum"),
            (("nodeSelector", "matchExpressions", 0, "key"), "pattern"),
            (("nodeSelector", "matchExpressions", 0, "values"), "items.maxLength"),
            (("uksm", "evalIntervals"), "items.minimum"),
            (("balloon", "vmSelector", "matchLabels"), "maxProperties")} <= rejected
    assert set(PATTERN_SAMPLES) == {leaf["pattern"] for _, leaf in _walk_schemas(
        _committed_spec_schema()) if "pattern" in leaf}, "a pattern without samples, or unused"


def _walk_schemas(schema: dict[str, Any], path: str = "spec"
                  ) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk_schemas(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _walk_schemas(schema[key], f"{path}[]")


@pytest.mark.parametrize("parts,kind,value,ok", BOUND_CASES,
                         ids=[f"{_show_path(p)}-{k}-{_short(v)}" for p, k, v, _ in BOUND_CASES])
def test_python_and_the_crd_enforce_every_bound(parts: tuple[Part, ...], kind: str, value: Any,
                                                ok: bool) -> None:
    path = _show_path(parts)
    spec = _set(_minimal_container(parts), parts, value)
    # the field's own errors (a boundary value may break a cross-field rule of its parent:
    # those rules are compared with their CEL below)
    python = [e for e in _errors(spec) if re.match(re.escape(path) + r"[:\[.]", e)]
    crd = _crd_errors(spec)
    if ok:
        assert python == [], python
        assert crd == [], [e.message for e in crd]
        return
    keyword = kind.rpartition(".")[2]
    assert [e for e in python if PYTHON_MESSAGES[keyword] in e], \
        f"Python accepted {path}={_short(value)} ({kind}): {python}"
    assert [e for e in crd if e.validator == keyword
            and tuple(e.absolute_path)[:len(parts)] == parts], \
        f"the CRD accepted {path}={_short(value)} ({kind}): {[e.message for e in crd]}"


def test_stricter_patterns_hold() -> None:
    assert _errors({"uksm": {"cpuRatios": ["1", "10000", "MAX/1", "MAX/10000"]}}) == []
    assert _errors({"uksm": {"cpuRatios": ["0", "40", "MAX/4", "MAX/1"]}})
    assert _errors({"uksm": {"cpuRatios": ["10001", "40", "MAX/4", "MAX/1"]}})
    assert _errors({"balloon": {"mode": "Static", "static": {"target": "1.5Gi"}}}) == []
    assert _errors({"balloon": {"mode": "Static", "static": {"target": 1073741824}}}) == []
    assert _errors({"balloon": {"mode": "Static", "static": {"target": "-1Gi"}}})


# ---------------------------------------------------------------------------------------------
# CEL rules: the Python twin agrees with the CEL the API server runs.

def _objects(*objs: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The objects as given, typed (mypy cannot infer a tuple of unlike dicts)."""
    return objs


def _cel_corpus() -> dict[str, list[dict[str, Any]]]:
    """Objects for each rule's scope, keyed by the class name that declares the rule."""
    ksm = [{"mode": m, **extra} for m in ("Static", "Adaptive", "KernelAdvisor")
           for extra in _objects(
               {}, {"enabled": True}, {"enabled": False}, {"pagesToScan": 10},
               {"sleepMillisecs": 5}, {"advisor": {}}, {"adaptive": {}},
               {"pagesToScan": 1, "advisor": {}})]
    return {
        "LabelSelectorRequirement": [
            {"key": "k", "operator": op, **vals} for op in ("In", "NotIn", "Exists",
                                                            "DoesNotExist")
            for vals in _objects({}, {"values": []}, {"values": ["a"]})],
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
        "BalloonSpec": [{"mode": m, **extra} for m in ("Off", "Static", "Auto")
                        for extra in _objects(
                            {}, {"static": {"targetPercent": 30}}, {"auto": {}},
                            {"static": {"targetPercent": 30}, "floor": {"minPercent": 40}},
                            {"static": {"targetPercent": 50}, "floor": {"minPercent": 40}},
                            {"floor": {"minPercent": 40}})],
        "ZswapSpec": [{"onlyUnderPressure": o, **extra} for o in (True, False)
                      for extra in ({}, {"enabled": True}, {"enabled": False},
                                    {"maxPoolPercent": 20})],
        "LadderPsi": [{"fullHardPercent": a, "fullCriticalPercent": b}
                      for a, b in ((5, 20), (20, 20), (30, 20))],
        "LadderSpec": [{"criticalPercent": c, "hardPercent": h, "softPercent": s,
                        "plentyPercent": p}
                       for c, h, s, p in ((100, 200, 400, 800), (200, 200, 400, 800),
                                          (100, 300, 200, 800), (100, 200, 400, 400),
                                          (1, 2, 3, 4), (4, 3, 2, 1))],
        "LadderRelief": [{"maxInFlightPerNode": a, "maxInFlightPerCluster": b}
                         for a, b in ((1, 2), (2, 2), (3, 2))],
        "CapacityKubeVirt": [{"minPercent": a, "maxPercent": b}
                             for a, b in ((100, 150), (150, 150), (200, 150))],
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
        cel = bool(program.evaluate({"self": celpy.adapter.json_to_cel(obj)}))
        assert cel == rule.check(obj), f"{rule.cel} disagrees on {obj}"
        verdicts.add(cel)
    assert verdicts == {True, False}, f"corpus for {owner} does not exercise {rule.cel}"
