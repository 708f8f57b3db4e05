"""The local demo (``scripts/demo``): an Adaptive KSM policy on this host, start to restore.

As root it drives the real ``/sys/kernel/mm/ksm`` with a real merge workload (processes with
identical ``MADV_MERGEABLE`` memory); otherwise it runs the same loop against a simulated host
root in a temporary directory. Either way every original setting is restored at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from overcommit import report as reporting
from overcommit.api.model import Policy, load_policies
from overcommit.engine.cycle import NodeEngine, saved_bytes
from overcommit.testing.workload import MergeWorkload

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "adaptive-ksm.yaml"
SIMULATED_KSM = {
    "run": "0", "pages_to_scan": "100", "sleep_millisecs": "20", "max_page_sharing": "256",
    "merge_across_nodes": "1", "use_zero_pages": "0", "smart_scan": "1",
    "advisor_mode": "[none] scan-time", "pages_shared": "0", "pages_sharing": "0",
    "full_scans": "0", "pages_scanned": "0", "ksm_zero_pages": "0",
}


def simulated_host(root: Path) -> None:
    """A host root with KSM files and this machine's /proc/meminfo, for non-root runs."""
    ksm = root / "sys/kernel/mm/ksm"
    ksm.mkdir(parents=True)
    for name, value in SIMULATED_KSM.items():
        (ksm / name).write_text(value + "\n")
    (root / "proc").mkdir()
    shutil.copy("/proc/meminfo", root / "proc/meminfo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to run the loop")
    parser.add_argument("-f", "--file", default=str(EXAMPLE), help="the policy to apply")
    parser.add_argument("--simulate", action="store_true",
                        help="use a simulated host root even as root")
    args = parser.parse_args(argv)
    real = os.geteuid() == 0 and Path("/sys/kernel/mm/ksm/run").exists() and not args.simulate
    with tempfile.TemporaryDirectory(prefix="overcommit-demo-") as tmp:
        root = Path("/") if real else Path(tmp) / "host"
        if not real:
            simulated_host(root)
        print(f"host: {'this machine (real KSM)' if real else f'simulated at {root}'}")
        engine = NodeEngine(host_root=root, state_dir=Path(tmp) / "state")
        policies = load_policies(args.file)
        workload = MergeWorkload(workers=4, size_mib=64).start() if real else None
        try:
            run_loop(engine, policies, args.seconds)
        finally:
            if workload:
                workload.stop()
            restored = engine.restore()
            print("\nrestore:")
            print(reporting.cycle_text(reporting.cycle_json(restored)))
    return 0


def run_loop(engine: NodeEngine, policies: list[Policy], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        report = engine.cycle(policies, {})
        state = report.plan.adaptive
        phase = f"{state.phase.value}: {state.reason}" if state else "-"
        saved = reporting.human_bytes(saved_bytes(report.observation))
        print(f"[{time.strftime('%H:%M:%S')}] saved {saved:>9}  changes "
              f"{len(report.changes)}  adaptive {phase}")
        if time.monotonic() >= deadline:
            break
        time.sleep(2)


if __name__ == "__main__":
    raise SystemExit(main())
