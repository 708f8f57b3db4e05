"""The KSM tuners users compare us with, RE-IMPLEMENTED from their documented algorithms.

Neither is the original program. ``ksmtuned`` (the shell daemon shipped with qemu-kvm) and
KubeVirt virt-handler's KSM handler (Go) were re-written here from their published behaviour
(see /work/shared/reference/anchors.md), as pure functions: state + memory view -> the KSM
settings (run, pages_to_scan, sleep_millisecs) the tool would write. A small driver writes
those through sysfs in the order the tool does.

The memory view is passed in, not read: a benchmark gives every tuner the same source, either
the real host's /proc/meminfo read at each cycle (real pressure) or a constant simulated view,
while ksmd, the merging and its CPU cost stay real.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KIB = 1024
SIXTEEN_GIB_IN_KIB = 16 * 1024 * 1024


@dataclass(frozen=True)
class MemoryView:
    """What a tuner reads from /proc/meminfo (and ps), in KiB as the tools use it."""

    total_kib: int
    available_kib: int  # MemAvailable (KubeVirt)
    free_kib: int  # MemFree + Buffers + Cached (ksmtuned)
    committed_kib: int  # summed RSS of qemu processes (ksmtuned)


def simulated_pressure(total_kib: int, available_percent: float) -> MemoryView:
    """A host whose guests use everything but ``available_percent`` of its memory."""
    available = int(total_kib * available_percent / 100)
    return MemoryView(total_kib=total_kib, available_kib=available, free_kib=available,
                      committed_kib=total_kib - available)


@dataclass(frozen=True)
class KsmRate:
    """The settings a tuner wants: ``run`` and, while running, the scan rate."""

    running: bool
    pages_to_scan: int = 0
    sleep_ms: int = 0


# ------------------------------------------------------------------------------------------------
# ksmtuned


@dataclass(frozen=True)
class KsmtunedConfig:
    """ksmtuned.conf defaults."""

    monitor_interval_s: float = 60.0
    npages_boost: int = 300
    npages_decay: int = -50
    npages_min: int = 64
    npages_max: int = 1250
    sleep_msec: int = 10  # per 16 GiB of RAM
    thres_coef: int = 20  # percent of MemTotal
    thres_const_kib: int = 2048


def ksmtuned_sleep_ms(cfg: KsmtunedConfig, total_kib: int) -> int:
    """Scaled by memory size once at start-up: smaller hosts sleep longer, never below 10."""
    return max(10, cfg.sleep_msec * SIXTEEN_GIB_IN_KIB // total_kib)


def ksmtuned_threshold_kib(cfg: KsmtunedConfig, total_kib: int) -> int:
    return max(total_kib * cfg.thres_coef // 100, cfg.thres_const_kib)


def ksmtuned_adjust(npages: int, view: MemoryView,
                    cfg: KsmtunedConfig = KsmtunedConfig()) -> tuple[int, KsmRate]:
    """One ``adjust`` of ksmtuned: (new npages, what to write). ``npages`` starts at 0.

    Stop when the guests fit with room to spare; otherwise boost under pressure, decay when
    free memory is above the threshold, clamp, and (re)start. It never asks whether merging
    still finds anything.
    """
    thres = ksmtuned_threshold_kib(cfg, view.total_kib)
    if view.committed_kib + thres < view.total_kib and view.free_kib > thres:
        return npages, KsmRate(running=False)
    delta = cfg.npages_boost if view.free_kib < thres else cfg.npages_decay
    npages = min(cfg.npages_max, max(cfg.npages_min, npages + delta))
    return npages, KsmRate(True, npages, ksmtuned_sleep_ms(cfg, view.total_kib))


# ------------------------------------------------------------------------------------------------
# KubeVirt virt-handler


@dataclass(frozen=True)
class KubevirtKsmConfig:
    """virt-handler's defaults (each can be overridden per node by an annotation)."""

    interval_s: float = 180.0
    pages_boost: int = 300
    pages_decay: int = -50
    pages_min: int = 64
    pages_max: int = 1250
    pages_init: int = 100
    sleep_ms_baseline: int = 100  # per 16 GiB of *used* memory
    free_percent: float = 0.2


