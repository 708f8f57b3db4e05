"""How policy values become the kernel's canonical text; only what the policy names is emitted."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from overcommit.host.rules import KernelRules

Settings = dict[str, str]
Value = int | bool | str | None


def flag(value: Value) -> str:
    return "1" if value else "0"


def yes_no(value: Value) -> str:
    return "Y" if value else "N"


def named(rules: KernelRules, files: Mapping[str, Value],
          render: Callable[[Value], str] = str) -> Settings:
    """``path = render(value)`` for every file of ``rules`` whose value the policy names."""
    return {rules.path(name): render(value) for name, value in files.items() if value is not None}
