"""Plumbing shared by the sysfs/procfs sources: canonical text, value checks and careful writes.

A source declares its settings as :class:`SettingSpec` rows; :class:`SettingsSource` turns them
into ``read``/``owns`` and the bookkeeping of ``apply`` (validation, missing files, one
:class:`Change` or :class:`ApplyError` per write). Sources with ordering rules (KSM, UKSM)
override ``apply`` but reuse the pieces.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from overcommit.host.base import ApplyError, ApplyResult, Change, HostFS, SourceReading
from overcommit.host.rules import KernelRules

log = logging.getLogger(__name__)

Canonical = Callable[[str], str]
Check = Callable[[str], str | None]  # returns why the kernel would reject the value, or None

_BRACKETED = re.compile(r"\[([^\]]*)\]")
_SHIFTED = re.compile(r"^\s*(\d+)\s*\*\s*2\^(\d+)\s*$")
_TRUE = {"y", "yes", "1", "on", "true"}
_FALSE = {"n", "no", "0", "off", "false"}


# --- canonical text -------------------------------------------------------------------------

def canonical_text(text: str) -> str:
    return text.strip()


def canonical_int(text: str) -> str:
    """``" 0100\\n"`` -> ``"100"``; text that is not an integer is only stripped."""
    value = parse_int(text)
    return str(value) if value is not None else text.strip()


def canonical_choice(text: str) -> str:
    """The selected entry of a ``[none] scan-time`` style list; plain text is only stripped."""
    match = _BRACKETED.search(text)
    return match.group(1).strip() if match else text.strip()


def canonical_words(text: str) -> str:
    """Whitespace-separated tokens joined by single spaces (``"20 40 MAX/4 MAX/1 "``)."""
    return " ".join(text.split())


def canonical_yes_no(text: str) -> str:
    """Module bool parameters print ``Y``/``N``; accept the spellings the kernel accepts."""
    word = text.strip().lower()
    if word in _TRUE:
        return "Y"
    if word in _FALSE:
        return "N"
    return text.strip()


# --- parsing ----------------------------------------------------------------------------------

def parse_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def parse_shifted_int(text: str | None) -> int | None:
    """A plain integer, or UKSM's overflow form ``N * 2^B`` (= N << B)."""
    if text is None:
        return None
    match = _SHIFTED.match(text)
    if match:
        return int(match.group(1)) << int(match.group(2))
    return parse_int(text)


# --- value checks (mirror the kernel's store functions, so we never write a rejected value) ---

def unsigned(low: int = 0, high: int = 2**64 - 1) -> Check:
    def check(value: str) -> str | None:
        number = parse_int(value)
        if number is None or not value.strip().lstrip("+").isdigit():
            return f"{value!r} is not an unsigned integer"
        if not low <= number <= high:
            return f"{number} is outside {low}..{high}"
        return None

    return check


any_unsigned: Check = unsigned()


def one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        if value.strip() in choices:
            return None
        return f"{value!r} is not one of {', '.join(choices)}"

    return check


def yes_no(value: str) -> str | None:
    return None if canonical_yes_no(value) in ("Y", "N") else f"{value!r} is not a boolean"


def word(value: str) -> str | None:
    return None if value.strip() and len(value.split()) == 1 else f"{value!r} is not one word"


# --- paths and reads ----------------------------------------------------------------------------

def normalise_path(path: str) -> str:
    return path.strip().lstrip("/")


def read_text(fs: HostFS, rel: str) -> str | None:
    """Like ``fs.read``, but an unreadable file (EACCES; EOPNOTSUPP for disabled PSI) is None."""
    try:
        return fs.read(rel)
    except OSError as exc:
        log.debug("cannot read %s: %s", rel, exc)
        return None


@dataclass(frozen=True)
class SettingSpec:
    """One writable file: its name, how to canonicalise its text, and the kernel's value rules."""

    name: str
    canonical: Canonical = canonical_int
    check: Check = any_unsigned


