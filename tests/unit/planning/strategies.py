"""Hypothesis strategies that draw valid policy specs from the CRD's own schema."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

from overcommit.api.model import spec_schema
from overcommit.api.schema import validate

SCHEMA = spec_schema()


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if schema.get("x-kubernetes-int-or-string"):
        return st.builds(lambda n, unit: f"{n}{unit}", st.integers(1, 64),
                         st.sampled_from(["Mi", "Gi", "M", "G"]))
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**31)), schema.get("maximum", 2**31))
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda s: len(s) <= schema.get("maxLength", 63))
        return st.text("abcdefgh-", min_size=1, max_size=8)
    if kind == "array":
        return st.lists(from_schema(schema["items"]), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 3), 4))
    if kind == "object" and "properties" in schema:
        return _object(schema)
    if kind == "object":
        return st.dictionaries(st.sampled_from(["a", "b", "role", "zone"]),
                               st.sampled_from(["x", "y", ""]), max_size=3)
    raise AssertionError(f"no strategy for {schema}")


def _object(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    props = schema["properties"]
    required = set(schema.get("required", []))
    fields = {name: from_schema(sub) for name, sub in props.items()}

    @st.composite
    def draw(data: st.DrawFn) -> dict[str, Any]:
        out = {}
        for name in props:
            if name in required or data(st.booleans()):
                out[name] = data(fields[name])
        return out

    return draw()


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A spec the API server would accept (drawn, then kept only if it validates)."""
    sections = {name: from_schema(sub) for name, sub in SCHEMA["properties"].items()}
    spec: dict[str, Any] = {}
    for name in draw(st.sets(st.sampled_from(sorted(sections)), min_size=1)):
        spec[name] = draw(sections[name])
    if not any(k in spec for k in ("ksm", "uksm", "swap", "zswap", "balloon")):
        spec["ksm"] = {}
    _make_consistent(spec)
    candidate = copy.deepcopy(spec)
    errors = validate(candidate, SCHEMA, "spec")
    from hypothesis import assume

    assume(not errors)
    return spec


def _make_consistent(spec: dict[str, Any]) -> None:
    """Steer random drafts toward the cross-field rules so few are thrown away."""
    ksm = spec.get("ksm")
    if isinstance(ksm, dict):
        mode = ksm.get("mode", "Static")
        if mode != "KernelAdvisor":
            ksm.pop("advisor", None)
        if mode != "Adaptive":
            ksm.pop("adaptive", None)
        else:
            ksm.pop("sleepMillisecs", None)
            adaptive = ksm.get("adaptive")
            if isinstance(adaptive, dict):
                adaptive.pop("sleepMillisecs", None)
                adaptive.pop("idleSleepMillisecs", None)
                adaptive.pop("minPagesToScan", None)
        if mode != "Static":
            ksm.pop("pagesToScan", None)
            if ksm.get("enabled") is False:
                ksm["enabled"] = True
        advisor = ksm.get("advisor")
        if isinstance(advisor, dict) and "minPagesToScan" in advisor and \
                "maxPagesToScan" in advisor:
            low, high = sorted((advisor["minPagesToScan"], advisor["maxPagesToScan"]))
            advisor.update(minPagesToScan=low, maxPagesToScan=high)
    selector = spec.get("nodeSelector")
    if isinstance(selector, dict):
        for req in selector.get("matchExpressions", []):
            if req["operator"] in ("In", "NotIn"):
                req["values"] = req.get("values") or ["x"]
            else:
                req.pop("values", None)
    if "balloon" in spec:
        spec["balloon"] = {"mode": "Off"}  # balloon behaviour is planned elsewhere
