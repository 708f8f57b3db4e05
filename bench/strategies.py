"""The four KSM strategies the benchmark compares, behind one small interface.

Every strategy sees the same simulated memory view (the host under pressure); what it writes
to /sys/kernel/mm/ksm, the merging and ksmd's CPU time are real.
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

STRATEGY_NAMES = ("kernel-default", "ksmtuned", "kubevirt", "adaptive")
BASELINES = STRATEGY_NAMES[:-1]


class Strategy(Protocol):
    name: str
    interval_s: float  # between the end of one control cycle and the start of the next

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

    def __init__(self, ksm: SysfsKsm) -> None:
        self.ksm = ksm

    def act(self) -> str:
        rate = KsmRate(True, int(ksm_host.KERNEL_DEFAULTS["pages_to_scan"]),
                       int(ksm_host.KERNEL_DEFAULTS["sleep_millisecs"]))
        self.ksm.apply(rate, order=("pages_to_scan", "sleep_millisecs"))
        return describe(rate)

    def close(self) -> None:
        pass


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

    def __init__(self, available_percent: float) -> None:
        self.policy = adaptive_policy()
        ksm = self.policy.spec.ksm
        cfg = (ksm.adaptive if ksm is not None else None) or KsmAdaptive()
        self.interval_s = float(cfg.interval_seconds)
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-adaptive-")
        self.engine = PressuredEngine(available_percent, state_dir=self._tmp.name)

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


def factory(name: str, view: MemoryView, available_percent: float) -> Callable[[], Strategy]:
    """A constructor for a fresh instance of strategy ``name`` (fresh state every trial)."""
    ksm = SysfsKsm(ksm_host.KSM_DIR)
    makers: dict[str, Callable[[], Strategy]] = {
        "kernel-default": lambda: KernelDefault(ksm),
        "ksmtuned": lambda: Baseline(KsmtunedDriver(view, ksm)),
        "kubevirt": lambda: Baseline(KubevirtDriver(view, ksm)),
        "adaptive": lambda: Adaptive(available_percent),
    }
    return makers[name]
