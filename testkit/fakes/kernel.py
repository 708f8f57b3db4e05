"""A fake kernel for tests: a real sysfs/procfs-shaped tree under a temp dir whose writes follow
the kernel's store functions (EINVAL, EBUSY, ENOENT, side effects such as resets), and which
records every write attempt so tests can assert the order.

Reads go through the real files (``HostFS.read``); writes go through :meth:`FakeKernel.write`,
which validates like the kernel and then rewrites the files the way the kernel would show them.

Defaults follow the host-interfaces reference (KSM run=0, pages_to_scan=100, ...).
``uksm=True`` builds a UKSM kernel instead (no ``/sys/kernel/mm/ksm``); ``missing=[...]`` drops
files or directories to imitate older kernels; ``fail_next``/``fail_always`` inject an errno for
one path. As in mm/ksm.c, a successful ``run=2`` keeps reading 2 (a failed one falls back to 0).
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from overcommit.host.base import HostFS

KSM = "sys/kernel/mm/ksm"
UKSM = "sys/kernel/mm/uksm"
ZSWAP = "sys/module/zswap/parameters"
KSMD_PID = 57
IMPOSTOR_PID = 30  # a user process that calls itself ksmd (parent is not kthreadd)
CLOCK_TICKS = 100

KSM_DEFAULTS = {
    "run": "0",
    "pages_to_scan": "100",
    "sleep_millisecs": "20",
    "merge_across_nodes": "1",
    "max_page_sharing": "256",
    "use_zero_pages": "0",
    "stable_node_chains_prune_millisecs": "2000",
    "smart_scan": "1",
    "advisor_mode": "[none] scan-time",
    "advisor_max_cpu": "70",
    "advisor_min_pages_to_scan": "500",
    "advisor_max_pages_to_scan": "30000",
    "advisor_target_scan_time": "200",
}
KSM_COUNTER_DEFAULTS = {
    "pages_shared": "0",
    "pages_sharing": "0",
    "pages_unshared": "0",
    "pages_volatile": "0",
    "pages_scanned": "0",
    "pages_skipped": "0",
    "full_scans": "0",
    "stable_node_chains": "0",
    "stable_node_dups": "0",
    "ksm_zero_pages": "0",
    "general_profit": "0",
}

# From the UKSM patch: governor -> (cpu_ratio per rung, eval interval per rung, max_cpu).
# A negative ratio r means MAX/(10000 // -r).
UKSM_PRESETS: dict[str, tuple[tuple[int, ...], tuple[int, ...], int]] = {
    "full": ((20, 40, -2500, -10000), (1000, 500, 200, 50), 95),
    "medium": ((20, 30, -2500, -10000), (1000, 500, 400, 100), 50),
    "low": ((10, 20, -5000, -10000), (1500, 1000, 1000, 250), 20),
    "quiet": ((10, 20, 40, 75), (2000, 1000, 1000, 1000), 1),
}
UKSM_GOVERNORS = ("full", "medium", "low", "quiet")
UKSM_COUNTER_DEFAULTS = {
    "pages_shared": "0",
    "pages_sharing": "0",
    "pages_unshared": "0",
    "full_scans": "12",
    "hash_strength": "64",
    "sleep_times": "98765",
    "pages_scanned": "3 * 2^20",  # the patch's overflow form
    "ema_per_page_time": "500",
}
TIME_RATIO_SCALE = 10000

ZSWAP_DEFAULTS = {
    "enabled": "N",
    "compressor": "lzo",
    "zpool": "zsmalloc",
    "max_pool_percent": "20",
    "accept_threshold_percent": "90",
    "shrinker_enabled": "N",
    "same_filled_pages_enabled": "Y",
}
COMPRESSORS = frozenset({"lzo", "lzo-rle", "lz4", "lz4hc", "zstd", "deflate", "842"})
ZPOOLS = frozenset({"zbud", "z3fold", "zsmalloc"})

MEMINFO_KB = {
    "MemTotal": 16314788,
    "MemFree": 8123456,
    "MemAvailable": 12345678,
    "Buffers": 123456,
    "Cached": 2345678,
    "SwapCached": 1024,
    "Active": 3456789,
    "Inactive": 2345678,
    "Active(anon)": 1234567,
    "Inactive(anon)": 234567,
    "SwapTotal": 4194300,
    "SwapFree": 4100000,
    "Zswap": 10240,
    "Zswapped": 40960,
    "AnonPages": 1456789,
    "Hugepagesize": 2048,
}
SWAPS = (
    "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
    "/dev/vda3                               partition\t4194300\t\t94300\t\t-2"
)
VMSTAT = {"nr_free_pages": 2030864, "pswpin": 1200, "pswpout": 3400, "zswpin": 50,
          "zswpout": 200, "zswpwb": 3, "cow_ksm": 0, "ksm_swpin_copy": 0}
PSI = ("some avg10=1.25 avg60=0.50 avg300=0.10 total=123456\n"
       "full avg10=0.40 avg60=0.20 avg300=0.05 total=45678")

_UNSIGNED = re.compile(r"^\+?\d+\n?$")

Rule = Callable[[str], None]


def kernel_error(code: int, rel: str) -> OSError:
    return OSError(code, os.strerror(code), rel)


def stat_line(pid: int, comm: str, ppid: int, utime: int, stime: int) -> str:
    """A /proc/<pid>/stat line; fields 14/15 are utime/stime in clock ticks."""
    return (f"{pid} ({comm}) S {ppid} 0 0 0 -1 2129984 0 0 0 0 {utime} {stime} 0 0 25 5 1 0 "
            "12 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 17 3 0 0 0 0 0")


class FakeKernel(HostFS):
    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        uksm: bool = False,
        missing: Iterable[str] = (),
        hz: int = 250,
        compressors: frozenset[str] = COMPRESSORS,
    ) -> None:
        super().__init__(root)
        self.uksm = uksm
        self.hz = hz
        self.compressors = compressors
        self.writes: list[tuple[str, str]] = []  # every attempt, in order
        self.failed: list[tuple[str, str, int]] = []  # attempts the "kernel" refused
        self._fail_next: dict[str, list[int]] = {}
        self._fail_always: dict[str, int] = {}
        self._rules: dict[str, Rule] = {}
        self._dirs: set[Path] = set()
        if uksm:
            self._build_uksm()
        else:
            self._build_ksm()
        self._build_zswap()
        self._build_proc()
        for rel in missing:
            self.remove(rel)

    # --- test helpers ---

    def set(self, rel: str, text: str) -> None:
        """Put text in a file directly (no rules, not recorded)."""
        path = self.path(rel)
        if path.parent not in self._dirs:  # building the tree is most of a test's setup time
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        path.write_text(text + "\n")

    def get(self, rel: str) -> str:
        return self.path(rel).read_text().rstrip("\n")

    def remove(self, rel: str) -> None:
        path = self.path(rel)
        self._dirs = {d for d in self._dirs if not d.is_relative_to(path)}
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def fail_next(self, rel: str, code: int) -> None:
        """The next write to ``rel`` fails with ``code`` (one shot; several calls queue up)."""
        self._fail_next.setdefault(rel.lstrip("/"), []).append(code)

    def fail_always(self, rel: str, code: int) -> None:
        self._fail_always[rel.lstrip("/")] = code

    def clear_failures(self) -> None:
        self._fail_next.clear()
        self._fail_always.clear()

    def written(self) -> list[str]:
        """Paths of the successful writes, in order."""
        failed = [(rel, value) for rel, value, _ in self.failed]
        successes = list(self.writes)
        for attempt in failed:
            successes.remove(attempt)
        return [rel for rel, _ in successes]

    def merge(self, shared: int, sharing: int, zero_pages: int = 0) -> None:
        """Pretend ksmd has merged pages (KSM only)."""
        self.set(f"{KSM}/pages_shared", str(shared))
        self.set(f"{KSM}/pages_sharing", str(sharing))
        self.set(f"{KSM}/ksm_zero_pages", str(zero_pages))
        self.set(f"{KSM}/general_profit", str((sharing + zero_pages) * 4096 - shared * 64))

    def set_memory(self, available_kib: int, *, total_kib: int | None = None,
                   some: float = 0.0, full: float = 0.0) -> None:
        """Pretend the host has ``available_kib`` of MemAvailable (and ``total_kib`` of
        MemTotal), and memory PSI avg10 of ``some``/``full`` percent."""
        fields = {**MEMINFO_KB, "MemAvailable": available_kib}
        if total_kib is not None:
            fields["MemTotal"] = total_kib
        self.set("proc/meminfo", "\n".join(
            [f"{key + ':':<16}{value:>8} kB" for key, value in fields.items()]
            + ["HugePages_Total:       0", "HugePages_Free:        0"]))
        self.set("proc/pressure/memory",
                 f"some avg10={some:.2f} avg60=0.00 avg300=0.00 total=123456\n"
                 f"full avg10={full:.2f} avg60=0.00 avg300=0.00 total=45678")

    def set_advisor(self, mode: str) -> None:
        self.set(f"{KSM}/advisor_mode", _choice_list(("none", "scan-time"), mode))

    # --- the write path ---

    def write(self, rel: str, value: str) -> None:
        rel = rel.lstrip("/")
        self.writes.append((rel, value))
        try:
            self._raise_injected(rel, value)
            if not self.path(rel).is_file():
                raise kernel_error(errno.ENOENT, rel)
            rule = self._rules.get(rel)
            if rule is None:
                raise kernel_error(errno.EACCES, rel)  # a read-only attribute
            rule(value)
        except OSError as exc:
            self.failed.append((rel, value, exc.errno or 0))
            raise

    def _raise_injected(self, rel: str, value: str) -> None:
        queued = self._fail_next.get(rel)
        code = queued.pop(0) if queued else self._fail_always.get(rel)
        if code is None:
            return
        if rel == f"{KSM}/run" and _is_unsigned(value) and int(value) == 2:
            self.set(rel, "0")  # a failed unmerge leaves KSM stopped
        raise kernel_error(code, rel)

    def _rule(self, rel: str, rule: Rule) -> None:
        self._rules[rel] = rule

    def _uint(self, rel: str, value: str, low: int = 0, high: int = 2**64 - 1) -> int:
        if not _is_unsigned(value) or not low <= int(value) <= high:
            raise kernel_error(errno.EINVAL, rel)
        return int(value)

    def _bool(self, rel: str, value: str) -> bool:
        """kstrtobool: y/t/1 and n/f/0 by first letter, on/off by the second."""
        text = value.rstrip("\n").lower()
        if text[:1] in ("y", "t", "1"):
            return True
        if text[:1] in ("n", "f", "0"):
            return False
        if text in ("on", "off"):
            return text == "on"
        raise kernel_error(errno.EINVAL, rel)

    def _plain_uint(self, rel: str, low: int = 0, high: int = 2**64 - 1) -> Rule:
        def store(value: str) -> None:
            self.set(rel, str(self._uint(rel, value, low, high)))

        return store

    def _bool_01(self, rel: str) -> Rule:
        def store(value: str) -> None:
            self.set(rel, "1" if self._bool(rel, value) else "0")

        return store

    # --- KSM ---

    def _build_ksm(self) -> None:
        for name, text in {**KSM_DEFAULTS, **KSM_COUNTER_DEFAULTS}.items():
            self.set(f"{KSM}/{name}", text)
        for name in ("sleep_millisecs", "stable_node_chains_prune_millisecs"):
            self._rule(f"{KSM}/{name}", self._plain_uint(f"{KSM}/{name}", high=2**32 - 1))
        for name in ("advisor_max_cpu", "advisor_min_pages_to_scan", "advisor_max_pages_to_scan"):
            self._rule(f"{KSM}/{name}", self._plain_uint(f"{KSM}/{name}"))
        self._rule(f"{KSM}/advisor_target_scan_time",
                   self._plain_uint(f"{KSM}/advisor_target_scan_time", low=1))
        for name in ("use_zero_pages", "smart_scan"):
            self._rule(f"{KSM}/{name}", self._bool_01(f"{KSM}/{name}"))
        self._rule(f"{KSM}/run", self._ksm_run)
        self._rule(f"{KSM}/pages_to_scan", self._ksm_pages_to_scan)
        self._rule(f"{KSM}/merge_across_nodes", self._ksm_merge_across_nodes)
        self._rule(f"{KSM}/max_page_sharing", self._ksm_max_page_sharing)
        self._rule(f"{KSM}/advisor_mode", self._ksm_advisor_mode)

    def _ksm_int(self, name: str) -> int:
        return int(self.get(f"{KSM}/{name}"))

    def _ksm_advisor(self) -> str:
        match = re.search(r"\[([^\]]+)\]", self.get(f"{KSM}/advisor_mode"))
        return match.group(1) if match else "none"

    def _ksm_run(self, value: str) -> None:
        rel = f"{KSM}/run"
        flags = self._uint(rel, value, high=2)
        if flags == 2 and self._ksm_int("run") != 2:
            for name in ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
                         "ksm_zero_pages", "stable_node_chains", "stable_node_dups",
                         "general_profit"):
                self.set(f"{KSM}/{name}", "0")
        self.set(rel, str(flags))  # a successful unmerge keeps reading 2

    def _ksm_pages_to_scan(self, value: str) -> None:
        rel = f"{KSM}/pages_to_scan"
        pages = self._uint(rel, value, high=2**32 - 1)
        if self._ksm_advisor() != "none":
            raise kernel_error(errno.EINVAL, rel)
        self.set(rel, str(pages))

    def _ksm_busy_if_merged(self, rel: str) -> None:
        if self._ksm_int("pages_shared") > 0:
            raise kernel_error(errno.EBUSY, rel)

    def _ksm_merge_across_nodes(self, value: str) -> None:
        rel = f"{KSM}/merge_across_nodes"
        knob = self._uint(rel, value, high=1)
        if knob != self._ksm_int("merge_across_nodes"):
            self._ksm_busy_if_merged(rel)
            self.set(rel, str(knob))

    def _ksm_max_page_sharing(self, value: str) -> None:
        rel = f"{KSM}/max_page_sharing"
        knob = self._uint(rel, value, low=2, high=2**31 - 1)
        if knob == self._ksm_int("max_page_sharing"):
            return  # writing the current value is a no-op
        self._ksm_busy_if_merged(rel)
        self.set(rel, str(knob))

    def _ksm_advisor_mode(self, value: str) -> None:
        rel = f"{KSM}/advisor_mode"
        mode = value.rstrip("\n")  # sysfs_streq
        if mode not in ("none", "scan-time"):
            raise kernel_error(errno.EINVAL, rel)
        if mode != self._ksm_advisor():
            reset = "100" if mode == "none" else self.get(f"{KSM}/advisor_min_pages_to_scan")
            self.set(f"{KSM}/pages_to_scan", reset)
        self.set_advisor(mode)

    # --- UKSM ---

    def _build_uksm(self) -> None:
        for name, text in UKSM_COUNTER_DEFAULTS.items():
            self.set(f"{UKSM}/{name}", text)
        self.set(f"{UKSM}/run", "1")
        self.set(f"{UKSM}/sleep_millisecs", "100")
        self.set(f"{UKSM}/abundant_threshold", "10")
        self.set(f"{UKSM}/thrash_threshold", "50")
        self._uksm_apply_preset("full")
        self._rule(f"{UKSM}/run", self._plain_uint(f"{UKSM}/run", high=1))
        self._rule(f"{UKSM}/abundant_threshold",
                   self._plain_uint(f"{UKSM}/abundant_threshold", high=99))
        self._rule(f"{UKSM}/thrash_threshold", self._plain_uint(f"{UKSM}/thrash_threshold",
                                                                high=99))
        self._rule(f"{UKSM}/sleep_millisecs", self._uksm_sleep_millisecs)
        self._rule(f"{UKSM}/max_cpu_percentage", self._uksm_max_cpu_percentage)
        self._rule(f"{UKSM}/cpu_governor", self._uksm_cpu_governor)
        self._rule(f"{UKSM}/cpu_ratios", self._uksm_cpu_ratios)
        self._rule(f"{UKSM}/eval_intervals", self._uksm_eval_intervals)

    def _uksm_apply_preset(self, governor: str) -> None:
        ratios, intervals, max_cpu = UKSM_PRESETS[governor]
        self.set(f"{UKSM}/cpu_governor", _governor_list(governor))
        self.set(f"{UKSM}/cpu_ratios", _show_ratios(ratios))
        self.set(f"{UKSM}/eval_intervals", "".join(f"{ms} " for ms in intervals))
        self.set(f"{UKSM}/max_cpu_percentage", str(max_cpu))

    def _uksm_sleep_millisecs(self, value: str) -> None:
        rel = f"{UKSM}/sleep_millisecs"
        msecs = self._uint(rel, value, high=1000)
        jiffies = math.ceil(msecs * self.hz / 1000)  # msecs_to_jiffies rounds up
        self.set(rel, str(jiffies * 1000 // self.hz))

    def _uksm_max_cpu_percentage(self, value: str) -> None:
        rel = f"{UKSM}/max_cpu_percentage"
        percent = self._uint(rel, value, high=100)
        self.set(rel, str(99 if percent == 100 else max(percent, 10)))

    def _uksm_cpu_governor(self, value: str) -> None:
        # The patch compares the buffer's start with each name, from the last one backwards.
        for governor in reversed(UKSM_GOVERNORS):
            if value.startswith(governor):
                self._uksm_apply_preset(governor)
                return
        raise kernel_error(errno.EINVAL, f"{UKSM}/cpu_governor")

    def _uksm_cpu_ratios(self, value: str) -> None:
        rel = f"{UKSM}/cpu_ratios"
        ratios = []
        for token in _ladder_tokens(value, rel):
            number = token.split("/", 1)[1] if "MAX/" in token else token
            parsed = self._uint(rel, number, low=1, high=TIME_RATIO_SCALE)
            ratios.append(-(TIME_RATIO_SCALE // parsed) if "MAX/" in token else parsed)
        self.set(rel, _show_ratios(tuple(ratios)))

    def _uksm_eval_intervals(self, value: str) -> None:
        rel = f"{UKSM}/eval_intervals"
        intervals = [self._uint(rel, token) for token in _ladder_tokens(value, rel)]
        self.set(rel, "".join(f"{ms} " for ms in intervals))

    # --- zswap ---

    def _build_zswap(self) -> None:
        for name, text in ZSWAP_DEFAULTS.items():
            self.set(f"{ZSWAP}/{name}", text)
        for name in ("enabled", "shrinker_enabled", "same_filled_pages_enabled"):
            self._rule(f"{ZSWAP}/{name}", self._zswap_bool(f"{ZSWAP}/{name}"))
        self._rule(f"{ZSWAP}/max_pool_percent",
                   self._plain_uint(f"{ZSWAP}/max_pool_percent", high=2**32 - 1))
        self._rule(f"{ZSWAP}/accept_threshold_percent",
                   self._plain_uint(f"{ZSWAP}/accept_threshold_percent", high=100))
        self._rule(f"{ZSWAP}/compressor", self._zswap_algorithm("compressor", self.compressors))
        self._rule(f"{ZSWAP}/zpool", self._zswap_algorithm("zpool", ZPOOLS))

    def _zswap_bool(self, rel: str) -> Rule:
        def store(value: str) -> None:
            self.set(rel, "Y" if self._bool(rel, value) else "N")

        return store

    def _zswap_algorithm(self, name: str, known: frozenset[str]) -> Rule:
        rel = f"{ZSWAP}/{name}"

        def store(value: str) -> None:
            algorithm = value.strip()
            if algorithm not in known:
                raise kernel_error(errno.ENOENT, rel)  # crypto_has_acomp / zpool_has_pool
            self.set(rel, algorithm)

        return store

    # --- procfs ---

    def _build_proc(self) -> None:
        self.set("proc/meminfo", "\n".join(
            [f"{key + ':':<16}{value:>8} kB" for key, value in MEMINFO_KB.items()]
            + ["HugePages_Total:       0", "HugePages_Free:        0"]))
        self.set("proc/vmstat", "\n".join(f"{key} {value}" for key, value in VMSTAT.items()))
        self.set("proc/swaps", SWAPS)
        self.set("proc/pressure/memory", PSI)
        self.set("proc/sys/vm/swappiness", "60")
        self._rule("proc/sys/vm/swappiness", self._plain_uint("proc/sys/vm/swappiness",
                                                              high=200))
        thread = "uksmd" if self.uksm else "ksmd"
        self._process(1, "systemd", 0, 812, 1034)
        self._process(2, "kthreadd", 0, 0, 3)
        self._process(IMPOSTOR_PID, "ksmd", 1, 5, 5)
        self._process(KSMD_PID, thread, 2, 1234, 566)
        self._process(4242, "qemu-system-x86", 1, 90000, 12000)

    def _process(self, pid: int, comm: str, ppid: int, utime: int, stime: int) -> None:
        self.set(f"proc/{pid}/comm", comm)
        self.set(f"proc/{pid}/stat", stat_line(pid, comm, ppid, utime, stime))


def _is_unsigned(value: str) -> bool:
    return bool(_UNSIGNED.match(value))


def _choice_list(choices: Iterable[str], selected: str) -> str:
    return " ".join(f"[{choice}]" if choice == selected else choice for choice in choices)


def _governor_list(selected: str) -> str:
    # cpu_governor_show appends a space after every entry, the last one included.
    return "".join(f"[{g}] " if g == selected else f"{g} " for g in UKSM_GOVERNORS)


def _show_ratios(ratios: tuple[int, ...]) -> str:
    return "".join(f"{r} " if r > 0 else f"MAX/{TIME_RATIO_SCALE // -r} " for r in ratios)


def _ladder_tokens(value: str, rel: str) -> list[str]:
    """The patch splits the first three entries at single spaces and takes the rest as the
    fourth: double spaces or a trailing space make an entry invalid."""
    parts = value.rstrip("\n").split(" ", 3)
    if len(parts) != 4:
        raise kernel_error(errno.EINVAL, rel)
    return parts


def scratch_parent() -> str | None:
    """Where to put fake trees: RAM-backed /dev/shm when usable (creating the files on disk is
    several times slower and dominates test time), else the default temp dir (None)."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
