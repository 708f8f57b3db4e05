"""KSM (mainline kernel same-page merging): ``/sys/kernel/mm/ksm``.

The order of writes matters here, because the kernel refuses some of them depending on others:

* ``pages_to_scan`` is EINVAL while the scan-time advisor is on, and every change of
  ``advisor_mode`` resets ``pages_to_scan`` (to 100 for ``none``, to
  ``advisor_min_pages_to_scan`` for ``scan-time``).
* ``merge_across_nodes`` and ``max_page_sharing`` are EBUSY while any page is merged; the only
  way through is ``run=2`` (unmerge everything), which the policy must allow explicitly.
* ``run`` goes last, so ksmd starts with every other setting already in place.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping

from overcommit.host._sysfs import (
    SettingSpec,
    SettingsSource,
    canonical_choice,
    one_of,
    read_text,
    unsigned,
)
from overcommit.host.base import ApplyResult, HostFS
from overcommit.host.rules import CounterLookup, KernelRules, Requirement, no_counters

KSM_DIR = "sys/kernel/mm/ksm"
ADVISOR_NONE = "none"
ADVISOR_SCAN_TIME = "scan-time"
# run: 0 stops ksmd (merged pages stay merged), 1 runs it, 2 stops it and unmerges every page.
RUN_STOPPED, RUN_MERGING, RUN_UNMERGE = "0", "1", "2"

_UINT_MAX = 2**32 - 1
_INT_MAX = 2**31 - 1

# Tuning of the advisor; harmless while it is off, so written before it is switched on (the
# switch copies advisor_min_pages_to_scan into pages_to_scan as the advisor's starting value).
_ADVISOR_TUNING = (
    "advisor_max_cpu",
    "advisor_min_pages_to_scan",
    "advisor_max_pages_to_scan",
    "advisor_target_scan_time",
)
_INDEPENDENT = ("sleep_millisecs", "use_zero_pages", "stable_node_chains_prune_millisecs",
                "smart_scan")
_NEED_UNMERGE = ("merge_across_nodes", "max_page_sharing")  # EBUSY while pages are merged

OOM_NOTE = (
    "KSM unmerged all pages (run=2); while it unmerges, the kernel marks the writing process "
    "(this agent) as the preferred OOM victim"
)

KSM_COUNTERS = (
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "pages_scanned",
    "pages_skipped",
    "full_scans",
    "stable_node_chains",
    "stable_node_dups",
    "ksm_zero_pages",
    "general_profit",  # bytes, signed: savings net of KSM's own metadata
)


SPECS = (
    SettingSpec("run", check=unsigned(0, 2)),
    SettingSpec("pages_to_scan", check=unsigned(0, _UINT_MAX)),
    SettingSpec("sleep_millisecs", check=unsigned(0, _UINT_MAX)),
    SettingSpec("merge_across_nodes", check=unsigned(0, 1)),
    SettingSpec("max_page_sharing", check=unsigned(2, _INT_MAX)),
    SettingSpec("use_zero_pages", check=unsigned(0, 1)),
    SettingSpec("stable_node_chains_prune_millisecs", check=unsigned(0, _UINT_MAX)),
    SettingSpec("smart_scan", check=unsigned(0, 1)),
    SettingSpec("advisor_mode", canonical_choice, one_of(ADVISOR_NONE, ADVISOR_SCAN_TIME)),
    SettingSpec("advisor_max_cpu", check=unsigned()),
    SettingSpec("advisor_min_pages_to_scan", check=unsigned()),
    SettingSpec("advisor_max_pages_to_scan", check=unsigned()),
    SettingSpec("advisor_target_scan_time", check=unsigned(1)),
)


class KsmRules(KernelRules):
    def same(self, name: str, wanted: str, current: str | None,
             counter: CounterLookup = no_counters) -> bool:
        """run=2 asks for "stopped with nothing merged": after a successful run=2 the kernel
        keeps reading 2, and a stopped KSM with nothing merged is just as unmerged, so neither
        needs another (slow, OOM-prone) unmerge pass."""
        if name == "run" and wanted == RUN_UNMERGE:
            return current == RUN_UNMERGE or (current == RUN_STOPPED
                                              and counter("ksm", "pages_shared") == 0)
        return super().same(name, wanted, current, counter)


KSM = KsmRules(
    source="ksm", directory=KSM_DIR, names=tuple(spec.name for spec in SPECS),
    # Every change of advisor_mode resets pages_to_scan (to 100 for none, to
    # advisor_min_pages_to_scan for scan-time).
    resets={"advisor_mode": ("pages_to_scan",)},
    requires={"pages_to_scan": Requirement(
        "advisor_mode", ADVISOR_NONE,
        "pages_to_scan cannot be written while the kernel's scan-time advisor is on "
        "(advisor_mode=scan-time): the advisor sets the scan rate itself")},
)


class KsmSource(SettingsSource):
    title = "KSM"
    rules = KSM
    specs = SPECS
    counter_names = KSM_COUNTERS

    def apply(self, desired: Mapping[str, str], *, allow_unmerge: bool = False) -> ApplyResult:
        result = ApplyResult()
        wanted = self.wanted(desired, result)
        if wanted:
            _KsmApply(self, wanted, allow_unmerge, result).run()
        return result


class _KsmApply:
    """One ``KsmSource.apply`` call: the current values it tracks and the safe write order."""

    def __init__(self, source: KsmSource, wanted: dict[str, str], allow_unmerge: bool,
                 result: ApplyResult) -> None:
        self.source = source
        self.wanted = wanted
        self.result = result
        # Asking for run=2 is asking for an unmerge, so it also unlocks the EBUSY settings.
        self.allow_unmerge = allow_unmerge or wanted.get("run") == RUN_UNMERGE
        self.current = source.read_settings()
        self.run_before = self.current.get("run")
        self.unmerged = False  # whether this apply tried run=2
        self.unmerge_ok = False

    def run(self) -> None:
        self.write_each(_ADVISOR_TUNING)
        # pages_to_scan is EINVAL while the advisor is on: switch it off before, on after.
        advisor_off = self.wanted.get("advisor_mode") == ADVISOR_NONE
        if advisor_off:
            self.set_advisor_mode()
        self.set_pages_to_scan()
        if not advisor_off:
            self.set_advisor_mode()
        self.write_each(_INDEPENDENT)
        for name in _NEED_UNMERGE:
            self.set_needing_unmerge(name)
        self.set_run()

    def write_each(self, names: tuple[str, ...]) -> None:
        for name in names:
            if name in self.wanted:
                self.source.write_if_differs(name, self.wanted[name], self.current, self.result)

    def set_advisor_mode(self) -> None:
        want = self.wanted.get("advisor_mode")
        if want is None or self.current.get("advisor_mode") == want:
            return
        if self.source.write_if_differs("advisor_mode", want, self.current, self.result):
            # The kernel reset pages_to_scan; compare against what it holds now.
            pages = self.source.read_setting("pages_to_scan")
            if pages is not None:
                self.current["pages_to_scan"] = pages

    def set_pages_to_scan(self) -> None:
        want = self.wanted.get("pages_to_scan")
        if want is None or not self.source.differs("pages_to_scan", want, self.current):
            return
        refusal = KSM.refusal("pages_to_scan", self.current)
        if refusal is not None:
            self.source.error(self.result, "pages_to_scan", want, errno.EINVAL, refusal)
            return
        self.source.write_if_differs("pages_to_scan", want, self.current, self.result)

    def set_needing_unmerge(self, name: str) -> None:
        want = self.wanted.get(name)
        if want is None or not self.source.differs(name, want, self.current):
            return
        failure = self.source.try_write(name, want)
        if failure is None:
            self.source.record_change(name, want, self.current, self.result)
        elif failure.errno != errno.EBUSY:
            self.source.record_failure(self.result, name, want, failure)
        elif not self.allow_unmerge:
            self.source.error(self.result, name, want, errno.EBUSY, _busy_reason(name))
        elif self.unmerge():
            self.source.write_if_differs(name, want, self.current, self.result)
        else:
            self.source.error(self.result, name, want, errno.EBUSY,
                              f"{name} could not change: unmerging all KSM pages failed")

    def unmerge(self) -> bool:
        """run=2, at most once per apply. True when everything is unmerged."""
        if self.unmerged:
            return self.unmerge_ok
        self.unmerged = True  # run is restored afterwards even if this write fails
        before = self.current.get("run")
        self.unmerge_ok = self.source.write("run", RUN_UNMERGE, before, self.result)
        self.current["run"] = self.source.read_setting("run") or RUN_STOPPED
        if self.unmerge_ok:
            self.note_oom()
        return self.unmerge_ok

    def set_run(self) -> None:
        want = self.wanted.get("run")
        if want is None and self.unmerged:
            want = self.run_before  # put ksmd back the way we found it
        if want is None or not self.source.differs("run", want, self.current):
            return
        if self.source.write("run", want, self.current.get("run"), self.result):
            self.current["run"] = want
            if want == RUN_UNMERGE:
                self.note_oom()

    def note_oom(self) -> None:
        if OOM_NOTE not in self.result.notes:
            self.result.notes.append(OOM_NOTE)


def _busy_reason(name: str) -> str:
    return (
        f"pages are merged, and the kernel only changes {name} while nothing is merged; "
        "changing it means unmerging all KSM pages first (run=2), which the policy must allow "
        "with ksm.allowUnmerge: true"
    )


def ksm_saved_bytes(counters: Mapping[str, int], page_size: int) -> int:
    """Memory saved by merging: every extra mapping of a merged page plus pages mapped to the
    zero page (``use_zero_pages``). ``general_profit`` is the same net of KSM's metadata."""
    return (counters.get("pages_sharing", 0) + counters.get("ksm_zero_pages", 0)) * page_size


