"""Pure: which node states have outlived their Node.

In a cluster the garbage collector removes a node state with its Node (the agent sets the owner
reference); the sweep catches the rest: states written before the owner reference could be set,
or clusters whose garbage collector lags. A state is deleted only when two sweeps in a row found
its node missing, so a state whose Node event simply has not reached us yet is never taken.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


def strays(states: Collection[str], nodes: Mapping[str, object] | Collection[str]) -> set[str]:
    """Node states (named after their node) whose node does not exist."""
    return {name for name in states if name not in nodes}


def sweep(states: Collection[str], nodes: Mapping[str, object] | Collection[str],
          seen_before: set[str]) -> tuple[set[str], set[str]]:
    """(delete now, strays seen for the next sweep): a stray is deleted on its second sighting."""
    found = strays(states, nodes)
    return found & seen_before, found - seen_before
