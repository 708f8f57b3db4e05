"""A small declarative layer: dataclasses with documented fields are the single source of truth.

Every API type is a frozen dataclass whose fields carry their description, bounds and pattern in
``field(metadata=...)``. From that one declaration we derive

* the OpenAPI v3 structural schema inside the CRDs (``openapi_schema``),
* the defaulting and validation the Python side applies (``validate``), with messages in the
  same shape as the API server's, and
* the typed objects the planner consumes (``build``).

Cross-field rules are declared once per type as ``Rule`` objects that pair the CEL expression the
API server evaluates with an equivalent Python predicate over the same (defaulted) object, and
one human message used by both.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NewType, TypeVar, Union, get_args, get_origin

Quantity = NewType("Quantity", str)
"""A Kubernetes resource quantity (``512Mi``, ``2G``, ``1073741824``); int-or-string on the wire."""

QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"

JSON = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, evaluated with ``self`` bound to the object it is declared on."""

    cel: str
    message: str
    check: Callable[[Mapping[str, Any]], bool]
    # False where the CEL uses a Kubernetes-only library (e.g. quantity()) that the offline CEL
    # interpreter used in the unit tests does not have; the real API server still tests it.
    portable_cel: bool = True
    field_path: str | None = None


@dataclass(frozen=True)
class Meta:
    description: str
    minimum: int | None = None
    maximum: int | None = None
    pattern: str | None = None
    max_length: int | None = None
    min_items: int | None = None
    max_items: int | None = None
    item_pattern: str | None = None
    item_minimum: int | None = None
    item_maximum: int | None = None
    item_max_length: int | None = None
    max_properties: int | None = None
    list_type: str | None = None
    preserve_unknown: bool = False
    required: bool = False


def doc(description: str, default: Any = None, **bounds: Any) -> Any:
    """Declare a documented API field. ``default`` is applied by the API server and by us."""
    meta = Meta(description=" ".join(description.split()), **bounds)
    if isinstance(default, list | dict):
        frozen_default = default
        return dataclasses.field(default_factory=lambda: type(frozen_default)(frozen_default),
                                 metadata={"api": meta, "api_default": default})
    return dataclasses.field(default=default, metadata={"api": meta, "api_default": default})


def json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


# ----------------------------------------------------------------------------------------------
# Type introspection


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def api_fields(cls: Any) -> tuple[tuple[dataclasses.Field[Any], Any, Meta], ...]:
    """Every API field of the dataclass ``cls`` with its (resolved) type and metadata."""
    return _api_fields(cls)


@functools.cache
def _api_fields(cls: type) -> tuple[tuple[dataclasses.Field[Any], Any, Meta], ...]:
    # Cached: status objects are built and fitted every cycle and folded for every node.
    hints = typing.get_type_hints(cls, include_extras=True)
    return tuple((f, hints[f.name], f.metadata["api"]) for f in dataclasses.fields(cls)
                 if "api" in f.metadata)


def meta_of(cls: type, name: str) -> Meta:
    """The declared metadata (description, bounds) of one API field."""
    return next(meta for f, _, meta in api_fields(cls) if f.name == name)


def rules_of(cls: type) -> tuple[Rule, ...]:
    return tuple(getattr(cls, "RULES", ()))


def _is_quantity(tp: Any) -> bool:
    return tp is Quantity


# ----------------------------------------------------------------------------------------------
# OpenAPI generation


def _scalar_schema(tp: Any) -> JSON:
    if _is_quantity(tp):
        return {"anyOf": [{"type": "integer"}, {"type": "string"}],
                "x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer", "format": "int64"}
    if tp is float:
        return {"type": "number"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [m.value for m in tp]}
    if tp is str:
        return {"type": "string"}
    raise TypeError(f"unsupported API type {tp!r}")