def find_ksmd_pid(fs: HostFS, comm: str = "ksmd") -> int | None:
    """The pid of the merging kernel thread (``uksmd`` under UKSM), or None.

    Kernel threads have low pids, so the numeric scan finds it early; callers should still
    cache the result rather than rescan ``/proc`` every cycle. A user process may call itself
    ``ksmd``, so only a child of kthreadd (pid 2) counts.
    """
    pids = sorted(int(entry) for entry in fs.listdir("proc") if entry.isdigit())
    for pid in pids:
        if read_text(fs, f"proc/{pid}/comm") == comm and _parent_pid(fs, pid) in (2, None):
            return pid
    return None


def _stat_fields(fs: HostFS, pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` fields from field 3 on. The comm (field 2) may hold spaces and
    parentheses, so split after the *last* ')'."""
    text = read_text(fs, f"proc/{pid}/stat")
    if text is None or ")" not in text:
        return None
    return text.rpartition(")")[2].split()


def _parent_pid(fs: HostFS, pid: int) -> int | None:
    fields = _stat_fields(fs, pid)
    return int(fields[1]) if fields and len(fields) > 1 else None  # field 4


def ksmd_cpu_seconds(fs: HostFS, pid: int, clock_ticks: int | None = None) -> float:
    """CPU time (user + system, seconds) the thread has used: stat fields 14 and 15.

    Raises ProcessLookupError when the process is gone or its stat is unreadable.
    """
    fields = _stat_fields(fs, pid)
    if fields is None or len(fields) < 13:
        raise ProcessLookupError(f"no usable /proc/{pid}/stat")
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15, counted from 3
    ticks = clock_ticks if clock_ticks is not None else os.sysconf("SC_CLK_TCK")
    return (utime + stime) / ticks

