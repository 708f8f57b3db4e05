"""Shared test cases: the invalid policies both the CLI and the API server must reject."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent


def invalid_policy_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = yaml.safe_load((HERE / "invalid_policies.yaml").read_text())
    return cases


def policy_document(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "memoryovercommit.io/v1alpha1", "kind": "MemoryOvercommitPolicy",
            "metadata": {"name": name}, "spec": spec}