class SettingsSource:
    """A directory of writable settings plus read-only counters (the common shape of sysfs).

    ``rules`` (pure, shared with the planner) says what the kernel does with the files;
    ``specs`` how each file's text is read and which values the kernel's store takes."""

    title: str = ""  # human name used in messages ("KSM")
    rules: KernelRules = KernelRules("", "", ())
    specs: tuple[SettingSpec, ...] = ()
    counter_names: tuple[str, ...] = ()

    def __init__(self, fs: HostFS) -> None:
        self.fs = fs
        self._specs = {spec.name: spec for spec in self.specs}

    @property
    def name(self) -> str:
        return self.rules.source

    @property
    def directory(self) -> str:
        return self.rules.directory

    # --- reading ---

    def path_of(self, name: str) -> str:
        return self.rules.path(name)

    def present(self) -> bool:
        return self.fs.exists(self.directory)

    def owns(self, path: str) -> bool:
        return self.rules.name_of(normalise_path(path)) is not None

    def read_setting(self, name: str) -> str | None:
        text = read_text(self.fs, self.path_of(name))
        return None if text is None else self._specs[name].canonical(text)

    def read_settings(self) -> dict[str, str]:
        """Canonical value of every setting file that exists, keyed by file name."""
        found = {name: self.read_setting(name) for name in self._specs}
        return {name: value for name, value in found.items() if value is not None}

    def parse_counter(self, text: str | None) -> int | None:
        return parse_int(text)

    def read_counters(self) -> dict[str, int]:
        counters = {}
        for name in self.counter_names:
            value = self.parse_counter(read_text(self.fs, self.path_of(name)))
            if value is not None:
                counters[name] = value
        return counters

    def read(self) -> SourceReading:
        if not self.present():
            return SourceReading(name=self.name, present=False)
        settings = {self.path_of(name): value for name, value in self.read_settings().items()}
        return SourceReading(self.name, True, settings, self.read_counters())

    # --- applying ---

    def apply(self, desired: Mapping[str, str], *, allow_unmerge: bool = False) -> ApplyResult:
        """Default: write the differing settings in ``specs`` order. Foreign paths are ignored."""
        result = ApplyResult()
        wanted = self.wanted(desired, result)
        current = self.read_settings()
        for spec in self.specs:
            if spec.name in wanted:
                self.write_if_differs(spec.name, wanted[spec.name], current, result)
        return result

    def wanted(self, desired: Mapping[str, str], result: ApplyResult) -> dict[str, str]:
        """The owned, valid and present entries of ``desired`` as {file name: canonical value}.

        Invalid values and missing files become ApplyErrors here, before anything is written.
        """
        wanted: dict[str, str] = {}
        for path, value in desired.items():
            if not self.owns(path):
                continue
            name = normalise_path(path).rpartition("/")[2]
            spec = self._specs[name]
            problem = spec.check(value)
            if problem is not None:
                self.error(result, name, value, errno.EINVAL, f"invalid value: {problem}")
            elif not self.fs.exists(self.path_of(name)):
                self.error(result, name, value, errno.ENOENT, self.absent_reason(name))
            else:
                wanted[name] = spec.canonical(value)
        return wanted

    def absent_reason(self, name: str) -> str:
        if not self.present():
            return f"{self.title} is not present on this kernel ({self.directory} is missing)"
        return f"{self.path_of(name)} is not present on this kernel"

    def differs(self, name: str, want: str, current: Mapping[str, str]) -> bool:
        return not self.rules.same(name, want, current.get(name), self.live_counter)

    def live_counter(self, source: str, name: str) -> int:
        """One of this source's counters, read now (what a rule's equivalence may ask)."""
        return self.parse_counter(read_text(self.fs, self.path_of(name))) or 0

    def write_if_differs(
        self, name: str, want: str, current: dict[str, str], result: ApplyResult
    ) -> bool:
        """Write when different; keeps ``current`` up to date. True when nothing failed."""
        if not self.differs(name, want, current):
            return True
        if self.write(name, want, current.get(name), result):
            current[name] = want
            return True
        return False

    def record_change(
        self, name: str, value: str, current: dict[str, str], result: ApplyResult
    ) -> None:
        """Book a write that already succeeded (after a ``try_write``)."""
        result.changes.append(Change(self.path_of(name), current.get(name), value))
        current[name] = value

    def try_write(self, name: str, value: str) -> OSError | None:
        try:
            self.fs.write(self.path_of(name), value)
        except OSError as exc:
            return exc
        return None

    def write(self, name: str, value: str, before: str | None, result: ApplyResult) -> bool:
        """One write, recorded as a Change or an ApplyError. True on success."""
        failure = self.try_write(name, value)
        if failure is None:
            result.changes.append(Change(self.path_of(name), before, value))
            return True
        self.record_failure(result, name, value, failure)
        return False

    def record_failure(self, result: ApplyResult, name: str, value: str, exc: OSError) -> None:
        code = exc.errno if exc.errno is not None else errno.EIO
        self.error(result, name, value, code, self.failure_reason(name, value, code))

    def failure_reason(self, name: str, value: str, code: int) -> str:
        if code == errno.ENOENT and not self.fs.exists(self.path_of(name)):
            return self.absent_reason(name)
        return f"the kernel refused {value!r} for {name}: {os.strerror(code)}"

    def error(self, result: ApplyResult, name: str, value: str, code: int, reason: str) -> None:
        result.errors.append(ApplyError(self.path_of(name), value, code, reason))
