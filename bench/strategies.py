"""The KSM strategies the benchmark compares, behind one small interface: four baselines
(the kernel's defaults, the kernel's own scan-time advisor, ksmtuned, KubeVirt), ours
(Adaptive), and fixed scan rates for the frontier.

Every strategy sees the same memory: the real host's (held under pressure by a memory rig), or
with ``--pressure simulated`` one constant simulated view. What it writes to
/sys/kernel/mm/ksm, the merging and ksmd's CPU time are real.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from bench import ksm_host
from bench.baselines import KsmRate, KsmtunedDriver, KubevirtDriver, MemoryView, SysfsKsm
from overcommit.api.model import Policy, policy_from_object
from overcommit.api.policy import GROUP, POLICY_KIND, VERSION, KsmAdaptive
from overcommit.planning.observation import Observation
from overcommit.reconcile.node import NodeReconciler

STRATEGY_NAMES = ("kernel-default", "kernel-advisor", "ksmtuned", "kubevirt", "adaptive")
BASELINES = STRATEGY_NAMES[:-1]


class Strategy(Protocol):
    name: str
    interval_s: float  # between the end of one control cycle and the start of the next
    # True when the kernel itself moves pages_to_scan (the scan-time advisor): the guard
    # must not take that for someone else's write.
    self_tuning: bool

    def act(self) -> str:
        """One control cycle; returns a one-line description for --verbose."""
        ...

    def close(self) -> None: ...


def describe(rate: KsmRate) -> str:
    if not rate.running:
        return "run=0"
    return f"run=1 pages_to_scan={rate.pages_to_scan} sleep_millisecs={rate.sleep_ms}"


class KernelDefault:
    """ksmd switched on at the kernel's own defaults, and never touched again."""

    name = "kernel-default"
    interval_s = math.inf
    self_tuning = False

    def __init__(self, ksm: SysfsKsm) -> None:
        self.ksm = ksm

    def act(self) -> str:
        rate = KsmRate(True, int(ksm_host.KERNEL_DEFAULTS["pages_to_scan"]),
                       int(ksm_host.KERNEL_DEFAULTS["sleep_millisecs"]))
        self.ksm.apply(rate, order=("pages_to_scan", "sleep_millisecs"))
        return describe(rate)

    def close(self) -> None:
        pass


class KernelAdvisor:
    """The kernel's own scan-time advisor (``advisor_mode=scan-time``, kernel 6.7+; what the
    product's ``ksm.mode: KernelAdvisor`` selects) at the kernel's advisor defaults, then
    ``run=1``; the kernel tunes ``pages_to_scan`` from then on, nothing else is touched."""

    name = "kernel-advisor"
    interval_s = math.inf
    self_tuning = True

    def __init__(self, ksm: SysfsKsm) -> None:
        self.ksm = ksm

    @staticmethod
    def available() -> bool:
        return (ksm_host.KSM_DIR / "advisor_mode").exists()

    def act(self) -> str:
        self.ksm.write("advisor_mode", "scan-time")  # resets pages_to_scan to the advisor's min
        self.ksm.write("run", 1)
        return (f"advisor_mode=scan-time run=1 (pages_to_scan={self.ksm.read('pages_to_scan')},"
                f" target scan time {self.ksm.read('advisor_target_scan_time')} s)")

    def close(self) -> None:
        pass


class StaticRate:
    """One fixed scan rate, set at t=0 and never touched: a point of the frontier."""

    interval_s = math.inf
    self_tuning = False

    def __init__(self, ksm: SysfsKsm, pages: int, sleep_ms: int) -> None:
        self.ksm, self.rate = ksm, KsmRate(True, pages, sleep_ms)
        self.name = static_name(pages, sleep_ms)

    def act(self) -> str:
        self.ksm.apply(self.rate, order=("pages_to_scan", "sleep_millisecs"))
        return describe(self.rate)

    def close(self) -> None:
        pass


def static_name(pages: int, sleep_ms: int) -> str:
    return f"static-{pages}p-{sleep_ms}ms"


