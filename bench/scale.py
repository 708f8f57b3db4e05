"""How the cluster view scales: per-node state objects + a controller, against the naive design.

``python -m bench.scale [--quick] [--sizes 100,500,1000] [--designs per_node_state,naive]``
starts etcd + kube-apiserver on loopback (``ControlPlane``), applies ``deploy/crds`` plus a
bench-only CRD for the naive design, and for each N and each design runs N simulated node
agents in this one process (asyncio coroutines, each with its own policy watch on its own
connection) against one policy selecting all N Nodes:

- ``per_node_state``: each agent writes its own MemoryOvercommitNodeState (~5 KiB of realistic
  status, only when it changed, with the real agent's gate); ``overcommit controller`` (a
  subprocess) folds them into the policy's small status.
- ``naive``: each agent writes its own entry into the policy's status (GET, modify, PUT with the
  resourceVersion, back off and retry on 409 Conflict); there is no controller.

Phases per run: set-up; a **steady** window (nothing changes); a **churn** window (counters move
on every node, so each agent writes once per its --status-interval, as on a busy cluster); then
**converge** samples under that churn: the last node fails / recovers and the time until the
policy's status shows it. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import log as say
from bench.scale_agents import FAILURES, Fleet, Timing, Writes
from bench.scale_kube import Kube, PolicyObserver, Tally
from bench.scale_model import (
    DESIGNS,
    NAIVE,
    NAIVE_POLICIES,
    NODE_STATES,
    PER_NODE,
    POLICIES,
    POOL_LABEL,
    Model,
    NodeView,
    complete,
    naive_crd,
    naive_entry,
    node_status,
    operator_write_codes,
    per_minute,
    per_node_per_minute,
    policy_object,
    shows,
    since,
    split_writes,
    watch_events,
    write_requests,
)
from overcommit.api.policy import GROUP, NODE_STATE_KIND, VERSION
from overcommit.api.schema import to_json
from overcommit.localcluster.controlplane import ControlPlane
from overcommit.localcluster.processes import stop_process

JSON = dict[str, Any]
REPO = Path(__file__).resolve().parents[1]
POLICY = "scale"
SETUP_CONCURRENCY = 32
EXTRAPOLATE_TO = 5000
TARGETS = {"converge_s": 30.0, "steady_writes_per_node_min": 0.0}
CONTROLLER_ARGS = ["--lease-namespace", "default", "--lease-name", "scale-bench",
                   "--identity", "scale-bench-0", "--health-port", "0", "--metrics-port", "0"]


@dataclass(frozen=True)
class Params:
    sizes: tuple[int, ...]
    designs: tuple[str, ...]
    steady_s: float
    churn_s: float
    samples: int
    converge_timeout_s: float
    controller_status_interval_s: float | None
    timing: Timing


# -- set-up ---------------------------------------------------------------------------------
def install_crds(cp: ControlPlane) -> None:
    for path in sorted((REPO / "deploy/crds").glob("memoryovercommit.io_*.yaml")):
        cp.kubectl("apply", "--server-side", "-f", str(path))
    cp.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(naive_crd()))
    names = [f"crd/memoryovercommitpolicies.{GROUP}", f"crd/memoryovercommitnodestates.{GROUP}",
             f"crd/{naive_crd()['metadata']['name']}"]
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


def node_name(index: int) -> str:
    return f"scale-node-{index:05d}"


async def gather_limited(*jobs: Any, limit: int = SETUP_CONCURRENCY) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def run(job: Any) -> Any:
        async with gate:
            return await job

    return list(await asyncio.gather(*(run(job) for job in jobs)))


async def ensure_nodes(kube: Kube, count: int, uids: dict[str, str]) -> None:
    """Nodes 0..count-1 labelled for the policy (the controller counts matched Nodes)."""
    async def create(name: str) -> None:
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {POOL_LABEL: "bench",
                                                      "kubernetes.io/hostname": name}}}
        uids[name] = (await kube.call("POST", "/api/v1/nodes", body))["metadata"]["uid"]

    missing = [node_name(i) for i in range(count) if node_name(i) not in uids]
    await gather_limited(*(create(name) for name in missing))


async def create_node_states(kube: Kube, views: Sequence[NodeView], uids: dict[str, str]) -> None:
    """What each agent's first cycle does: create its node state (owned by its Node), then
    write the status."""
    async def create(view: NodeView) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": NODE_STATE_KIND,
                "metadata": {"name": view.node, "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": view.node,
                     "uid": uids[view.node]}]},
                "spec": {"nodeName": view.node}}
        await kube.call("POST", NODE_STATES, body)
        patch = [{"op": "add", "path": "/status", "value": to_json(node_status(view, POLICY))}]
        await kube.call("PATCH", f"{NODE_STATES}/{view.node}/status", patch,
                        "application/json-patch+json")

    await gather_limited(*(create(view) for view in views))


async def fill_naive_status(kube: Kube, views: Sequence[NodeView]) -> None:
    """A naive policy whose status already holds every node's entry (one write, so set-up does
    not pay the design's O(N^2) fan-out: only the windows are measured)."""
    path = f"{NAIVE_POLICIES}/{POLICY}"
    policy = await kube.call("GET", path)
    policy["status"] = {"nodes": {v.node: naive_entry(node_status(v, POLICY)) for v in views}}
    await kube.call("PUT", f"{path}/status", policy)