def kubevirt_sleep_ms(cfg: KubevirtKsmConfig, view: MemoryView) -> int:
    """Scaled by used memory (MemTotal - MemAvailable), floored at a tenth of the baseline."""
    used = max(1, view.total_kib - view.available_kib)
    return max(cfg.sleep_ms_baseline // 10, cfg.sleep_ms_baseline * SIXTEEN_GIB_IN_KIB // used)


def kubevirt_spin(running: bool, pages_now: int, view: MemoryView,
                  cfg: KubevirtKsmConfig = KubevirtKsmConfig()) -> KsmRate:
    """One spin of the handler. ``running`` and ``pages_now`` are what sysfs holds now
    (the handler keeps no state of its own; it reads run and pages_to_scan back)."""
    sleep = kubevirt_sleep_ms(cfg, view)
    if view.available_kib > view.total_kib * cfg.free_percent:
        if not running:
            return KsmRate(running=False)
        pages = pages_now + cfg.pages_decay
        if pages < cfg.pages_min:
            return KsmRate(False, cfg.pages_min, sleep)
        return KsmRate(True, pages, sleep)
    if not running:
        return KsmRate(True, cfg.pages_init, sleep)  # first pressured spin: the initial rate
    return KsmRate(True, min(cfg.pages_max, pages_now + cfg.pages_boost), sleep)


# ------------------------------------------------------------------------------------------------
# Drivers: the loops around the pure functions, writing sysfs


class SysfsKsm:
    """The few sysfs writes the baselines make (``/sys/kernel/mm/ksm`` by default)."""

    def __init__(self, directory: Path = Path("/sys/kernel/mm/ksm")) -> None:
        self.directory = directory

    def read(self, name: str) -> str:
        return (self.directory / name).read_text().strip()

    def write(self, name: str, value: int | str) -> None:
        (self.directory / name).write_text(str(value))

    def apply(self, rate: KsmRate, order: tuple[str, ...]) -> None:
        """Stopped: only ``run=0``. Running: the rate in the tool's ``order``, then ``run=1``."""
        if rate.running:
            values = {"pages_to_scan": rate.pages_to_scan, "sleep_millisecs": rate.sleep_ms}
            for name in order:
                self.write(name, values[name])
        self.write("run", 1 if rate.running else 0)


class KsmtunedDriver:
    """ksmtuned's loop: ``adjust`` every ``monitor_interval_s``, npages kept between cycles."""

    name = "ksmtuned"

    def __init__(self, view: Callable[[], MemoryView], ksm: SysfsKsm,
                 cfg: KsmtunedConfig = KsmtunedConfig()) -> None:
        self.view, self.ksm, self.cfg = view, ksm, cfg
        self.interval_s = cfg.monitor_interval_s
        self.npages = 0  # the script's initial value: the first pressured cycle gives +boost

    def cycle(self) -> KsmRate:
        self.npages, rate = ksmtuned_adjust(self.npages, self.view(), self.cfg)
        self.ksm.apply(rate, order=("pages_to_scan", "sleep_millisecs"))  # ksmctl start
        return rate


class KubevirtDriver:
    """virt-handler's loop: a spin every ``interval_s`` (3 minutes), state read from sysfs."""

    name = "kubevirt"

    def __init__(self, view: Callable[[], MemoryView], ksm: SysfsKsm,
                 cfg: KubevirtKsmConfig = KubevirtKsmConfig()) -> None:
        self.view, self.ksm, self.cfg = view, ksm, cfg
        self.interval_s = cfg.interval_s

    def cycle(self) -> KsmRate:
        running = self.ksm.read("run") == "1"
        rate = kubevirt_spin(running, int(self.ksm.read("pages_to_scan")), self.view(), self.cfg)
        self.ksm.apply(rate, order=("sleep_millisecs", "pages_to_scan"))
        return rate
