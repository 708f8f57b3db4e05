"""Every shared invalid case is rejected by `overcommit validate` naming the field and the rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from overcommit.cli import EXIT_INVALID, main
from testkit.cases import invalid_policy_cases, policy_document

CASES = invalid_policy_cases()


def test_there_are_at_least_25_cases() -> None:
    assert len(CASES) >= 25
    assert len({c["name"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_cli_rejects_invalid_policy(case: dict[str, Any], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy_document(case["name"], case["spec"])))
    assert main(["validate", "-f", str(path)]) == EXIT_INVALID
    err = capsys.readouterr().err
    matching = [line for line in err.splitlines()
                if f"{case['field']}: " in line and case["message"] in line]
    assert matching, f"expected an error naming {case['field']} with {case['message']!r}:\n{err}"


def test_every_document_in_a_file_is_checked(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    good = policy_document("good", {"ksm": {"enabled": True}})
    bad1 = policy_document("bad-one", {"ksm": {"pagesToScan": 0}})
    bad2 = policy_document("bad-two", {"swap": {"swappiness": 999}})
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump_all([bad1, good, bad2]))
    assert main(["validate", "-f", str(path)]) == EXIT_INVALID
    out, err = capsys.readouterr()
    assert "good: valid" in out
    assert "#1 (MemoryOvercommitPolicy bad-one): spec.ksm.pagesToScan" in err
    assert "#3 (MemoryOvercommitPolicy bad-two): spec.swap.swappiness" in err


def test_valid_examples_pass(capsys: pytest.CaptureFixture[str]) -> None:
    examples = sorted(Path("examples").glob("*.yaml"))
    assert examples
    assert main(["validate", *[a for p in examples for a in ("-f", str(p))]]) == 0
    assert capsys.readouterr().out.count(": valid") == len(examples)


@pytest.mark.parametrize("text,needle", [
    ("a: [unclosed", "not valid YAML or JSON"),
    ("", "no policy documents found"),
    ("- just\n- a list\n", "document is not an object"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", 'kind: Unsupported value'),
    ("apiVersion: memoryovercommit.io/v1alpha1\nkind: MemoryOvercommitPolicy\nspec: {}\n",
     "metadata.name: Required value"),
    ("apiVersion: memoryovercommit.io/v1alpha1\nkind: MemoryOvercommitPolicy\n"
     "metadata: {name: x}\n", "spec: Required value"),
])
def test_malformed_documents(text: str, needle: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    assert main(["validate", "-f", str(path)]) == EXIT_INVALID
    assert needle in capsys.readouterr().err


def test_missing_file_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", "/nonexistent/policy.yaml"]) == EXIT_INVALID
    assert "cannot read" in capsys.readouterr().err


def test_nulls_are_dropped_like_the_api_server_does(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(policy_document("nulls", {"ksm": {"pagesToScan": None,
                                                                      "enabled": True}})))
    assert main(["validate", "-f", str(path)]) == 0
    assert "nulls: valid" in capsys.readouterr().out


def test_items_of_a_list_are_labelled_document_dot_item(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    first = policy_document("first", {"ksm": {"enabled": True}})
    good = policy_document("good", {"ksm": {"enabled": True}})
    bad = policy_document("bad", {"swap": {"swappiness": 999}})
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump_all([first, {"apiVersion": "v1", "kind": "List",
                                                "items": [good, bad]}]))
    assert main(["validate", "-f", str(path)]) == EXIT_INVALID
    out, err = capsys.readouterr()
    assert "first: valid" in out and "good: valid" in out
    assert f"{path}#2.2 (MemoryOvercommitPolicy bad): spec.swap.swappiness" in err
    assert "#1002" not in err


@pytest.mark.parametrize("items,needle", [
    ("[]", "no policy documents found"),
    ("null", "no policy documents found"),
    ("5", "#1: items: must be a list"),
    ("[1]", "#1.1: document is not an object"),
])
def test_odd_lists(items: str, needle: str, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(f"apiVersion: v1\nkind: List\nitems: {items}\n")
    assert main(["validate", "-f", str(path)]) == EXIT_INVALID
    assert needle in capsys.readouterr().err
