"""What the kernel does with one directory of settings, known without touching the host.

Each source (``ksm``, ``uksm``, ``zswap``, ``swap``) declares its rules once, as a
:class:`KernelRules` object beside the code that reads and writes the files: which files it has,
which writes make the kernel reset other files, which values read back as the same setting, and
which writes the kernel refuses while another file holds some value. The source obeys them when
it writes; the planner and the reconciler ask the same object (through ``host.catalog``) when they
decide what to write, record and restore, so a kernel quirk is written down in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# (source, counter name) -> its value now; what an equivalence may need to know (KSM: is
# anything merged?). ``Observation.counter`` is one, a source's live read another.
CounterLookup = Callable[[str, str], int]


def no_counters(source: str, name: str) -> int:
    return 0


@dataclass(frozen=True)
class Requirement:
    """A write of one file the kernel refuses (EINVAL) unless ``setting`` (a file of the same
    directory) holds ``value``; ``why`` says so to a person."""

    setting: str
    value: str
    why: str


@dataclass(frozen=True)
class KernelRules:
    """The files of one directory and the kernel's rules about them. Paths are relative to the
    host root (``sys/kernel/mm/ksm/pages_to_scan``); ``name`` is the file's name."""

    source: str  # the source's name: ksm, uksm, zswap, swap
    directory: str
    names: tuple[str, ...]
    # Writing a new value to the key makes the kernel reset the named files to defaults.
    resets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    requires: Mapping[str, Requirement] = field(default_factory=dict)

    def path(self, name: str) -> str:
        return f"{self.directory}/{name}"

    def name_of(self, path: str) -> str | None:
        """The file ``path`` names, when it is one of these settings; else None."""
        directory, _, name = path.strip().lstrip("/").rpartition("/")
        return name if directory == self.directory and name in self.names else None

    def same(self, name: str, wanted: str, current: str | None,
             counter: CounterLookup = no_counters) -> bool:
        """Whether a file reading ``current`` already holds what writing ``wanted`` would give
        (a source with coarser read-back or aliased values says more)."""
        return wanted == current

    def refusal(self, name: str, settings: Mapping[str, str]) -> str | None:
        """Why the kernel refuses a write of ``name`` while its directory's files read
        ``settings`` (by file name); None when it takes one."""
        requirement = self.requires.get(name)
        if requirement is None:
            return None
        now = settings.get(requirement.setting)
        return None if now is None or now == requirement.value else requirement.why

    def requirements(self, names: Mapping[str, str]) -> dict[str, str]:
        """What the files in ``names`` need set beside them to be writable at all."""
        return {r.setting: r.value for name in names if (r := self.requires.get(name))}
