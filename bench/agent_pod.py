"""The agent as a pod on a real kubelet node: its memory and CPU from its own cgroup.

``python -m bench.agent_pod [--quick] [--repeat N]`` starts the single-node cluster
(``overcommit.localcluster.node``), installs the operator as the Quick start says (the image
built from this checkout), applies an Adaptive KSM policy with a merge workload on this
machine's real KSM (a busy agent: a cycle every 2 s, the scan rate retuned), and reads the agent
container's cgroup (cgroup v1: ``memory.usage_in_bytes`` less inactive page cache as its working
set, ``memory.max_usage_in_bytes`` as its peak, ``memory.stat``'s ``total_rss``; ``cpuacct.usage``
for CPU):

- steady memory: the working set's median over the busy window, after the first cycles;
- peak memory: the cgroup's high-water mark since the container started;
- CPU while busy (Adaptive, every 2 s) and while idle: the policy switched to Static (a cycle
  every 30 s, nothing to change), over an idle window.

Against the manifest's request (64 MiB) and the project's targets. The last line printed is one
JSON object with the figures (medians over the repeats, with their spread).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overcommit.demo.workload import MergeWorkload
from overcommit.localcluster.node import LocalCluster
from testkit.cluster import Installation, policy
from testkit.waiting import wait_for

MIB = 2**20
TARGETS = {"steady_mib": 64.0, "idle_cpu_percent": 0.5}
ADAPTIVE = {"ksm": {"mode": "Adaptive"}}
STATIC = {"ksm": {"enabled": True, "pagesToScan": 100}}


def cgroup_dirs(pod_uid: str, container_id: str) -> dict[str, Path]:
    """The container's memory and cpuacct cgroup directories (cgroupfs driver, v1)."""
    found = {}
    for controller in ("memory", "cpuacct"):
        matches = list(Path(f"/sys/fs/cgroup/{controller}/kubepods").glob(
            f"**/pod{pod_uid}/{container_id}"))
        if len(matches) != 1:
            raise SystemExit(f"bench.agent_pod: the agent container's {controller} cgroup was "
                             f"not found (cgroup v1, cgroupfs driver expected): {matches}")
        found[controller] = matches[0]
    return found


def read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def memory_stat(directory: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in
                                    (directory / "memory.stat").read_text().splitlines())}


def working_set(directory: Path) -> int:
    """What the kubelet calls the working set: usage less inactive file pages."""
    stat = memory_stat(directory)
    return read_int(directory / "memory.usage_in_bytes") - stat.get("total_inactive_file", 0)


def cpu_percent(directory: Path, seconds: float) -> float:
    start, t0 = read_int(directory / "cpuacct.usage"), time.monotonic()
    time.sleep(seconds)
    used, wall = read_int(directory / "cpuacct.usage") - start, time.monotonic() - t0
    return 100.0 * used / 1e9 / wall


def one_run(install: Installation, window_s: float) -> dict[str, float]:
    install.apply(policy("bench-agent-pod", ADAPTIVE))
    wait_for(lambda: install.ready_reason() == "Applied", 90, "the Adaptive policy to apply")
    pod = install.agent_pod()
    container = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    cgroups = cgroup_dirs(pod["metadata"]["uid"], container)
    time.sleep(min(10.0, window_s / 3))  # past start-up and the first cycles
    samples, deadline = [], time.monotonic() + window_s
    start_cpu, t0 = read_int(cgroups["cpuacct"] / "cpuacct.usage"), time.monotonic()
    while time.monotonic() < deadline:
        samples.append(working_set(cgroups["memory"]))
        time.sleep(1.0)
    busy_cpu = 100.0 * (read_int(cgroups["cpuacct"] / "cpuacct.usage") - start_cpu) / 1e9 \
        / (time.monotonic() - t0)
    install.apply(policy("bench-agent-pod", STATIC))
    wait_for(lambda: install.node_state().get("settings", {}).get(
        "sys/kernel/mm/ksm/pages_to_scan") == "100", 60, "the Static policy to apply")
    time.sleep(5)  # the change's own cycle and write are not idle
    idle_cpu = cpu_percent(cgroups["cpuacct"], window_s)
    rss = memory_stat(cgroups["memory"]).get("total_rss", 0)
    peak = read_int(cgroups["memory"] / "memory.max_usage_in_bytes")
    install.kubectl("delete", "mop", "bench-agent-pod")
    wait_for(lambda: not install.node_state().get("originals"), 60, "the restore")
    return {"steady_mib": statistics.median(samples) / MIB, "peak_mib": peak / MIB,
            "rss_mib": rss / MIB, "busy_cpu_percent": busy_cpu, "idle_cpu_percent": idle_cpu}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_pod", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one 30 s window, one run")
    parser.add_argument("--repeat", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--window", type=float, default=120.0, help="seconds per window")
    args = parser.parse_args(argv)
    repeat, window = (1, 30.0) if args.quick else (args.repeat, args.window)
    runs: list[dict[str, float]] = []
    with LocalCluster() as cluster, MergeWorkload(workers=4, size_mib=64):
        install = Installation(cluster, tag="bench")
        install.build_and_load()
        install.install()
        try:
            for _ in range(repeat):
                runs.append(one_run(install, window))
        finally:
            install.kubectl("delete", "mop", "--all", check=False)
            install.uninstall()
            install.close()
        install.demo.forget_state_dir()
    figures: dict[str, Any] = {key: spread([r[key] for r in runs]) for key in runs[0]}
    print(f"{'figure':<20}{'median':>10}{'min':>10}{'max':>10}{'target':>10}")
    for key, value in figures.items():
        target = TARGETS.get(key)
        print(f"{key:<20}{value['median']:>10.2f}{value['min']:>10.2f}{value['max']:>10.2f}"
              f"{'' if target is None else f'{target:>10.1f}'}")
    figures["runs"] = repeat
    figures["window_s"] = window
    figures["passed"] = {key: figures[key]["median"] <= limit for key, limit in TARGETS.items()}
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
