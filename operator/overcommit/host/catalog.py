"""Every kernel interface's rules, by path: what the planner and the reconciler ask the kernel's
rules through. Pure: it holds the sources' rule objects, never touches the host."""

from __future__ import annotations

from collections.abc import Mapping

from overcommit.host.ksm import KSM
from overcommit.host.rules import CounterLookup, KernelRules, no_counters
from overcommit.host.swap import SWAP
from overcommit.host.uksm import UKSM
from overcommit.host.zswap import ZSWAP

RULES: tuple[KernelRules, ...] = (KSM, UKSM, ZSWAP, SWAP)


def rules_of(path: str) -> tuple[KernelRules, str] | None:
    """The rules of the directory ``path`` is in, and the file's name; None for a path no
    source manages."""
    for rules in RULES:
        name = rules.name_of(path)
        if name is not None:
            return rules, name
    return None


def split(path: str) -> tuple[str, str]:
    """``sys/kernel/mm/ksm/pages_to_scan`` -> ``("ksm", "pages_to_scan")``; a path no source
    manages splits at its last slash."""
    found = rules_of(path)
    if found is None:
        directory, _, name = path.rpartition("/")
        return directory, name
    return found[0].source, found[1]


def resetters_of(path: str) -> list[str]:
    """The settings whose change makes the kernel reset ``path``."""
    found = rules_of(path)
    if found is None:
        return []
    rules, name = found
    return [rules.path(key) for key, reset in rules.resets.items() if name in reset]


def resets_of(path: str) -> list[str]:
    """The settings the kernel resets when ``path`` changes."""
    found = rules_of(path)
    if found is None:
        return []
    rules, name = found
    return [rules.path(reset) for reset in rules.resets.get(name, ())]


def same(path: str, wanted: str, current: str | None,
         counter: CounterLookup = no_counters) -> bool:
    """Whether ``path`` reading ``current`` already holds what writing ``wanted`` would give."""
    found = rules_of(path)
    return wanted == current if found is None else found[0].same(found[1], wanted, current,
                                                                  counter)


def refusal(path: str, settings: Mapping[str, str]) -> str | None:
    """Why the kernel refuses writing ``path`` while the host's settings (by path) are
    ``settings``; None when it takes the write."""
    found = rules_of(path)
    if found is None:
        return None
    rules, name = found
    prefix = rules.directory + "/"
    local = {p[len(prefix):]: v for p, v in settings.items() if p.startswith(prefix)}
    return rules.refusal(name, local)
