"""UKSM (out-of-tree "ultra KSM" patch): ``/sys/kernel/mm/uksm``.

A kernel with the patch has UKSM *instead of* KSM. Quirks handled here, all from the patch:

* ``cpu_governor`` resets ``cpu_ratios``, ``eval_intervals`` and ``max_cpu_percentage`` to its
  preset, so it is written first and the rest is compared against the values read afterwards.
* ``cpu_ratios`` leaks a kernel buffer on every write, and ``eval_intervals``' store works on a
  pointer it has moved past the allocation: both are written only when they really differ, and
  an ``eval_intervals`` write is reported as a note.
* ``max_cpu_percentage`` stores 100 as 99 and raises values under 10 to 10, and ``MAX/n`` in
  ``cpu_ratios`` reads back as ``MAX/(10000 // (10000 // n))``: desired values are normalised the
  same way so an accepted value is not rewritten every cycle.
* ``sleep_millisecs`` is kept in jiffies, so it reads back rounded up to the next jiffy (and
  UKSM may enlarge it under load). The planner only emits it when the policy names it; here a
  read-back within one jiffy (10 ms at HZ=100, the coarsest common HZ) above the wanted value
  counts as equal, and anything else as a difference.
* counters may read as ``N * 2^B`` once they outgrow an unsigned long.
"""

from __future__ import annotations

from collections.abc import Mapping

from overcommit.host._sysfs import (
    SettingSpec,
    SettingsSource,
    canonical_choice,
    canonical_words,
    one_of,
    parse_int,
    parse_shifted_int,
    unsigned,
)
from overcommit.host.base import ApplyResult
from overcommit.host.rules import CounterLookup, KernelRules, no_counters

UKSM_DIR = "sys/kernel/mm/uksm"
GOVERNORS = ("full", "medium", "low", "quiet")
TIME_RATIO_SCALE = 10000  # cpu_ratios are in 1/10000 of a CPU
SLEEP_GRANULARITY_MS = 10
LADDER_SIZE = 4

EVAL_INTERVALS_NOTE = (
    "UKSM eval_intervals was written: the UKSM patch's store function for it mishandles its "
    "buffer (use-after-free/leak); it is only written when the policy names it and it differs"
)

UKSM_COUNTERS = (
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "full_scans",
    "hash_strength",
    "sleep_times",
    "pages_scanned",
    "ema_per_page_time",
)

# What a cpu_governor write resets to the governor's preset.
GOVERNOR_PRESET = ("max_cpu_percentage", "cpu_ratios", "eval_intervals")
# Written after cpu_governor (whose preset overwrites the first three); max_cpu_percentage
# before cpu_ratios because a "MAX/n" ratio is relative to it.
_AFTER_GOVERNOR = (*GOVERNOR_PRESET, "sleep_millisecs", "abundant_threshold", "thrash_threshold")


def canonical_max_cpu(text: str) -> str:
    """What the kernel stores for a max_cpu_percentage write: 100 -> 99, below 10 -> 10."""
    value = parse_int(text)
    if value is None or value > 100:
        return text.strip()
    return str(min(max(value, 10), 99))


def _canonical_ratio(token: str) -> str:
    if token.startswith("MAX/"):
        divisor = parse_int(token[4:])
        if divisor and 1 <= divisor <= TIME_RATIO_SCALE:
            return f"MAX/{TIME_RATIO_SCALE // (TIME_RATIO_SCALE // divisor)}"
        return token
    value = parse_int(token)
    return str(value) if value is not None else token


def canonical_cpu_ratios(text: str) -> str:
    return " ".join(_canonical_ratio(token) for token in text.split())


def check_cpu_ratios(value: str) -> str | None:
    tokens = value.split()
    if len(tokens) != LADDER_SIZE:
        return f"cpu_ratios needs exactly {LADDER_SIZE} entries, got {len(tokens)}"
    for token in tokens:
        number = token[4:] if token.startswith("MAX/") else token
        if not number.isdigit() or not 1 <= int(number) <= TIME_RATIO_SCALE:
            return f"{token!r} is neither 1..{TIME_RATIO_SCALE} nor MAX/n with n in that range"
    return None


def check_eval_intervals(value: str) -> str | None:
    tokens = value.split()
    if len(tokens) != LADDER_SIZE or not all(token.isdigit() for token in tokens):
        return f"eval_intervals needs exactly {LADDER_SIZE} unsigned millisecond values"
    return None


SPECS = (
    SettingSpec("cpu_governor", canonical_choice, one_of(*GOVERNORS)),
    SettingSpec("max_cpu_percentage", canonical_max_cpu, unsigned(0, 100)),
    SettingSpec("cpu_ratios", canonical_cpu_ratios, check_cpu_ratios),
    SettingSpec("eval_intervals", canonical_words, check_eval_intervals),
    SettingSpec("sleep_millisecs", check=unsigned(0, 1000)),
    SettingSpec("abundant_threshold", check=unsigned(0, 99)),
    SettingSpec("thrash_threshold", check=unsigned(0, 99)),
    SettingSpec("run", check=unsigned(0, 1)),  # no unmerge-all in UKSM
)


class UksmRules(KernelRules):
    def same(self, name: str, wanted: str, current: str | None,
             counter: CounterLookup = no_counters) -> bool:
        """sleep_millisecs reads back rounded up to the next jiffy: within one jiffy above the
        wanted value is the same setting."""
        if name == "sleep_millisecs":
            read, want = parse_int(current), parse_int(wanted)
            if read is not None and want is not None:
                return 0 <= read - want < SLEEP_GRANULARITY_MS
        return super().same(name, wanted, current, counter)


UKSM = UksmRules(
    source="uksm", directory=UKSM_DIR, names=tuple(spec.name for spec in SPECS),
    # Recorded before a governor change and restored after it. Not eval_intervals, although the
    # preset resets it too: writing it trips the patch's bug (EVAL_INTERVALS_NOTE), so a
    # host's custom intervals end at the original governor's preset after a restore.
    resets={"cpu_governor": ("max_cpu_percentage", "cpu_ratios")},
)


class UksmSource(SettingsSource):
    title = "UKSM"
    rules = UKSM
    specs = SPECS
    counter_names = UKSM_COUNTERS

    def parse_counter(self, text: str | None) -> int | None:
        return parse_shifted_int(text)

    def apply(self, desired: Mapping[str, str], *, allow_unmerge: bool = False) -> ApplyResult:
        result = ApplyResult()
        wanted = self.wanted(desired, result)
        if not wanted:
            return result
        current = self.read_settings()
        governor = wanted.get("cpu_governor")
        if governor is not None and self.write_if_differs("cpu_governor", governor, current,
                                                          result):
            current = self.read_settings()  # the preset may have replaced three settings
        for name in (*_AFTER_GOVERNOR, "run"):
            if name in wanted:
                self._write_setting(name, wanted[name], current, result)
        return result

    def _write_setting(self, name: str, want: str, current: dict[str, str],
                       result: ApplyResult) -> None:
        if not self.differs(name, want, current):
            return
        if self.write_if_differs(name, want, current, result) and name == "eval_intervals":
            result.notes.append(EVAL_INTERVALS_NOTE)