def _type_schema(tp: Any, meta: Meta | None) -> JSON:
    tp, _ = _unwrap_optional(tp)
    origin = get_origin(tp)
    if origin in (list, tuple):
        (item_tp, *_) = get_args(tp)
        item = _type_schema(item_tp, None)
        if meta is not None:
            _put_bounds(item, minimum=meta.item_minimum, maximum=meta.item_maximum,
                        pattern=meta.item_pattern, max_length=meta.item_max_length)
        schema: JSON = {"type": "array", "items": item}
        if meta is not None and meta.list_type:
            schema["x-kubernetes-list-type"] = meta.list_type
        return schema
    if origin is dict:
        _, value_tp = get_args(tp)
        value = _type_schema(value_tp, None)
        if meta is not None:
            _put_bounds(value, pattern=meta.item_pattern, max_length=meta.item_max_length,
                        minimum=meta.item_minimum, maximum=meta.item_maximum)
        return {"type": "object", "additionalProperties": value}
    if dataclasses.is_dataclass(tp):
        return openapi_schema(typing.cast(type, tp))
    return _scalar_schema(tp)


def _put_bounds(schema: JSON, **bounds: Any) -> None:
    names = {"minimum": "minimum", "maximum": "maximum", "pattern": "pattern",
             "max_length": "maxLength", "min_items": "minItems", "max_items": "maxItems",
             "max_properties": "maxProperties"}
    for key, value in bounds.items():
        if value is not None:
            schema[names[key]] = value


def openapi_schema(cls: type) -> JSON:
    """The structural OpenAPI v3 schema of an API dataclass, with descriptions and CEL rules."""
    properties: JSON = {}
    required: list[str] = []
    for f, tp, meta in api_fields(cls):
        schema = _type_schema(tp, meta)
        schema = {"description": meta.description, **schema}
        _put_bounds(schema, minimum=meta.minimum, maximum=meta.maximum, pattern=meta.pattern,
                    max_length=meta.max_length, min_items=meta.min_items,
                    max_items=meta.max_items, max_properties=meta.max_properties)
        if meta.preserve_unknown:
            schema["x-kubernetes-preserve-unknown-fields"] = True
        default = f.metadata.get("api_default")
        if default is not None:
            schema["default"] = default.value if isinstance(default, enum.Enum) else default
        if meta.required:
            required.append(json_name(f.name))
        properties[json_name(f.name)] = schema
    schema = {"type": "object", "properties": properties}
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        schema = {"description": " ".join(cls.__doc__.split()), **schema}
    if required:
        schema["required"] = required
    rules = rules_of(cls)
    if rules:
        schema["x-kubernetes-validations"] = [_rule_json(r) for r in rules]
    return schema


def _rule_json(rule: Rule) -> JSON:
    out: JSON = {"rule": rule.cel, "message": rule.message}
    if rule.field_path:
        out["fieldPath"] = rule.field_path
    return out


# ----------------------------------------------------------------------------------------------
# Defaulting and validation, driven by the very schema dict that goes into the CRD


_RULES_BY_CEL: dict[str, Rule] = {}


def register_rules(*classes: type) -> None:
    """Make the Python predicates of these classes' CEL rules known to ``validate``."""
    for cls in classes:
        for rule in rules_of(cls):
            _RULES_BY_CEL[rule.cel] = rule


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return str(value)


