"""One Auto-mode balloon cycle for many guests: the agent's CPU cost to observe, plan and apply.

Runs on libvirt's test driver (``test:///<config>``, a custom node of N KubeVirt-style domains;
no daemon, no root), through ``NodeReconciler.cycle`` exactly as the agent does, with a policy whose
host thresholds make the host count as short of memory so idle guests give. Measures the
process's CPU time (user + system) per cycle after a warm-up cycle (connect, parse each domain's
XML once). Target from the issue: under 1 s of agent CPU for 200 guests.

    python -m bench.balloon_scale [--quick] [--guests N] [--cycles K]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from overcommit.api.model import policy_from_object
from overcommit.reconcile.guests import GuestManager, VirtSettings
from overcommit.reconcile.node import NodeReconciler
from overcommit.virt.libvirt_source import LibvirtEndpoint
from testkit.cases import policy_document
from testkit.fakes.kernel import FakeKernel
from testkit.fakes.libvirt_xml import kubevirt_fleet, write_node

TARGET_CPU_S = 1.0
# The test driver stamps every statistic with this constant "last_update"; a wall clock just
# after it makes the statistics fresh, as a live guest's are.
TEST_DRIVER_NOW = 627319920 + 1
POLICY = {"balloon": {"mode": "Auto", "auto": {"hostAvailableLowPercent": 99,
                                               "hostAvailableHighPercent": 100}}}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def engine_for(root: Path, uri: str) -> NodeReconciler:
    settings = VirtSettings(uris=(uri,), discover_system=False)
    engine = NodeReconciler(state_dir=root / "state", fs=FakeKernel(root / "host"), virt=settings)
    engine.guests = GuestManager(
        settings, lambda u: LibvirtEndpoint(u, wall_clock=lambda: TEST_DRIVER_NOW))
    return engine


def measure(guests: int, cycles: int) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        engine = engine_for(root, write_node(root, kubevirt_fleet(guests)))
        policy = policy_from_object(policy_document("scale", POLICY))
        started = cpu_seconds()
        engine.cycle([policy], {})
        warmup = cpu_seconds() - started
        costs, moved = [], []
        for _ in range(cycles):
            before = cpu_seconds()
            report = engine.cycle([policy], {})
            costs.append(cpu_seconds() - before)
            moved.append(len(report.guests.applied))
            assert len(report.guests.guests) == guests, "every guest must be observed"
    return {"guests": guests, "cycles": cycles, "warmup_cpu_s": round(warmup, 4),
            "median_cycle_cpu_s": round(statistics.median(costs), 4),
            "max_cycle_cpu_s": round(max(costs), 4),
            "median_balloons_moved": int(statistics.median(moved))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.balloon_scale",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 cycles instead of 10")
    parser.add_argument("--guests", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=None)
    args = parser.parse_args(argv)
    cycles = args.cycles or (3 if args.quick else 10)
    result = measure(args.guests, cycles)
    print(f"Auto balloon cycle, {result['guests']} guests on libvirt's test driver, "
          f"{cycles} cycles after a warm-up")
    print(f"  warm-up cycle (connect, parse every domain XML)  {result['warmup_cpu_s']:.3f} s CPU")
    print(f"  one cycle: median / max                           "
          f"{result['median_cycle_cpu_s']:.3f} / {result['max_cycle_cpu_s']:.3f} s CPU")
    print(f"  balloons moved per cycle (median)                 {result['median_balloons_moved']}")
    ok = result["max_cycle_cpu_s"] < TARGET_CPU_S
    print(f"{'PASS' if ok else 'MISS'} one cycle for {result['guests']} guests: "
          f"{result['max_cycle_cpu_s']:.3f} s CPU (target < {TARGET_CPU_S:g} s)")
    print(json.dumps({**result, "target_cpu_s": TARGET_CPU_S, "pass": ok}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
