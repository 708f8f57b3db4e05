"""Durable node state: the original value of every setting the agent touched.

The file is written atomically (temp file, fsync, rename, fsync of the directory) *before* the
first write to a setting, so a crash at any point leaves either the old or the new record and the
host never holds a change whose original is unknown. A recorded original is never overwritten:
after a restart the agent may find values it changed itself, and those must not become
"originals".
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "originals.json"
FORMAT_VERSION = 1


@dataclass
class NodeRecord:
    originals: dict[str, str] = field(default_factory=dict)
    # Restoring a setting that needed an unmerge (EBUSY) needs the same permission again.
    allow_unmerge: bool = False
    policy: str = ""
    # Guests whose balloon we moved ("<uri>\t<domain>"), to give back on release.
    guests: list[str] = field(default_factory=list)
    restore_on_release: bool = True
    # Each guest's own balloon statistics period (seconds) before we first changed it.
    stats_periods: dict[str, int] = field(default_factory=dict)


class StateStore:
    """originals.json under a state directory (``/var/lib/memory-overcommit`` on a node)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE

    def load(self) -> NodeRecord:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return NodeRecord()
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: not a state file (a JSON object was expected)")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"{self.path}: unsupported state format {data.get('version')!r}")
        try:
            return self._record(data)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{self.path}: malformed state file: {exc}") from exc

    @staticmethod
    def _record(data: dict[str, Any]) -> NodeRecord:
        return NodeRecord(originals=dict(data.get("originals", {})),
                          allow_unmerge=bool(data.get("allowUnmerge", False)),
                          policy=str(data.get("policy", "")),
                          guests=list(data.get("guests", [])),
                          restore_on_release=bool(data.get("restoreOnRelease", True)),
                          stats_periods={str(k): int(v) for k, v
                                         in data.get("statsPeriods", {}).items()})

    def save(self, record: NodeRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"version": FORMAT_VERSION, "originals": record.originals,
                              "allowUnmerge": record.allow_unmerge, "policy": record.policy,
                              "guests": record.guests,
                              "restoreOnRelease": record.restore_on_release,
                              "statsPeriods": record.stats_periods},
                             indent=2, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".originals.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(payload + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def record_before_change(self, record: NodeRecord, paths: Iterable[str],
                             current: Mapping[str, str]) -> bool:
        """Add the current value of each not-yet-recorded path; True if the record grew."""
        grew = False
        for path in paths:
            if path not in record.originals and path in current:
                record.originals[path] = current[path]
                grew = True
        return grew