def _json_type(value: Any) -> str:
    """The JSON type of a value, as the API server's type errors name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    names = {str: "string", dict: "object", list: "array"}
    return next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)


def _type_ok(schema: JSON, value: Any) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    expected = schema.get("type")
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    checks: dict[str, type | tuple[type, ...]] = {
        "string": str, "boolean": bool, "object": dict, "array": list}
    return expected is None or isinstance(value, checks[expected])


def _type_name(schema: JSON) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "integer or string"
    return str(schema.get("type"))


def validate(value: Any, schema: JSON, path: str) -> list[str]:
    """Apply defaults in place and return every violation as ``path: reason`` lines."""
    if not _type_ok(schema, value):
        actual = _json_type(value)  # the API server names the type given, not the value
        return [f'{path}: Invalid value: "{actual}": {path} in body must be of type '
                f'{_type_name(schema)}: "{actual}"']
    errors = _scalar_errors(value, schema, path)
    if isinstance(value, dict):
        errors += _object_errors(value, schema, path)
    elif isinstance(value, list):
        errors += _array_errors(value, schema, path)
    if not errors:
        errors += _rule_errors(value, schema, path)
    return errors


def _scalar_errors(value: Any, schema: JSON, path: str) -> list[str]:
    errors = []
    enum_values = schema.get("enum")
    if enum_values is not None and value not in enum_values:
        supported = ", ".join(f'"{v}"' for v in enum_values)
        errors.append(f"{path}: Unsupported value: {_show(value)}: supported values: {supported}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: Invalid value: {value}: {path} in body should be greater "
                          f"than or equal to {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: Invalid value: {value}: {path} in body should be less than "
                          f"or equal to {schema['maximum']}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: Too long: may not be more than {schema['maxLength']} bytes")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: Invalid value: {_show(value)}: {path} in body should match "
                          f"'{schema['pattern']}'")
    return errors


def _object_errors(value: dict[str, Any], schema: JSON, path: str) -> list[str]:
    errors: list[str] = []
    props: JSON = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errors.append(f"{path}: Too many: {len(value)}: must have at most "
                      f"{schema['maxProperties']} items")
    for name in [n for n, v in value.items() if v is None and n in props]:
        del value[name]  # the API server drops nulls of non-nullable fields, then defaults
    for name, sub in props.items():
        if name not in value and "default" in sub:
            value[name] = plain(sub["default"])
    for name in schema.get("required", []):
        if name not in value:
            errors.append(f"{path}.{name}: Required value")
    for name, item in value.items():
        if name in props:
            errors += validate(item, props[name], f"{path}.{name}")
        elif isinstance(extra, dict):
            errors += validate(item, extra, f"{path}[{name}]")
        elif not schema.get("x-kubernetes-preserve-unknown-fields"):
            errors.append(f'{path}: unknown field "{path}.{name}"')
    return errors


def _array_errors(value: list[Any], schema: JSON, path: str) -> list[str]:
    errors: list[str] = []
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{path}: Too many: {len(value)}: must have at most "
                      f"{schema['maxItems']} items")
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(f"{path}: Invalid value: {len(value)}: {path} in body should have at "
                      f"least {schema['minItems']} items")
    if schema.get("x-kubernetes-list-type") == "set":
        seen: set[str] = set()
        for index, item in enumerate(value):
            if repr(item) in seen:
                errors.append(f"{path}[{index}]: Duplicate value: {_show(item)}")
            seen.add(repr(item))
    for index, item in enumerate(value):
        errors += validate(item, schema.get("items", {}), f"{path}[{index}]")
    return errors


def _rule_errors(value: Any, schema: JSON, path: str) -> list[str]:
    errors = []
    for rule_json in schema.get("x-kubernetes-validations", []):
        rule = _RULES_BY_CEL.get(rule_json["rule"])
        if rule is None:
            raise LookupError(f"no Python predicate registered for CEL rule {rule_json['rule']!r}")
        if not rule.check(value):
            where = path + (rule.field_path or "")
            errors.append(f"{where}: Invalid value: {_show(value)}: {rule.message}")
    return errors


def plain(value: Any) -> Any:
    """A deep copy as plain dicts and lists (of any mappings, e.g. kopf's bodies)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------
# Typed objects from a validated, defaulted dict


def build(cls: type[T], data: Mapping[str, Any]) -> T:
    """Construct the dataclass ``cls`` from an already validated and defaulted mapping."""
    kwargs: dict[str, Any] = {}
    for f, tp, _ in api_fields(cls):
        name = json_name(f.name)
        if name in data:
            kwargs[f.name] = _build_value(tp, data[name])
    return cls(**kwargs)


def parse(cls: type[T], data: Any) -> T | None:
    """``cls`` from JSON read back from the API (a status, say), or None when it breaks the
    schema: written by another version of the CRD, or by hand. Defaults are applied as the API
    server would; ``data`` itself is left as it was."""
    copy = plain(data)
    if not isinstance(copy, dict) or validate(copy, _schema_of(cls), "status"):
        return None
    return build(cls, copy)


def _schema_of(cls: Any) -> JSON:
    return _cached_schema(cls)


@functools.cache
def _cached_schema(cls: type) -> JSON:
    register_rules(cls)
    return openapi_schema(cls)


def _build_value(tp: Any, value: Any) -> Any:
    tp, _ = _unwrap_optional(tp)
    if value is None:
        return None
    origin = get_origin(tp)
    if origin in (list, tuple):
        (item_tp, *_) = get_args(tp)
        return [_build_value(item_tp, v) for v in value]
    if origin is dict:
        _, value_tp = get_args(tp)
        return {k: _build_value(value_tp, v) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(typing.cast(type, tp), value)
    if _is_quantity(tp):
        return Quantity(str(value))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    return value


def to_json(obj: Any) -> Any:
    """The wire form of an API dataclass (camelCase keys, unset fields left out)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for name, wire in _wire_names(type(obj)):
            value = getattr(obj, name)
            if value is not None:
                out[wire] = to_json(value)
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


@functools.cache
def _wire_names(cls: type) -> tuple[tuple[str, str], ...]:
    # Cached: every status write serializes the whole status (fields() and the camelCase
    # names were a sixth of a simulated agent's CPU in bench.scale).
    return tuple((f.name, json_name(f.name)) for f in dataclasses.fields(cls)
                 if "api" in f.metadata)


def fit(obj: T) -> T:
    """``obj`` (an API dataclass) cut to its declared bounds: lists to ``max_items``, maps to
    ``max_properties``, strings to ``max_length`` and list items or map values to
    ``item_max_length``, all the way down. The API server refuses a whole write when one value
    breaks a bound, so what the operator reports is made to fit rather than lost; lists should
    hold their most important entries first."""
    changes: dict[str, Any] = {}
    for f, _, meta in api_fields(type(obj)):
        value = getattr(obj, f.name)
        fitted = _fit_value(value, meta)
        if fitted is not value:
            changes[f.name] = fitted
    return dataclasses.replace(obj, **changes) if changes else obj  # type: ignore[type-var]


def _fit_value(value: Any, meta: Meta) -> Any:
    if isinstance(value, str):
        return _cut(value, meta.max_length)
    if isinstance(value, list):
        items = value[:meta.max_items] if meta.max_items is not None else value
        fitted = [_fit_item(item, meta) for item in items]
        return value if fitted == value and len(items) == len(value) else fitted
    if isinstance(value, dict):
        keys = list(value)[:meta.max_properties] if meta.max_properties is not None else value
        fitted_map = {k: _fit_item(value[k], meta) for k in keys}
        return value if fitted_map == value else fitted_map
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return fit(value)
    return value


def _fit_item(item: Any, meta: Meta) -> Any:
    if isinstance(item, str):
        return _cut(item, meta.item_max_length)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return fit(item)
    return item


def _cut(text: str, limit: int | None) -> str:
    return text if limit is None or len(text) <= limit else text[:limit]


_QUANTITY_FACTORS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def quantity_bytes(quantity: str | int) -> int:
    """Bytes of a quantity that matched ``QUANTITY_PATTERN`` (fractions round down)."""
    match = re.fullmatch(QUANTITY_PATTERN, str(quantity))
    if match is None:
        raise ValueError(f"not a quantity: {quantity!r}")
    number, _, suffix = match.groups()
    whole, _, fraction = number.partition(".")
    factor = _QUANTITY_FACTORS[suffix or ""]
    value = int(whole) * factor
    if fraction:
        value += int(fraction) * factor // 10 ** len(fraction)
    return value


