"""All host sources together: read everything, and route a desired state to its owners.

Each source is applied on its own: an exception in one (a bug, an unexpected kernel) becomes
an ApplyError for the paths it was given, and the other sources still run.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping, Sequence

from overcommit.host._sysfs import normalise_path
from overcommit.host.base import ApplyError, ApplyResult, HostFS, Source, SourceReading
from overcommit.host.ksm import KsmSource
from overcommit.host.meminfo import MeminfoSource
from overcommit.host.pressure import PressureSource
from overcommit.host.swap import SwapSource
from overcommit.host.uksm import UksmSource
from overcommit.host.zswap import ZswapSource

log = logging.getLogger(__name__)


def default_sources(fs: HostFS) -> list[Source]:
    return [KsmSource(fs), UksmSource(fs), ZswapSource(fs), SwapSource(fs), MeminfoSource(fs),
            PressureSource(fs)]


class HostAdapter:
    """The host as one object: ``read_all()`` and ``apply(desired)`` over every source."""

    def __init__(self, fs: HostFS | None = None, sources: Sequence[Source] | None = None) -> None:
        self.fs = fs if fs is not None else HostFS()
        self.sources: list[Source] = (
            list(sources) if sources is not None else default_sources(self.fs)
        )

    def read_all(self) -> dict[str, SourceReading]:
        """One reading per source, by source name; a source that fails reads as not present."""
        readings: dict[str, SourceReading] = {}
        for source in self.sources:
            try:
                readings[source.name] = source.read()
            except Exception:
                log.exception("reading host source %s failed", source.name)
                readings[source.name] = SourceReading(name=source.name, present=False)
        return readings

    def current_settings(self) -> dict[str, str]:
        """Every setting of every present source, {path: canonical value} (e.g. for originals)."""
        settings: dict[str, str] = {}
        for reading in self.read_all().values():
            settings.update(reading.settings)
        return settings

    def owner_of(self, path: str) -> Source | None:
        return next((source for source in self.sources if source.owns(path)), None)

    def apply(self, desired: Mapping[str, str], *, allow_unmerge: bool = False) -> ApplyResult:
        result = ApplyResult()
        for source, share in self._route(desired, result).items():
            result.extend(self._apply_one(source, share, allow_unmerge))
        return result

    def _route(self, desired: Mapping[str, str],
               result: ApplyResult) -> dict[Source, dict[str, str]]:
        routed: dict[Source, dict[str, str]] = {}
        for path, value in desired.items():
            owner = self.owner_of(path)
            if owner is None:
                result.errors.append(ApplyError(normalise_path(path), value, errno.EINVAL,
                                                "no host source manages this path"))
            else:
                routed.setdefault(owner, {})[path] = value
        return routed

    @staticmethod
    def _apply_one(source: Source, share: dict[str, str], allow_unmerge: bool) -> ApplyResult:
        try:
            return source.apply(share, allow_unmerge=allow_unmerge)
        except Exception as exc:
            log.exception("applying host source %s failed", source.name)
            code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
            reason = f"{source.name} failed unexpectedly: {exc!r}"
            return ApplyResult(errors=[ApplyError(normalise_path(path), value, code, reason)
                                       for path, value in share.items()])
