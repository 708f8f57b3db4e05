"""The contract every host "source" (KSM, UKSM, zswap, swap, meminfo, PSI) follows.

Like Node Feature Discovery's feature sources, each kernel interface is one small class behind
one interface: probe what exists, read settings and counters, apply a desired state, and
report exactly what changed. Settings are keyed by their path relative to the host root
(``sys/kernel/mm/ksm/pages_to_scan``) and valued by their canonical kernel text (what ``cat``
would show after normalisation, e.g. ``"scan-time"`` rather than ``"none [scan-time]"``), so a
plan, an originals file and a restore all speak the same language.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


class HostFS:
    """All file access under a host root (``/`` on a node, ``/host`` in a container).

    Kept tiny so tests can swap it for a fake kernel that raises EBUSY/EINVAL like the real one.
    """

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root)

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def read(self, rel: str) -> str | None:
        """The file's text without the trailing newline, or None when it does not exist."""
        try:
            return self.path(rel).read_text().rstrip("\n")
        except FileNotFoundError:
            return None

    def write(self, rel: str, value: str) -> None:
        """One write(2) of ``value``, like ``echo value > file``; OSError carries the errno.

        O_TRUNC as the shell uses it: sysfs ignores it, a plain file (a host root copied for
        tests or a dry run) would otherwise keep the tail of a longer old value.
        No O_CREAT: a missing attribute must fail with ENOENT, not appear as a new file.
        """
        fd = os.open(self.path(rel), os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(rel)))
        except (FileNotFoundError, NotADirectoryError):
            return []


@dataclass(frozen=True)
class Change:
    """One setting written: ``path`` relative to the host root, canonical ``before``/``after``."""

    path: str
    before: str | None
    after: str

    def as_json(self) -> dict[str, str | None]:
        return {"path": self.path, "from": self.before, "to": self.after}


@dataclass(frozen=True)
class ApplyError:
    """A setting that could not be written, with the kernel's errno and a human reason."""

    path: str
    value: str
    errno: int
    reason: str

    @property
    def errno_name(self) -> str:
        return errno.errorcode.get(self.errno, str(self.errno))

    def as_json(self) -> dict[str, str | int]:
        return {"path": self.path, "value": self.value, "errno": self.errno_name,
                "reason": self.reason}


@dataclass
class ApplyResult:
    changes: list[Change] = field(default_factory=list)
    errors: list[ApplyError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def extend(self, other: ApplyResult) -> None:
        self.changes.extend(other.changes)
        self.errors.extend(other.errors)
        self.notes.extend(other.notes)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class SourceReading:
    """What a source found: whether it exists, its writable settings and its counters."""

    name: str
    present: bool
    settings: Mapping[str, str] = field(default_factory=dict)  # path -> canonical value
    counters: Mapping[str, int] = field(default_factory=dict)  # counter name -> value


@runtime_checkable
class Source(Protocol):
    """One kernel interface. Read-only sources return an empty ApplyResult from ``apply``.

    There is no ``restore``: restoring is ``apply`` of the recorded originals. What to put back,
    and in which state of the other settings (the advisor or a UKSM governor resets some), is
    the planner's decision (``planning.restores.with_restores``); the reconciler records originals
    before its first write. A source only has to write safely whatever it is given.
    """

    @property
    def name(self) -> str: ...

    def read(self) -> SourceReading: ...

    def owns(self, path: str) -> bool:
        """Whether ``path`` (relative to the host root) is one of this source's settings."""
        ...

    def apply(self, desired: Mapping[str, str], *, allow_unmerge: bool = False) -> ApplyResult:
        """Write the settings in ``desired`` that differ from the current ones, in a safe order."""
        ...


class ReadOnlySource:
    """A source with counters only (``/proc/meminfo``, PSI): it owns no setting and applies
    nothing. Subclasses name themselves and parse their one file."""

    name = ""
    file = ""

    def __init__(self, fs: HostFS) -> None:
        self.fs = fs

    def parse(self, text: str) -> dict[str, int]:
        raise NotImplementedError

    def read(self) -> SourceReading:
        try:
            text = self.fs.read(self.file)
        except OSError:  # unreadable: EACCES, or EOPNOTSUPP for PSI booted with psi=0
            text = None
        if text is None:
            return SourceReading(name=self.name, present=False)
        return SourceReading(name=self.name, present=True, counters=self.parse(text))

    def owns(self, path: str) -> bool:
        return False

    def apply(self, desired: Mapping[str, str], *, allow_unmerge: bool = False) -> ApplyResult:
        return ApplyResult()