async def clean_up(kube: Kube, design: str) -> None:
    collection = POLICIES if design == PER_NODE else NAIVE_POLICIES
    with contextlib.suppress(Exception):
        await kube.call("DELETE", f"{collection}/{POLICY}")
    if design == PER_NODE:
        await kube.call("DELETE", NODE_STATES)


# -- the controller -------------------------------------------------------------------------
def controller_argv(status_interval_s: float | None) -> list[str]:
    argv = [sys.executable, "-m", "overcommit.cli", "controller", *CONTROLLER_ARGS]
    if status_interval_s is not None:
        argv += ["--status-interval", f"{status_interval_s:g}"]
    return argv


def source_env() -> dict[str, str]:
    """This environment, with this checkout's ``operator/`` first on the module path: the
    controller under test is the one in this tree, whatever is installed."""
    path = os.pathsep.join(p for p in (str(REPO / "operator"), os.environ.get("PYTHONPATH"))
                           if p)
    return {**os.environ, "PYTHONPATH": path}


def controller_missing() -> str | None:
    """Why ``overcommit controller`` cannot run here, or None."""
    proc = subprocess.run([*controller_argv(None)[:4], "--help"], capture_output=True,
                          text=True, env=source_env(), timeout=120, check=False)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]


@contextlib.contextmanager
def controller(cp: ControlPlane, log: Path, status_interval_s: float | None) -> Iterator[
        subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(controller_argv(status_interval_s), stdout=out,
                                stderr=subprocess.STDOUT,
                                env={**source_env(), "KUBECONFIG": str(cp.admin_kubeconfig)})
    try:
        yield proc
    finally:
        stop_process(proc)


# -- windows --------------------------------------------------------------------------------
@dataclass
class Probe:
    """Everything one run measures: the API server, the agents, the policy, and the CPU time
    of the processes involved."""

    kube: Kube
    fleet: Fleet
    observer: PolicyObserver
    nodes: int
    pids: dict[str, int]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (fields 14 and 15 of /proc/<pid>/stat); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Snapshot:
    at: float
    writes: Any  # Counter of write requests by resource (API-server metrics)
    codes: Any  # Counter of the operator's write requests by response code
    events: Any  # Counter of watch events (and bytes) by resource
    agent_writes: Writes
    tallies: list[Tally]
    summary_writes: int
    cpu: dict[str, float]


async def snapshot(probe: Probe) -> Snapshot:
    text = await probe.kube.metrics()
    return Snapshot(time.monotonic(), write_requests(text), operator_write_codes(text),
                    watch_events(text), probe.fleet.writes.copy(), probe.fleet.tallies(),
                    len(probe.observer.writes),
                    {name: cpu_seconds(pid) for name, pid in probe.pids.items()})


def window_figures(before: Snapshot, after: Snapshot, nodes: int, design: str) -> JSON:
    """Rates over one window: per node and per agent, per minute; CPU in % of one core."""
    seconds = after.at - before.at
    writes, other = split_writes(since(after.writes, before.writes))
    events = [a.events - b.events for a, b in zip(after.tallies, before.tallies, strict=True)]
    sizes = [a.bytes - b.bytes for a, b in zip(after.tallies, before.tallies, strict=True)]
    restarts = sum(a.restarts - b.restarts for a, b in zip(after.tallies, before.tallies,
                                                           strict=True))
    agent = after.agent_writes
    summary = after.summary_writes - before.summary_writes if design == PER_NODE else 0
    policy_key = f"{GROUP}/memoryovercommitpolicies" if design == PER_NODE else \
        f"naive.{GROUP}/naiveovercommitpolicies"
    sent = since(after.events, before.events)
    return {
        "seconds": seconds,
        "cpu_percent": {name: 100 * (after.cpu[name] - before.cpu[name]) / seconds
                        for name in after.cpu},
        "writes": dict(since(after.writes, before.writes)),
        "write_codes": dict(since(after.codes, before.codes)),
        "writes_per_node_min": per_node_per_minute(writes, nodes, seconds),
        "agent_writes_per_node_min": per_node_per_minute(
            agent.attempts - before.agent_writes.attempts, nodes, seconds),
        "conflicts_per_min": per_minute(agent.conflicts - before.agent_writes.conflicts,
                                        seconds),
        "summary_writes_per_min": per_minute(summary, seconds),
        "agent_writes_done_per_min": per_minute(agent.done - before.agent_writes.done, seconds),
        "agent_writes_failed_per_min": per_minute(agent.failed - before.agent_writes.failed,
                                                  seconds),
        "other_writes_per_min": per_minute(other, seconds),
        "events_per_agent_min": per_minute(statistics.fmean(events), seconds),
        "max_events_per_agent_min": per_minute(max(events), seconds),
        "bytes_per_agent_min": per_minute(statistics.fmean(sizes), seconds),
        "watch_restarts": restarts,
        "apiserver_policy_events_per_min": per_minute(sent.get(policy_key, 0), seconds),
        "apiserver_policy_event_bytes_per_min": per_minute(sent.get(policy_key + "#bytes", 0),
                                                           seconds),
    }


async def measure_window(probe: Probe, seconds: float) -> JSON:
    before = await snapshot(probe)
    await asyncio.sleep(seconds)
    after = await snapshot(probe)
    return window_figures(before, after, probe.nodes, probe.fleet.design)


async def wait_quiet(fleet: Fleet, observer: PolicyObserver, quiet_s: float,
                     timeout: float) -> bool:
    """Until neither the agents nor the policy have been written for ``quiet_s``."""
    deadline = time.monotonic() + timeout
    last_count, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = fleet.writes.attempts + len(observer.writes)
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif time.monotonic() - last_change >= quiet_s:
            return True
        await asyncio.sleep(0.2)
    return False


async def report_change(fleet: Fleet, node: str, failed: bool) -> None:
    """One cycle of the node's agent with the change; a failed write is retried a second
    later, as the agent's next cycle would (the change stays unreported until written)."""
    while True:
        try:
            await fleet.cycle(fleet.agents[node], failed=failed)
            return
        except FAILURES:
            await asyncio.sleep(1.0)


async def converge_samples(fleet: Fleet, observer: PolicyObserver, node: str, samples: int,
                           timeout: float) -> list[float | None]:
    """The node fails, recovers, fails, ...: from the start of its cycle until the policy's
    status shows it (None: not within ``timeout``; later samples are then skipped)."""
    results: list[float | None] = []
    for sample in range(samples):
        failed = sample % 2 == 0
        start = time.monotonic()
        seen: float | None = None

        def reflected(status: JSON, failed: bool = failed) -> bool:
            return shows(fleet.design, status, node, failed)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # the write itself may be what takes long
                await report_change(fleet, node, failed)
                seen = await observer.wait_for(reflected, timeout)
        results.append(None if seen is None else seen - start)
        if seen is None:
            break
    return results


# -- one design at one N --------------------------------------------------------------------
async def run_design(cp: ControlPlane, kube: Kube, design: str, nodes: int, params: Params,
                     uids: dict[str, str], work: Path) -> JSON:
    progress(f"[{design} N={nodes}] set-up")
    started = time.monotonic()
    collection = POLICIES if design == PER_NODE else NAIVE_POLICIES
    await ensure_nodes(kube, nodes, uids)
    created = await kube.call("POST", collection, policy_object(design, POLICY))
    uid, generation = created["metadata"]["uid"], created["metadata"]["generation"]
    views = [NodeView(node_name(i), i, uid, generation, tick=0) for i in range(nodes)]
    if design == PER_NODE:
        await create_node_states(kube, views, uids)
    else:
        await fill_naive_status(kube, views)
    observer = PolicyObserver(kube, collection, POLICY)
    watching = await observer.start()
    fleet = Fleet(kube, design, POLICY, views, params.timing)
    for agent in fleet.agents.values():
        agent.last_status, agent.last_write = node_status(agent.view, POLICY), time.monotonic()
    await fleet.start(lambda: observer.resource_version)
    result: JSON = {"nodes": nodes, "setup_s": time.monotonic() - started}
    pids = {"kube-apiserver": cp.apiserver_pid or 0, "etcd": cp.etcd_pid or 0,
            "agents": os.getpid()}
    try:
        with contextlib.ExitStack() as stack:
            if design == PER_NODE:
                pids["controller"] = stack.enter_context(controller(
                    cp, work / "controller.log", params.controller_status_interval_s)).pid
            probe = Probe(kube, fleet, observer, nodes, pids)
            result |= await measure_phases(probe, generation, params)
    finally:
        await fleet.stop()
        watching.cancel()
        await clean_up(kube, design)
    return result


async def measure_phases(probe: Probe, generation: int, params: Params) -> JSON:
    fleet, observer, nodes = probe.fleet, probe.observer, probe.nodes
    begin = time.monotonic()
    synced = await observer.wait_for(lambda s: complete(fleet.design, s, nodes, generation),
                                     params.converge_timeout_s + nodes / 10)
    if synced is None:
        raise RuntimeError(f"the policy status never counted all {nodes} nodes: "
                           f"{json.dumps(observer.status)[:500]}")
    progress(f"[{fleet.design} N={nodes}] the policy status counts every node "
             f"({synced - begin:.1f}s)")
    # The controller may still have a batched write due; the naive design has no one to wait for.
    interval = params.controller_status_interval_s or 5.0
    quiet = interval + 1.0 if fleet.design == PER_NODE else 0.5
    await wait_quiet(fleet, observer, quiet_s=quiet, timeout=interval * 4 + 30)
    object_bytes = len(json.dumps(observer.latest, separators=(",", ":")))
    progress(f"[{fleet.design} N={nodes}] steady window {params.steady_s:g}s")
    steady = await measure_window(probe, params.steady_s)
    progress(f"[{fleet.design} N={nodes}] churn window {params.churn_s:g}s")
    fleet.start_churn()
    churn = await measure_window(probe, params.churn_s)
    progress(f"[{fleet.design} N={nodes}] converge: {params.samples} samples under churn")
    samples = await converge_samples(fleet, observer, node_name(nodes - 1), params.samples,
                                     params.converge_timeout_s)
    done = [s for s in samples if s is not None]
    return {
        "sync_s": synced - begin,
        "converge_s": max(done) if len(done) == len(samples) else None,
        "converge_median_s": statistics.median(done) if done else None,
        "converge_samples_s": samples,
        "steady_writes_per_node_min": steady["writes_per_node_min"],
        "events_per_agent_min": churn["events_per_agent_min"],
        "bytes_per_agent_min": churn["bytes_per_agent_min"],
        "steady_events_per_agent_min": steady["events_per_agent_min"],
        "policy_object_bytes": object_bytes,
        "steady": steady,
        "churn": churn,
    }


# -- the whole run --------------------------------------------------------------------------
async def run_all(cp: ControlPlane, params: Params, work: Path) -> JSON:
    results: JSON = {design: {} for design in params.designs}
    uids: dict[str, str] = {}
    async with Kube(cp.kubeconfig_for_user("scale-bench", ["system:masters"]),
                    work / "secrets") as kube:
        # One design at a time, so no run starts while the API server still digests the
        # previous design's backlog.
        for design in params.designs:
            for nodes in params.sizes:
                results[design][str(nodes)] = await run_design(cp, kube, design, nodes, params,
                                                               uids, work)
    return results


def model_for(results: JSON, nodes: int) -> Model | None:
    """The cost model with its constants taken from the largest measured N of each design."""
    per_node, naive = results.get(PER_NODE) or {}, results.get(NAIVE) or {}
    if not per_node or not naive:
        return None
    p = per_node[max(per_node, key=int)]
    sizes = sorted(naive, key=int)
    small, large = naive[sizes[0]], naive[sizes[-1]]
    span = large["nodes"] - small["nodes"]
    entry = (large["policy_object_bytes"] - small["policy_object_bytes"]) / span if span else \
        large["policy_object_bytes"] / large["nodes"]
    base = large["policy_object_bytes"] - entry * large["nodes"]
    summary_bytes = p["churn"]["bytes_per_agent_min"] / p["churn"]["events_per_agent_min"] \
        if p["churn"]["events_per_agent_min"] else p["policy_object_bytes"]
    return Model(nodes=nodes, node_writes_min=p["churn"]["agent_writes_per_node_min"],
                 summary_writes_min=p["churn"]["summary_writes_per_min"],
                 summary_bytes=summary_bytes, naive_entry_bytes=entry, naive_base_bytes=base)


def extrapolation(results: JSON, nodes: int) -> JSON | None:
    model = model_for(results, nodes)
    if model is None:
        return None
    return {design: {"events_per_agent_min": model.events_per_agent_min(design),
                     "bytes_per_agent_min": model.bytes_per_agent_min(design),
                     "fanout_bytes_min": model.fanout_bytes_min(design)}
            for design in DESIGNS} | {"naive_object_bytes": model.naive_object_bytes,
                                      "model": {k: v for k, v in vars(model).items()}}


# -- output ---------------------------------------------------------------------------------
T0 = time.monotonic()


def progress(line: str) -> None:
    say(f"{time.monotonic() - T0:6.1f}s {line}")


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def print_table(results: JSON) -> None:
    head = (f"{'design':15} {'N':>5} {'converge s':>10} {'median':>6} {'steady w/node/min':>17} "
            f"{'churn w/node/min':>16} {'events/agent/min':>16} {'KiB/agent/min':>13} "
            f"{'fan-out MiB/min':>15} {'reports/min':>11} {'409s/min':>8} {'policy KiB':>10}")
    say("\n" + head)
    for design, by_n in results.items():
        for n, r in sorted(by_n.items(), key=lambda item: int(item[0])):
            churn = r["churn"]
            say(f"{design:15} {n:>5} {fmt(r['converge_s']):>10} "
                f"{fmt(r['converge_median_s']):>6} {fmt(r['steady_writes_per_node_min'], 3):>17} "
                f"{fmt(churn['writes_per_node_min'], 3):>16} "
                f"{fmt(r['events_per_agent_min'], 1):>16} "
                f"{fmt(r['bytes_per_agent_min'] / 1024, 1):>13} "
                f"{fmt(churn['apiserver_policy_event_bytes_per_min'] / 2**20, 1):>15} "
                f"{fmt(churn['agent_writes_done_per_min'], 0):>11} "
                f"{fmt(churn['conflicts_per_min'], 0):>8} "
                f"{fmt(r['policy_object_bytes'] / 1024, 1):>10}")
    say("converge: the worst of the samples ('-': a sample took longer than the timeout); "
        "w = API write requests (409s included); events and bytes: each agent's policy watch "
        "in the churn window; fan-out: what the API server sent to all policy watches; "
        "reports/min: agent reports that got written (the churn asks for about N a minute)")


def print_cpu(results: JSON) -> None:
    names = ("kube-apiserver", "etcd", "controller", "agents")
    say(f"\nCPU in the churn window, % of one core (2 cores in all)\n{'design':15} {'N':>5} "
        + " ".join(f"{name:>14}" for name in names))
    for design, by_n in results.items():
        for n, r in sorted(by_n.items(), key=lambda item: int(item[0])):
            cpu = r["churn"]["cpu_percent"]
            say(f"{design:15} {n:>5} " + " ".join(f"{fmt(cpu.get(name), 1):>14}"
                                                  for name in names))


def print_extrapolation(extra: JSON | None) -> None:
    if extra is None:
        return
    say(f"\nmodel at {EXTRAPOLATE_TO} nodes (constants from the largest measured N):")
    for design in DESIGNS:
        e = extra[design]
        say(f"  {design:15} {e['events_per_agent_min']:10.1f} events/agent/min "
            f"{e['bytes_per_agent_min'] / 2**20:10.2f} MiB/agent/min "
            f"{e['fanout_bytes_min'] / 2**30:12.2f} GiB/min API-server fan-out")
    say(f"  naive policy object: {extra['naive_object_bytes'] / 2**20:.2f} MiB "
        "(etcd's request limit: 1.5 MiB)")


def verdicts(results: JSON) -> list[str]:
    by_n = results.get(PER_NODE) or {}
    if not by_n:
        return []
    n = max(by_n, key=int)
    r = by_n[n]
    converge = r["converge_s"]
    lines = [f"{'PASS' if converge is not None and converge <= TARGETS['converge_s'] else 'MISS'}"
             f" converge at N={n}: {fmt(converge)} s (target <= {TARGETS['converge_s']:g} s)",
             f"{'PASS' if r['steady_writes_per_node_min'] == 0 else 'MISS'} steady writes at "
             f"N={n}: {fmt(r['steady_writes_per_node_min'], 3)} /node/min (target 0)"]
    events = [by_n[k]["events_per_agent_min"] for k in sorted(by_n, key=int)]
    flat = max(events) <= 2 * max(1.0, min(events))
    lines.append(f"{'PASS' if flat else 'MISS'} events per agent stay O(1) across N: "
                 + ", ".join(f"{e:.1f}" for e in events) + " /min")
    return lines


def rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


# -- command line ---------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> Params:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="N = 20, 100 and short windows (about a minute)")
    parser.add_argument("--sizes", help="comma-separated N (default 100,500,1000)")
    parser.add_argument("--designs", default=",".join(DESIGNS),
                        help=f"comma-separated subset of {','.join(DESIGNS)}")
    parser.add_argument("--steady", type=float, help="steady window, s (default 30; quick 2)")
    parser.add_argument("--churn", type=float, help="churn window, s (default 60; quick 4)")
    parser.add_argument("--samples", type=int, help="converge samples (default 4; quick 2)")
    parser.add_argument("--converge-timeout", type=float,
                        help="give up on a converge sample after S seconds (default 120; quick 5)")
    parser.add_argument("--controller-status-interval", type=float, metavar="S",
                        help="pass --status-interval S to the controller (default: shipped; "
                        "quick 1)")
    parser.add_argument("--agent-interval", type=float, default=30.0, metavar="S",
                        help="the simulated agents' cycle (the agent's shipped --interval, 30)")
    parser.add_argument("--agent-status-interval", type=float, default=60.0, metavar="S",
                        help="counter-only writes at most this often (shipped: 60)")
    args = parser.parse_args(argv)
    quick = args.quick
    sizes = tuple(int(s) for s in (args.sizes or ("20,100" if quick else "100,500,1000"))
                  .split(","))
    designs = tuple(d for d in args.designs.split(",") if d)
    if not set(designs) <= set(DESIGNS) or not designs or min(sizes) < 2:
        parser.error(f"--designs takes {','.join(DESIGNS)}; every N must be at least 2")
    return Params(
        sizes=sizes, designs=designs,
        steady_s=args.steady or (2.0 if quick else 30.0),
        churn_s=args.churn or (4.0 if quick else 60.0),
        samples=args.samples or (2 if quick else 4),
        converge_timeout_s=args.converge_timeout or (5.0 if quick else 120.0),
        controller_status_interval_s=args.controller_status_interval or (1.0 if quick else None),
        timing=Timing(args.agent_interval, args.agent_status_interval))


def main(argv: Sequence[str] | None = None) -> int:
    params = parse_args(argv)
    if PER_NODE in params.designs and (why := controller_missing()):
        print(f"overcommit controller is not available ({why}); run with --designs naive",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="overcommit-bench-scale-") as tmp, \
            ControlPlane() as cp:
        work = Path(tmp)
        (work / "secrets").mkdir(mode=0o700)
        progress("control plane up")
        install_crds(cp)
        progress("CRDs established")
        try:
            results = asyncio.run(run_all(cp, params, work))
        except BaseException:
            log = work / "controller.log"
            if log.exists():
                print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
    extra = extrapolation(results, EXTRAPOLATE_TO)
    print_table(results)
    print_cpu(results)
    print_extrapolation(extra)
    say("")
    for line in verdicts(results):
        say(line)
    say(f"total {time.monotonic() - started:.0f}s")
    output = {**results, f"extrapolation_{EXTRAPOLATE_TO}": extra,
              "params": {"sizes": list(params.sizes), "steady_s": params.steady_s,
                         "churn_s": params.churn_s,
                         "agent_interval_s": params.timing.interval_s,
                         "agent_status_interval_s": params.timing.status_interval_s,
                         "controller_status_interval_s": params.controller_status_interval_s}}
    print(json.dumps(rounded(output), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
