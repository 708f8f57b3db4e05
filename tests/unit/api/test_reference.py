"""The Markdown policy and node-state references are generated from the CRD schema and committed.

* The committed files are exactly what ``python -m overcommit.api.reference`` makes now, so any
  schema change without a regeneration fails here with the command to run.
* Every field of both CRDs has its row, with its type, default, bounds, enum and pattern, and
  every CEL rule appears with its message: the generator cannot silently skip part of the API.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overcommit.api import crd, reference

REFERENCE_DIR = Path("docs/reference")
DEFINITIONS = {"policy.md": crd.policy_crd, "nodestate.md": crd.node_state_crd}


def root_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = DEFINITIONS[name]()["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]
    return schema


def fields(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (path, schema) of every field, arrays of objects as ``path[].field``."""
    for name, sub in schema.get("properties", {}).items():
        here = f"{path}.{name}" if path else name
        yield here, sub
        yield from fields(sub, here)
        if isinstance(sub.get("items"), dict):
            yield from fields(sub["items"], f"{here}[]")


def rules(schema: dict[str, Any]) -> Iterator[dict[str, str]]:
    yield from schema.get("x-kubernetes-validations", [])
    for _, sub in fields(schema):
        yield from sub.get("x-kubernetes-validations", [])
        if isinstance(sub.get("items"), dict):
            yield from sub["items"].get("x-kubernetes-validations", [])


def row_of(text: str, path: str) -> str:
    rows = [line for line in text.splitlines() if line.startswith(f"| `{path}` |")]
    assert len(rows) == 1, f"{path}: expected one table row, found {len(rows)}"
    return rows[0]


def unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
def test_committed_reference_is_generated_from_the_schema(name: str) -> None:
    committed = (REFERENCE_DIR / name).read_text() if (REFERENCE_DIR / name).is_file() else ""
    assert committed == reference.generated_files()[name], \
        f"{REFERENCE_DIR / name} is stale: run {reference.COMMAND}"


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
def test_every_field_has_a_row_with_its_type_default_bounds_and_description(name: str) -> None:
    text = reference.generated_files()[name]
    paths = list(fields(root_schema(name)))
    assert len(paths) > 20
    for path, schema in paths:
        row = row_of(text, path)
        description = " ".join(schema.get("description", "").split()).replace("|", "\\|")
        assert description in row, path
        if "default" in schema:
            assert reference.code(schema["default"]) in row, path
        for bound in ("minimum", "maximum", "maxLength", "maxItems", "maxProperties"):
            if bound in schema:
                assert re.search(rf"(?<![0-9-]){schema[bound]}(?![0-9])", row), (path, bound)
        for value in schema.get("enum", []):
            assert f"`{value}`" in row, (path, value)
        if "pattern" in schema:
            assert schema["pattern"].replace("|", "\\|") in row, path
        if "properties" in schema or "properties" in schema.get("items", {}):
            assert "[object](#" in row, path
        assert ("**required**" in row) == _required(root_schema(name), path), path


def _required(root: dict[str, Any], path: str) -> bool:
    """Whether the object holding ``path`` lists its last part as required."""
    parent = root
    *heads, last = path.split(".")
    for part in heads:
        name = part.removesuffix("[]")
        parent = parent["properties"][name]
        if part.endswith("[]"):
            parent = parent["items"]
    return last in parent.get("required", [])


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
def test_every_cel_rule_appears_with_its_message(name: str) -> None:
    text = reference.generated_files()[name]
    found = list(rules(root_schema(name)))
    assert found
    for rule in found:
        assert f"- {rule['message']}" in text and f"`{rule['rule']}`" in text, rule["message"]


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
def test_tables_keep_five_columns_and_links_reach_a_section(name: str) -> None:
    text = reference.generated_files()[name]
    anchors = {reference.slug(line[3:]) for line in text.splitlines() if line.startswith("## ")}
    for line in text.splitlines():
        if line.startswith("| "):
            assert unescaped_pipes(line) == 6, line
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links
    assert set(links) <= anchors


def test_pipes_in_patterns_and_descriptions_are_escaped_in_tables() -> None:
    schema = {"type": "string", "pattern": "^(a|b)$", "description": "x | y"}
    row = reference.field_row("spec.choice", schema, True, schema["description"])
    assert unescaped_pipes(row) == 6
    assert "`^(a\\|b)$`" in row and "x \\| y" in row and "**required**" in row


def test_check_fails_on_stale_files_naming_the_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert reference.main(["--check", str(tmp_path)]) == 1
    assert reference.COMMAND in capsys.readouterr().err
    assert reference.main(["--write", str(tmp_path)]) == 0
    assert reference.main(["--check", str(tmp_path)]) == 0
    policy = tmp_path / "policy.md"
    policy.write_text(policy.read_text().replace("`8000`", "`9000`"))
    assert reference.main(["--check", str(tmp_path)]) == 1
    assert str(policy) in capsys.readouterr().err