class Baseline:
    """ksmtuned or KubeVirt: their own loop at their own documented interval.

    The first cycle runs at t=0, the moment the workload is there (as after ksmtuned's
    ``retune`` signal or a KubeVirt configuration change): the baselines' most favourable
    phase, since their timers would otherwise first fire up to a whole interval later.
    """

    def __init__(self, driver: KsmtunedDriver | KubevirtDriver) -> None:
        self.driver = driver
        self.name = driver.name
        self.interval_s = driver.interval_s
        self.self_tuning = False

    def act(self) -> str:
        return describe(self.driver.cycle())

    def close(self) -> None:
        pass


def adaptive_policy() -> Policy:
    """ksm.mode Adaptive with every other field at its default, validated like any policy."""
    return policy_from_object({
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": POLICY_KIND,
        "metadata": {"name": "bench-adaptive", "uid": "bench-adaptive", "generation": 1},
        "spec": {"ksm": {"mode": "Adaptive"}},
    })


class PressuredEngine(NodeReconciler):
    """The real engine, except that meminfo's MemAvailable (and MemFree) read the simulated
    value; KSM settings and counters and ksmd's CPU time are read from the host as usual."""

    def __init__(self, available_percent: float, state_dir: str, host_root: str = "/") -> None:
        super().__init__(host_root=host_root, state_dir=state_dir)
        self.available_percent = available_percent

    def observe(self) -> Observation:
        obs = super().observe()
        meminfo = obs.readings["meminfo"]
        counters = dict(meminfo.counters)
        simulated = int(counters["MemTotal"] * self.available_percent / 100)
        counters["MemAvailable"] = counters["MemFree"] = simulated
        readings = {**obs.readings, "meminfo": replace(meminfo, counters=counters)}
        return replace(obs, readings=readings)


class Adaptive:
    """Our NodeReconciler cycle, every ``adaptive.intervalSeconds``, as ``overcommit run`` does."""

    name = "adaptive"
    self_tuning = False

    def __init__(self, available_percent: float | None) -> None:
        """``available_percent`` None: the real engine on the real host; a number: the
        engine shown that simulated MemAvailable (``PressuredEngine``)."""
        self.policy = adaptive_policy()
        ksm = self.policy.spec.ksm
        cfg = (ksm.adaptive if ksm is not None else None) or KsmAdaptive()
        self.interval_s = float(cfg.interval_seconds)
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-adaptive-")
        self.engine = (NodeReconciler(host_root="/", state_dir=self._tmp.name)
                       if available_percent is None
                       else PressuredEngine(available_percent, state_dir=self._tmp.name))

    def act(self) -> str:
        report = self.engine.cycle([self.policy], {})
        errors = "; ".join(f"{e.path}: {e.reason}" for e in report.errors)
        state = report.plan.adaptive
        if state is None:
            return f"no adaptive state {errors}"
        cpu = "-" if state.last_cpu_percent is None else f"{state.last_cpu_percent:.0f}%"
        yld = "-" if state.last_yield_percent is None else f"{state.last_yield_percent:.1f}%"
        return (f"{state.phase.value:<5} pages_to_scan={state.pages_to_scan} "
                f"sleep={state.sleep_ms}ms cpu={cpu} yield={yld} "
                f"cost={state.cost_per_page_s * 1e6:.2f}us ({state.reason}) {errors}").rstrip()

    def close(self) -> None:
        self._tmp.cleanup()


def factory(name: str, view: Callable[[], MemoryView],
            simulated_percent: float | None) -> Callable[[], Strategy]:
    """A constructor for a fresh instance of strategy ``name`` (fresh state every trial).
    ``view`` is what the baselines read at each cycle; ``simulated_percent`` None runs
    Adaptive on the real host, a number shows it that simulated MemAvailable."""
    ksm = SysfsKsm(ksm_host.KSM_DIR)
    if name.startswith("static-"):
        pages, sleep = name.removeprefix("static-").split("-")
        return lambda: StaticRate(ksm, int(pages.removesuffix("p")),
                                  int(sleep.removesuffix("ms")))
    makers: dict[str, Callable[[], Strategy]] = {
        "kernel-default": lambda: KernelDefault(ksm),
        "kernel-advisor": lambda: KernelAdvisor(ksm),
        "ksmtuned": lambda: Baseline(KsmtunedDriver(view, ksm)),
        "kubevirt": lambda: Baseline(KubevirtDriver(view, ksm)),
        "adaptive": lambda: Adaptive(simulated_percent),
    }
    return makers[name]
