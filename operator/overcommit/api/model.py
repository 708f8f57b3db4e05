"""Parsing MemoryOvercommitPolicy documents (YAML/JSON text, files, or Kubernetes objects)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from overcommit.api import policy as api
from overcommit.api.schema import build, openapi_schema, validate


class PolicyError(ValueError):
    """A policy that breaks the API's rules; ``errors`` are ``field: reason`` lines."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__("; ".join(self.lines()))

    def lines(self) -> list[str]:
        """Each error as one line, prefixed with where it was found."""
        return [f"{self.source}: {e}" if self.source else e for e in self.errors]


@dataclass(frozen=True)
class Policy:
    """A parsed, defaulted and validated policy plus the metadata selection needs."""

    name: str
    spec: api.PolicySpec
    uid: str = ""
    generation: int = 0
    creation_timestamp: str = ""  # RFC 3339, as the API server writes it; sorts chronologically


_SPEC_SCHEMA = openapi_schema(api.PolicySpec)


def spec_schema() -> dict[str, Any]:
    return copy.deepcopy(_SPEC_SCHEMA)


def policy_from_object(obj: Mapping[str, Any], source: str = "<object>") -> Policy:
    """Validate one Kubernetes object of kind MemoryOvercommitPolicy and return the model."""
    errors = _check_header(obj)
    meta = obj.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, Mapping) else None
    label = f"{source} ({api.POLICY_KIND} {name})" if name else source
    if errors:
        raise PolicyError(label, errors)
    spec = copy.deepcopy(obj.get("spec"))
    if spec is None:
        raise PolicyError(label, ["spec: Required value"])
    errors = validate(spec, _SPEC_SCHEMA, "spec")
    if errors:
        raise PolicyError(label, errors)
    return Policy(
        name=str(name),
        spec=build(api.PolicySpec, spec),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation", 0) or 0),
        creation_timestamp=str(meta.get("creationTimestamp", "") or ""),
    )


def _check_header(obj: Mapping[str, Any]) -> list[str]:
    errors = []
    api_version = f"{api.GROUP}/{api.VERSION}"
    if obj.get("apiVersion") != api_version:
        errors.append(f'apiVersion: Unsupported value: "{obj.get("apiVersion")}": '
                      f'supported values: "{api_version}"')
    if obj.get("kind") != api.POLICY_KIND:
        errors.append(f'kind: Unsupported value: "{obj.get("kind")}": supported values: '
                      f'"{api.POLICY_KIND}"')
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not meta.get("name"):
        errors.append("metadata.name: Required value")
    return errors


def iter_documents(text: str, source: str) -> Iterator[tuple[str, Any]]:
    """Every non-empty YAML (or JSON) document with its label: ``1``, ``2``, ... and, for the
    items of a ``kind: List`` document, ``1.1``, ``1.2``, ... (document 1, item 1)."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise PolicyError(source, [f"not valid YAML or JSON: {exc}"]) from exc
    for index, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        if isinstance(doc, Mapping) and doc.get("kind") == "List" and "items" in doc:
            items = doc["items"]
            if items is None:
                continue  # an empty List, as `kubectl get -o yaml` prints one
            if not isinstance(items, list):
                raise PolicyError(f"{source}#{index}", ["items: must be a list"])
            for sub, item in enumerate(items, start=1):
                yield f"{index}.{sub}", item
            continue
        yield str(index), doc


def load_policies(path: str | Path, *, allow_empty: bool = False) -> list[Policy]:
    """All policies in a file (several YAML documents or a List); raises on the first bad one.

    With ``allow_empty`` a file without any policy document (empty, only comments or ``---``,
    an empty List) gives ``[]`` instead of an error.
    """
    results = parse_policies_text(Path(path).read_text() if str(path) != "-" else
                                  _stdin(), str(path), allow_empty=allow_empty)
    bad = [r for r in results if isinstance(r, PolicyError)]
    if bad:
        raise PolicyError("", [line for err in bad for line in err.lines()])
    return [r for r in results if isinstance(r, Policy)]


def parse_policies_text(text: str, source: str, *,
                        allow_empty: bool = False) -> list[Policy | PolicyError]:
    """Each document's result: a Policy or the PolicyError that names its fields and rules.

    A text without documents is an error unless ``allow_empty``, which gives ``[]``.
    """
    results: list[Policy | PolicyError] = []
    for label, doc in iter_documents(text, source):
        where = f"{source}#{label}"
        if not isinstance(doc, Mapping):
            results.append(PolicyError(where, ["document is not an object"]))
            continue
        try:
            results.append(policy_from_object(doc, where))
        except PolicyError as err:
            results.append(err)
    if not results and not allow_empty:
        results.append(PolicyError(source, ["no policy documents found"]))
    return results


def _stdin() -> str:
    import sys

    return sys.stdin.read()
