"""What to write so the node ends up as planned, and what restoring needs: pure rules over the
kernel's own (``host.catalog``), shared by the engine's apply, its dry run and ``overcommit plan``.

Every kernel quirk comes from the sources' rules: which writes reset other settings, which
values read back as the same setting, which writes the kernel refuses while another setting
holds. Nothing here names a file.
"""

from __future__ import annotations

from collections.abc import Mapping

from overcommit.host import catalog
from overcommit.host.base import Change
from overcommit.host.rules import CounterLookup, no_counters


def with_restores(desired: Mapping[str, str], originals: Mapping[str, str],
                  current: Mapping[str, str] | None = None) -> dict[str, str]:
    """What to apply: recorded originals for settings the plan no longer names, then the plan.

    A setting an earlier policy changed and the current one does not name goes back to what
    the node had, so "change only what the policy names" holds across policy changes too.
    ``current`` (the node now) lets a setting the agent never changed count as at its original.
    """
    before = {**(current or {}), **originals}
    merged = {path: value for path, value in originals.items()
              if path not in desired and not _waits_for_its_resetter(path, desired, before)}
    merged.update(desired)
    return _without_refused(merged, current or {})


def _waits_for_its_resetter(path: str, desired: Mapping[str, str],
                            before: Mapping[str, str]) -> bool:
    """Whether ``path``'s original waits: the plan keeps a setting whose change resets it away
    from its original, so the kernel would undo the restore (UKSM's governor preset) or refuse
    it (pages_to_scan under the advisor). It comes back once that setting does."""
    return any(key in desired and desired[key] != before.get(key)
               for key in catalog.resetters_of(path))


def _without_refused(target: dict[str, str], current: Mapping[str, str]) -> dict[str, str]:
    """``target`` without the writes the kernel would refuse once it is applied (pages_to_scan
    under the advisor: the advisor sets the rate itself)."""
    final = {**current, **target}
    return {path: value for path, value in target.items()
            if catalog.refusal(path, final) is None}


def preview(desired: Mapping[str, str], current: Mapping[str, str],
            counter: CounterLookup = no_counters) -> list[Change]:
    """The changes applying ``desired`` would make (a value the kernel reads back as the same
    setting, such as run=2 on a stopped KSM with nothing merged, is none)."""
    return [Change(path, current.get(path), value) for path, value in desired.items()
            if not catalog.same(path, value, current.get(path), counter)]


def to_record(target: Mapping[str, str], current: Mapping[str, str],
              originals: Mapping[str, str], counter: CounterLookup = no_counters) -> list[str]:
    """The settings whose originals must be on disk before ``target`` is applied: those it
    changes, and those the kernel resets as a side effect of a change."""
    changed = [c.path for c in preview(target, current, counter)]
    side_effects = [path for key in changed for path in catalog.resets_of(key)]
    return [path for path in changed + side_effects
            if holds_node_value(path, current, originals)]


def holds_node_value(path: str, current: Mapping[str, str],
                     originals: Mapping[str, str]) -> bool:
    """Whether ``path`` still holds the node's own value, worth recording as its original. Not
    once a write of ours (a recorded resetter) has reset it; not while the kernel refuses its
    write (the advisor owns pages_to_scan: putting advisor_mode back hands the rate back, and
    writing the advisor's value back would be refused)."""
    if any(key in originals for key in catalog.resetters_of(path)):
        return False
    return catalog.refusal(path, current) is None


def needs_no_restore(path: str, current: Mapping[str, str], original: str,
                     counter: CounterLookup = no_counters) -> bool:
    """Whether ``path`` is back at ``original`` (or cannot be put back: its file is gone, or
    the kernel refuses the write while another setting holds)."""
    now = current.get(path)
    if now is None or catalog.refusal(path, current) is not None:
        return True
    return catalog.same(path, original, now, counter)
