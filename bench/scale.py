"""How the cluster view scales, measured on a real API server with kwok nodes and agents that
have their own identities: per-node state objects + a controller, against two naive designs.

``python -m bench.scale [--quick] [--sizes 100,1000,5000] [--designs ...] [--repeat R]``

For every repeat, design and N it starts a FRESH etcd + kube-apiserver on loopback
(``ControlPlane``, authorization Node,RBAC), applies ``deploy/crds``, the shipped RBAC and
ValidatingAdmissionPolicies (``deploy/manifests``), starts **kwok** (``sigs.k8s.io/kwok``, built
by ``scripts/install-kube --kwok``) and creates N kwok-managed Nodes: kwok makes them Ready,
renews their Leases and posts their status heartbeats, as kubelets would. On every node runs
an agent pod (``serviceAccountName: overcommit-agent``, bound by nodeName as the DaemonSet
controller does); each simulated agent authenticates with a TokenRequest token bound to ITS pod,
so the token carries the pod's node (``authentication.kubernetes.io/node-name``), and the shipped
admission policy lets it write its own node's state only. Before anything is measured every
agent's SelfSubjectReview is checked: the agents' service account, bound to its node, not in
``system:masters`` (the run stops otherwise), and one agent is refused another node's state.

Designs (one policy selects all N Nodes):

- ``per_node_state``: each agent writes its own MemoryOvercommitNodeState (~5 KiB of realistic
  status, only when it changed, through the product's ``AgentApi``); two ``overcommit
  controller`` replicas (leader + standby, under the controller's shipped service account) fold
  them into the policy's small status.
- ``naive``: each agent writes its own entry into the policy's status, read-modify-write (GET,
  PUT with the resourceVersion, back off and retry on 409 Conflict).
- ``naive_merge``: each agent merge-patches its own entry in (no resourceVersion: no conflicts).
  The naive designs need write access to the (bench-only) naive policy status: one extra
  ClusterRole for the same service account; nothing else changes.

Scenarios per run, each a window with the API server's request latency (its own
``apiserver_request_duration_seconds`` histogram, differenced between scrapes, long-running
verbs left out: p50/p99), write counts, watch fan-out, CPU, and etcd's database size:

- **steady**: nothing changes (kwok's heartbeats and leases go on);
- **churn**: counters move on every node (a write per agent per status interval) and the worst
  time for one node's failure/recovery to show in the policy status;
- **burst**: the policy's spec changes: every agent reconciles and writes at once; the time until
  the policy status shows every node at the new generation;
- **failover** (per_node_state only): the leading controller is killed (SIGKILL); the time until
  a node's failure, reported right after, shows in the policy status (lease expiry + takeover);
- **vanish**: 20 % of the Nodes are deleted (their agents stop); the time until the policy status
  counts only the survivors (the naive designs: nobody removes the dead nodes' entries).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.common import host_facts, raise_interrupt
from bench.common import log as say
from bench.memory_guard import MemoryGuard
from bench.scale_agents import FAILURES, Fleet, Timing, Writes
from bench.scale_kube import AgentWatches, Kube, PolicyObserver, Tally, ca_only_context
from bench.scale_model import (
    AGENT_NAMESPACE,
    AGENT_USER,
    CONTROLLER_ACCOUNT,
    DESIGNS,
    NAIVE_DESIGNS,
    NODE_STATES,
    PER_NODE,
    NodeView,
    agent_pod,
    complete,
    etcd_caveat,
    etcd_db_bytes,
    identity_problems,
    kwok_node,
    latency_figures,
    naive_at,
    naive_crd,
    naive_entry,
    naive_rbac,
    naive_stale,
    node_status,
    operator_write_codes,
    per_minute,
    per_node_per_minute,
    policy_change,
    policy_collection,
    policy_object,
    rejected,
    shows,
    since,
    split_writes,
    summarise,
    summary_counts,
    token_request,
    watch_events,
    write_requests,
)
from overcommit.api.policy import GROUP, NODE_STATE_KIND, VERSION
from overcommit.localcluster.controlplane import ControlPlane
from overcommit.localcluster.processes import dies_with_this_process, stop_process

JSON = dict[str, Any]
REPO = Path(__file__).resolve().parents[1]
POLICY = "scale"
SETUP_CONCURRENCY = 32
VANISH_SHARE = 0.2
TARGETS = {"converge_s": 30.0, "steady_writes_per_node_min": 0.0}
MANIFESTS = ("namespace.yaml", "agent-rbac.yaml", "controller-rbac.yaml", "admission-policy.yaml")
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
SELF_SUBJECT_REVIEWS = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
KWOK_LEASE_SECONDS = 40  # the kubelet's default --node-lease-duration-seconds
KWOK_STAGES = REPO / "bench/kwok-stages.yaml"


@dataclass(frozen=True)
class Params:
    sizes: tuple[int, ...]
    designs: tuple[str, ...]
    repeat: int
    steady_s: float
    churn_s: float
    samples: int
    converge_timeout_s: float
    scenario_timeout_s: float
    controller_status_interval_s: float | None
    controller_lease_s: int | None
    controller_sweep_s: float | None
    churn_after_s: float
    timing: Timing
    profiles: Path | None = None  # --apiserver-profiles


# -- set-up ---------------------------------------------------------------------------------
def install(cp: ControlPlane, design: str) -> None:
    """The CRDs, the shipped RBAC and admission policies; for a naive design its bench CRD and
    the one extra role it needs."""
    for path in sorted((REPO / "deploy/crds").glob("memoryovercommit.io_*.yaml")):
        cp.kubectl("apply", "--server-side", "-f", str(path))
    for name in MANIFESTS:
        cp.kubectl("apply", "--server-side", "-f", str(REPO / "deploy/manifests" / name))
    names = [f"crd/memoryovercommitpolicies.{GROUP}", f"crd/memoryovercommitnodestates.{GROUP}"]
    if design in NAIVE_DESIGNS:
        extra = [naive_crd(), *naive_rbac()]
        cp.kubectl("apply", "--server-side", "-f", "-",
                   input=json.dumps({"apiVersion": "v1", "kind": "List", "items": extra}))
        names.append(f"crd/{naive_crd()['metadata']['name']}")
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


def installed(flag: str) -> Path:
    """The path ``scripts/install-kube <flag>`` prints, after building it if need be."""
    out = subprocess.run([str(REPO / "scripts/install-kube"), flag], capture_output=True,
                         text=True, check=False, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/install-kube {flag} failed: {out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def kwok_binary() -> Path:
    return installed("--kwok")


def etcd_binary() -> Path | None:
    """etcd at the version kube-apiserver depends on (scripts/install-kube --etcd), unless the
    environment names the control plane's binaries (TEST_ASSET_ETCD, KUBEBUILDER_ASSETS)."""
    if os.environ.get("TEST_ASSET_ETCD") or os.environ.get("KUBEBUILDER_ASSETS"):
        return None
    return installed("--etcd")


@contextlib.contextmanager
def kwok(cp: ControlPlane, binary: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """kwok managing the Nodes annotated kwok.x-k8s.io/node=fake, with node Leases."""
    argv = [str(binary), "--kubeconfig", str(cp.admin_kubeconfig),
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--node-lease-duration-seconds={KWOK_LEASE_SECONDS}",
            "--cidr=10.128.0.0/9", "--node-ip=127.0.0.1", "--config", str(KWOK_STAGES)]
    with log.open("ab") as out:
        # Dies with the benchmark, also killed hard (the control plane does too).
        proc = subprocess.Popen(dies_with_this_process(argv), stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop_process(proc)


def node_name(index: int) -> str:
    return f"scale-node-{index:05d}"


async def gather_limited(*jobs: Any, limit: int = SETUP_CONCURRENCY) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def run(job: Any) -> Any:
        async with gate:
            return await job

    return list(await asyncio.gather(*(run(job) for job in jobs)))


async def count_of(kube: Kube, path: str) -> int:
    """How many objects a collection holds, from a one-item page."""
    page = await kube.call("GET", f"{path}?limit=1")
    return len(page.get("items") or []) + int(page["metadata"].get("remainingItemCount") or 0)


async def ready_nodes(kube: Kube, names: set[str]) -> int:
    listing = await kube.call("GET", "/api/v1/nodes?labelSelector=type%3Dkwok")
    ready = 0
    for node in listing["items"]:
        conditions = (node.get("status") or {}).get("conditions") or []
        if node["metadata"]["name"] in names and any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            ready += 1
    return ready


async def create_cluster(kube: Kube, count: int, timeout: float) -> tuple[dict[str, str],
                                                                          dict[str, str]]:
    """N kwok Nodes (waited for until kwok reports them Ready and holds a Lease for each), an
    agent pod on each and a token bound to each pod: (node uids, tokens by node)."""
    names = [node_name(i) for i in range(count)]
    uids: dict[str, str] = {}
    tokens: dict[str, str] = {}

    async def node(name: str) -> None:
        uids[name] = (await kube.call("POST", "/api/v1/nodes", kwok_node(name)))["metadata"]["uid"]

    await gather_limited(*(node(n) for n in names))
    deadline = time.monotonic() + timeout
    while True:
        ready, leases = await ready_nodes(kube, set(names)), await count_of(kube, LEASES)
        if ready == count and leases >= count:
            break
        if KWOK[0] is not None and KWOK[0].poll() is not None:
            raise RuntimeError(f"kwok exited with {KWOK[0].returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"kwok: {ready}/{count} Nodes Ready, {leases} Leases after "
                               f"{timeout:.0f}s")
        await asyncio.sleep(1.0 if count < 1000 else 5.0)  # each look lists every Node

    async def pod_and_token(name: str) -> None:
        pod = await kube.call("POST", f"/api/v1/namespaces/{AGENT_NAMESPACE}/pods", agent_pod(name))
        answer = await kube.call(
            "POST", f"/api/v1/namespaces/{AGENT_NAMESPACE}/serviceaccounts/"
            f"{pod['spec']['serviceAccountName']}/token",
            token_request(pod["metadata"]["name"], pod["metadata"]["uid"]))
        tokens[name] = answer["status"]["token"]

    await gather_limited(*(pod_and_token(n) for n in names))
    # kwok's pod-ready stage posts each pod's status once: let that land before any window.
    while (running := await running_pods(kube)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"kwok: {running}/{count} agent pods Running after "
                               f"{timeout:.0f}s")
        await asyncio.sleep(1.0 if count < 1000 else 5.0)
    return uids, tokens


async def running_pods(kube: Kube) -> int:
    listing = await kube.call("GET", f"/api/v1/namespaces/{AGENT_NAMESPACE}/pods")
    return sum(1 for pod in listing["items"]
               if (pod.get("status") or {}).get("phase") == "Running")


async def check_identities(fleet: Fleet) -> JSON:
    """Every agent asks the API server who it is (SelfSubjectReview): it must be the agent's
    service account, bound to its own node, in no privileged group. Then one agent tries to
    create ANOTHER node's state, which the shipped admission policy must refuse."""
    problems: dict[str, list[str]] = {}
    sample: JSON = {}

    async def review(node: str) -> None:
        answer = await fleet.agents[node].api.request(
            "POST", SELF_SUBJECT_REVIEWS,
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        nonlocal sample
        sample = sample or answer.get("status", {}).get("userInfo", {})
        if found := identity_problems(answer, node):
            problems[node] = found

    await gather_limited(*(review(n) for n in fleet.agents))
    if problems:
        raise RuntimeError(f"agents are not who they should be: {dict(list(problems.items())[:5])}")
    nodes = sorted(fleet.agents)
    intruder, victim = fleet.agents[nodes[0]], nodes[-1]
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": NODE_STATE_KIND,
            "metadata": {"name": victim}, "spec": {"nodeName": victim}}
    code = 0
    try:
        await intruder.api.request("POST", NODE_STATES, body)
    except FAILURES as exc:
        code = getattr(exc, "status", -1)
    if code != 403:
        raise RuntimeError(f"agent on {nodes[0]} writing {victim}'s node state got {code}, "
                           "not 403: the admission policy is not in force")
    groups = sample.get("groups") or []
    return {"agents_checked": len(fleet.agents), "username": sample.get("username"),
            "groups": groups, "system_masters": "system:masters" in groups,
            "foreign_node_state_write": code}


# -- the controller -------------------------------------------------------------------------
def controller_argv(params: Params, identity: str) -> list[str]:
    argv = [sys.executable, "-m", "overcommit.cli", "controller",
            "--lease-namespace", AGENT_NAMESPACE, "--lease-name", "scale-bench",
            "--identity", identity, "--health-port", "0", "--metrics-port", "0"]
    for flag, value in (("--status-interval", params.controller_status_interval_s),
                        ("--lease-duration", params.controller_lease_s),
                        ("--sweep-interval", params.controller_sweep_s)):
        if value is not None:
            argv += [flag, f"{value:g}"]
    return argv


def source_env() -> dict[str, str]:
    """This environment, with this checkout's ``operator/`` first on the module path: the
    controller under test is the one in this tree, whatever is installed."""
    path = os.pathsep.join(p for p in (str(REPO / "operator"), os.environ.get("PYTHONPATH"))
                           if p)
    return {**os.environ, "PYTHONPATH": path}


def controller_missing() -> str | None:
    """Why ``overcommit controller`` cannot run here, or None."""
    proc = subprocess.run([sys.executable, "-m", "overcommit.cli", "controller", "--help"],
                          capture_output=True, text=True, env=source_env(), timeout=120,
                          check=False)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]


@contextlib.contextmanager
def controllers(kubeconfig: Path, log: Path, params: Params) -> Iterator[
        dict[str, subprocess.Popen[bytes]]]:
    """Two replicas competing for the lease, as the shipped Deployment runs them."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for identity in ("scale-bench-0", "scale-bench-1"):
            with log.open("ab") as out:
                procs[identity] = subprocess.Popen(
                    controller_argv(params, identity), stdout=out, stderr=subprocess.STDOUT,
                    env={**source_env(), "KUBECONFIG": str(kubeconfig)})
        yield procs
    finally:
        for proc in procs.values():
            stop_process(proc)


# -- windows --------------------------------------------------------------------------------
@dataclass
class Probe:
    """Everything one run measures: the API server, etcd, the agents, the policy, and the CPU
    time of the processes involved."""

    kube: Kube
    fleet: Fleet
    observer: PolicyObserver
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
    metrics: str  # the API server's /metrics text
    etcd_db_bytes: int | None
    agent_writes: Writes
    tallies: dict[str, Tally]
    summary_writes: int
    cpu: dict[str, float]
    tcp_accepted: int  # the host's TCP PassiveOpens: connections servers here accepted


def tcp_passive_opens() -> int:
    """Connections accepted on this host so far (/proc/net/snmp, Tcp PassiveOpens): on this
    machine nearly all of them are the API server's, so their rate is the clients' new TCP +
    TLS connections (a client that keeps its connection opens none)."""
    header, values = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
                      if line.startswith("Tcp:")][:2]
    return int(values[header.index("PassiveOpens")])


async def snapshot(probe: Probe) -> Snapshot:
    text = await probe.kube.metrics()
    etcd = etcd_db_bytes(await probe.kube.etcd_metrics())
    return Snapshot(time.monotonic(), text, etcd, probe.fleet.writes.copy(),
                    probe.fleet.tallies(), len(probe.observer.writes),
                    {name: cpu_seconds(pid) for name, pid in probe.pids.items()},
                    tcp_passive_opens())


def window_figures(before: Snapshot, after: Snapshot, design: str) -> JSON:
    """Rates over one window: per node and per agent, per minute; CPU in % of one core; the API
    server's latency and etcd's size."""
    seconds = after.at - before.at
    nodes = len(after.tallies)
    all_writes = since(write_requests(after.metrics), write_requests(before.metrics))
    writes, other = split_writes(all_writes)
    common = [n for n in after.tallies if n in before.tallies]
    events = [after.tallies[n].events - before.tallies[n].events for n in common] or [0]
    sizes = [after.tallies[n].bytes - before.tallies[n].bytes for n in common] or [0]
    restarts = sum(after.tallies[n].restarts - before.tallies[n].restarts for n in common)
    agent, was = after.agent_writes, before.agent_writes
    summary = after.summary_writes - before.summary_writes if design == PER_NODE else 0
    policy_key = f"{GROUP}/memoryovercommitpolicies" if design == PER_NODE else \
        f"naive.{GROUP}/naiveovercommitpolicies"
    sent = since(watch_events(after.metrics), watch_events(before.metrics))
    heartbeats = all_writes.get("coordination.k8s.io/leases", 0) + \
        all_writes.get("core/nodes/status", 0) + all_writes.get("core/nodes", 0)
    return {
        "seconds": seconds,
        "tcp_connections_accepted_per_s": (after.tcp_accepted - before.tcp_accepted) / seconds
        if seconds > 0 else None,
        **latency_figures(after.metrics, before.metrics),
        "etcd_db_bytes": after.etcd_db_bytes,
        "apf_rejected": rejected(after.metrics) - rejected(before.metrics),
        "cpu_percent": {name: 100 * (after.cpu[name] - before.cpu[name]) / seconds
                        for name in after.cpu},
        "writes": dict(all_writes),
        "write_codes": dict(since(operator_write_codes(after.metrics),
                                  operator_write_codes(before.metrics))),
        "writes_per_node_min": per_node_per_minute(writes, nodes, seconds),
        "node_heartbeat_writes_per_node_min": per_node_per_minute(heartbeats, nodes, seconds),
        "agent_writes_per_node_min": per_node_per_minute(agent.attempts - was.attempts, nodes,
                                                         seconds),
        "agent_writes": agent.attempts - was.attempts,
        "agent_writes_done": agent.done - was.done,
        "agent_writes_failed": agent.failed - was.failed,
        "agent_event_posts": agent.event_posts - was.event_posts,
        "agent_event_posts_failed": agent.event_posts_failed - was.event_posts_failed,
        "agent_events_dropped": agent.events_dropped - was.events_dropped,
        "conflicts": agent.conflicts - was.conflicts,
        "conflicts_per_min": per_minute(agent.conflicts - was.conflicts, seconds),
        "summary_writes_per_min": per_minute(summary, seconds),
        "other_writes_per_min": per_minute(other, seconds),
        "events_per_agent_min": per_minute(statistics.fmean(events), seconds),
        "max_events_per_agent_min": per_minute(max(events), seconds),
        "bytes_per_agent_min": per_minute(statistics.fmean(sizes), seconds),
        "watch_restarts": restarts,
        "apiserver_policy_events": sent.get(policy_key, 0),
        "apiserver_policy_event_bytes": sent.get(policy_key + "#bytes", 0),
    }


async def measure_window(probe: Probe, seconds: float) -> JSON:
    before = await snapshot(probe)
    await asyncio.sleep(seconds)
    return window_figures(before, await snapshot(probe), probe.fleet.design)


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
                           timeout: float, first_failed: bool = True) -> list[float | None]:
    """The node fails, recovers, fails, ...: from the start of its cycle until the policy's
    status shows it (None: not within ``timeout``; later samples are then skipped)."""
    results: list[float | None] = []
    for sample in range(samples):
        failed = (sample % 2 == 0) == first_failed
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


# -- scenarios ------------------------------------------------------------------------------
async def timed(probe: Probe, settle_s: float, until: Any, timeout: float) -> JSON:
    """A window from now until ``until()`` (a coroutine giving the monotonic time the outcome
    showed, or None) plus ``settle_s`` for the stragglers' requests to land in the figures."""
    before = await snapshot(probe)
    start = before.at
    seen = await until(timeout)
    await asyncio.sleep(settle_s)
    figures = window_figures(before, await snapshot(probe), probe.fleet.design)
    return {"converge_s": None if seen is None else seen - start, **figures}


async def burst(probe: Probe, params: Params) -> JSON:
    """A spec change: every agent sees the new generation on its watch and writes at once."""
    fleet, observer, kube = probe.fleet, probe.observer, probe.kube
    generation = fleet.generation + 1
    fleet.generation = generation  # before the PATCH: an agent may see the event first
    alive = set(fleet.agents)

    events_done: list[float] = []  # when (monotonic) every Event of the change was out

    async def until(timeout: float) -> float | None:
        start = time.monotonic()
        await kube.call("PATCH", f"{policy_collection(fleet.design)}/{POLICY}",
                        policy_change(1000 + generation), "application/merge-patch+json")
        if fleet.design == PER_NODE:
            seen = await observer.wait_for(
                lambda s: complete(PER_NODE, s, len(alive), generation), timeout)
        else:
            seen = await observer.wait_for(lambda s: naive_at(s, alive, generation), timeout)
        # Then every agent's Events of the change, retried ones included, are out.
        left = timeout - (time.monotonic() - start)
        if seen is not None and await wait_until(lambda: fleet.events_outstanding() == 0, left):
            events_done.append(time.monotonic() - seen)
        return seen

    result = await timed(probe, 2.0, until, params.scenario_timeout_s)
    # From the same moment as converge_s: the status's convergence, plus the Events' rest.
    converged = result["converge_s"]
    result["events_done_s"] = converged + events_done[0] if events_done and \
        converged is not None else None
    result["agent_events_waiting"] = fleet.events_outstanding()
    return result


async def wait_until(condition: Callable[[], bool], timeout: float,
                     poll_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


async def leader(kube: Kube) -> str | None:
    lease = await kube.call("GET", f"/apis/coordination.k8s.io/v1/namespaces/{AGENT_NAMESPACE}"
                                   "/leases/scale-bench")
    holder: str | None = lease.get("spec", {}).get("holderIdentity")
    return holder


async def failover(probe: Probe, procs: dict[str, subprocess.Popen[bytes]],
                   params: Params) -> JSON:
    """SIGKILL the leading controller (it cannot release its lease), then a node fails: the
    time until the policy status shows it, i.e. until the standby took over and folded it."""
    holder = await leader(probe.kube)
    if holder not in procs:
        return {"converge_s": None, "error": f"lease held by {holder!r}"}
    procs[holder].send_signal(signal.SIGKILL)
    procs[holder].wait()
    node = sorted(probe.fleet.agents)[0]

    async def until(timeout: float) -> float | None:
        samples = await converge_samples(probe.fleet, probe.observer, node, 1, timeout)
        return None if samples[0] is None else time.monotonic()

    result = await timed(probe, 1.0, until, params.scenario_timeout_s)
    result["killed"] = holder
    result["new_leader"] = await leader(probe.kube)
    # back to healthy for the next scenario
    await converge_samples(probe.fleet, probe.observer, node, 1, params.scenario_timeout_s,
                           first_failed=False)
    return result


async def vanish(probe: Probe, params: Params) -> JSON:
    """The last 20 % of the Nodes are deleted; their agents stop with them."""
    fleet, observer, kube = probe.fleet, probe.observer, probe.kube
    nodes = sorted(fleet.agents)
    gone = nodes[len(nodes) - max(1, round(VANISH_SHARE * len(nodes))):]
    alive = set(nodes) - set(gone)

    async def until(timeout: float) -> float | None:
        await fleet.remove(gone)
        await gather_limited(*(kube.call("DELETE", f"/api/v1/nodes/{n}") for n in gone))
        if fleet.design == PER_NODE:
            return await observer.wait_for(
                lambda s: summary_counts(s, len(alive), fleet.generation), timeout)
        return None  # nobody takes a dead node's entry out of a naive policy

    result = await timed(probe, 2.0, until,
                         params.scenario_timeout_s if fleet.design == PER_NODE else 5.0)
    result["vanished"] = len(gone)
    if fleet.design == PER_NODE:
        result["node_states_left"] = await count_of(kube, NODE_STATES)
    else:
        result["stale_entries"] = naive_stale(observer.status, alive)
    return result


# -- one design at one N --------------------------------------------------------------------
async def run_design(cp: ControlPlane, design: str, nodes: int, params: Params,
                     work: Path) -> JSON:
    progress(f"[{design} N={nodes}] set-up: kwok nodes, agent pods, tokens")
    started = time.monotonic()
    async with Kube(cp.admin_kubeconfig, work / "secrets", cp.etcd_url) as kube:
        versions = await kube.versions()
        progress(f"[{design} N={nodes}] kube-apiserver {versions['kube_apiserver']}, "
                 f"etcd {versions['etcd']}")
        if caveat := etcd_caveat(versions["etcd"]):
            progress(f"[{design} N={nodes}] WARNING: {caveat}")
        uids, tokens = await create_cluster(kube, nodes, 120 + nodes / 10)
        collection = policy_collection(design)
        created = await kube.call("POST", collection, policy_object(design, POLICY))
        uid, generation = created["metadata"]["uid"], created["metadata"]["generation"]
        views = [NodeView(node_name(i), i, uid, generation, tick=0) for i in range(nodes)]
        watches = AgentWatches(kube.server, ca_only_context(cp.admin_kubeconfig,
                                                            work / "secrets"))
        fleet = Fleet(watches, design, POLICY, views, tokens, work / "secrets/ca.crt",
                      params.timing)
        try:
            return {**await run_fleet(cp, kube, fleet, uids, params, work, started),
                    "versions": versions}
        finally:
            await fleet.stop()
            await watches.close()


async def run_fleet(cp: ControlPlane, kube: Kube, fleet: Fleet, uids: dict[str, str],
                    params: Params, work: Path, started: float) -> JSON:
    design, nodes = fleet.design, len(fleet.agents)
    identity = await check_identities(fleet)
    progress(f"[{design} N={nodes}] {nodes} agents are {identity['username']} bound to their "
             "nodes, not system:masters; the admission policy refused a foreign write")
    if design == PER_NODE:
        await gather_limited(*(fleet.create_node_state(n, uids[n]) for n in fleet.agents))
    else:
        path = f"{policy_collection(design)}/{POLICY}"
        policy = await kube.call("GET", path)
        policy["status"] = {"nodes": {a.view.node: naive_entry(node_status(a.view, POLICY))
                                      for a in fleet.agents.values()}}
        await kube.call("PUT", f"{path}/status", policy)  # one write: set-up is not measured
        for agent in fleet.agents.values():
            agent.last_status = node_status(agent.view, POLICY)
            agent.last_write = time.monotonic()
    observer = PolicyObserver(kube, policy_collection(design), POLICY)
    watching = await observer.start()
    await fleet.start(lambda: observer.resource_version)
    result: JSON = {"nodes": nodes, "setup_s": time.monotonic() - started,
                    "agent_identity": identity}
    pids = {"kube-apiserver": cp.apiserver_pid or 0, "etcd": cp.etcd_pid or 0,
            "agents": os.getpid(), "kwok": KWOK[0].pid if KWOK[0] else 0}
    try:
        with contextlib.ExitStack() as stack:
            procs: dict[str, subprocess.Popen[bytes]] = {}
            if design == PER_NODE:
                kubeconfig = cp.service_account_kubeconfig(AGENT_NAMESPACE, CONTROLLER_ACCOUNT)
                procs = stack.enter_context(controllers(kubeconfig, work / "controller.log",
                                                        params))
                pids |= {f"controller-{i}": p.pid for i, p in enumerate(procs.values())}
            probe = Probe(kube, fleet, observer, pids)
            result |= await measure_phases(probe, procs, params)
    finally:
        watching.cancel()
    return result


# The figures after a failure: an overloaded API server may not answer the last snapshot.
LAST_SNAPSHOT_TIMEOUT_S = 60.0
WHOLE_RUN_FIGURES = ("apiserver_p99_s", "apiserver_p50_s", "apiserver_write_p99_s",
                     "apiserver_requests")  # of window_figures, from the first snapshot on


async def measure_phases(probe: Probe, procs: dict[str, subprocess.Popen[bytes]],
                         params: Params) -> JSON:
    """Every phase in turn. When the API server gives out part-way (a naive design at 5,000
    nodes), what was measured until then is a result too: the run carries ``error`` and
    ``failed_in`` beside its figures, and the whole-run figures end at the failure."""
    fleet, design = probe.fleet, probe.fleet.design
    first = await snapshot(probe)
    result: JSON = {}
    try:
        await run_phases(probe, procs, params, first, result)
    except FAILURES as exc:
        result["failed_in"], result["error"] = result.pop("phase"), repr(exc)[:2000]
        progress(f"[{design} N={len(fleet.agents)}] {result['failed_in']} failed: {exc!r}"[:400])
    result.pop("phase", None)
    last = None
    with contextlib.suppress(*FAILURES):
        last = await asyncio.wait_for(snapshot(probe), LAST_SNAPSHOT_TIMEOUT_S)
    whole = {} if last is None else window_figures(first, last, design)
    return result | {key: whole.get(key) for key in WHOLE_RUN_FIGURES} | {
        "etcd_db_bytes": None if last is None else last.etcd_db_bytes}


async def run_phases(probe: Probe, procs: dict[str, subprocess.Popen[bytes]], params: Params,
                     first: Snapshot, result: JSON) -> None:
    """The phases, each writing its figures into ``result`` as it ends (``phase``: the one
    under way)."""
    fleet, observer = probe.fleet, probe.observer
    design, nodes = fleet.design, len(fleet.agents)
    result["phase"] = "sync"
    synced = await observer.wait_for(
        lambda s: complete(design, s, nodes, fleet.generation),
        params.converge_timeout_s + nodes / 10)
    if synced is None:  # a TimeoutError: one of FAILURES, so the run keeps what it had
        raise TimeoutError(f"the policy status never counted all {nodes} nodes: "
                           f"{json.dumps(observer.status)[:500]}")
    result["sync_s"] = synced - first.at
    progress(f"[{design} N={nodes}] the policy status counts every node "
             f"({synced - first.at:.1f}s)")
    interval = params.controller_status_interval_s or 5.0
    quiet = interval + 1.0 if design == PER_NODE else 0.5
    await wait_quiet(fleet, observer, quiet_s=quiet, timeout=interval * 4 + 30)
    result["policy_object_bytes"] = len(json.dumps(observer.latest, separators=(",", ":")))
    progress(f"[{design} N={nodes}] steady {params.steady_s:g}s")
    result["phase"] = "steady"
    steady = await measure_window(probe, params.steady_s)
    result |= {"steady": steady, "steady_writes_per_node_min": steady["writes_per_node_min"]}
    if design == PER_NODE and params.churn_after_s:
        # The controller writes savings at the status pace for one savings interval after it
        # first sees a policy (so a new policy shows its savings at once): churn is measured
        # after that, at the steady-state pace.
        await asyncio.sleep(max(0.0, first.at + params.churn_after_s - time.monotonic()))
    progress(f"[{design} N={nodes}] churn {params.churn_s:g}s")
    result["phase"] = "churn"
    fleet.start_churn()
    async with apiserver_profile(probe.kube, params.profiles, f"{design}-{nodes}-churn",
                                 params.churn_s):
        churn = await measure_window(probe, params.churn_s)
    result |= {"churn": churn, "events_per_agent_min": churn["events_per_agent_min"],
               "bytes_per_agent_min": churn["bytes_per_agent_min"]}
    progress(f"[{design} N={nodes}] converge: {params.samples} samples under churn")
    result["phase"] = "converge"
    samples = await converge_samples(fleet, observer, node_name(nodes - 1), params.samples,
                                     params.converge_timeout_s)
    done = [s for s in samples if s is not None]
    result |= {"converge_s": max(done) if len(done) == len(samples) else None,
               "converge_median_s": statistics.median(done) if done else None,
               "converge_samples_s": samples}
    if len(samples) % 2:  # leave the node healthy
        await converge_samples(fleet, observer, node_name(nodes - 1), 1,
                               params.converge_timeout_s, first_failed=False)
    fleet.stop_churn()
    await wait_quiet(fleet, observer, quiet_s=quiet, timeout=interval * 4 + 30)
    progress(f"[{design} N={nodes}] burst: a policy change every agent applies")
    result["phase"] = "burst"
    async with apiserver_profile(probe.kube, params.profiles, f"{design}-{nodes}-burst",
                                 min(BURST_PROFILE_S, params.scenario_timeout_s)):
        result["burst"] = await burst(probe, params)
    progress(f"[{design} N={nodes}] burst: {fmt(result['burst']['converge_s'])}s")
    result["failover"] = None
    if design == PER_NODE:
        progress(f"[{design} N={nodes}] failover: SIGKILL the leading controller")
        result["phase"] = "failover"
        result["failover"] = await failover(probe, procs, params)
        progress(f"[{design} N={nodes}] failover: {fmt(result['failover']['converge_s'])}s")
    progress(f"[{design} N={nodes}] vanish: {VANISH_SHARE:.0%} of the Nodes deleted")
    result["phase"] = "vanish"
    result["vanish"] = await vanish(probe, params)


KWOK: list[subprocess.Popen[bytes] | None] = [None]
BURST_PROFILE_S = 60.0  # the burst's first minute: where its writes meet the API server


class Profiler(Protocol):
    async def cpu_profile(self, seconds: float) -> bytes: ...  # Kube's


@contextlib.asynccontextmanager
async def apiserver_profile(kube: Profiler, into: Path | None, name: str,
                            seconds: float) -> AsyncIterator[None]:
    """kube-apiserver's CPU profile over the first ``seconds`` of the block, saved as
    ``into/<name>-<unix time>.pb.gz`` (read it with ``go tool pprof``); nothing without
    ``into``. The block's end waits for the profile, so a shorter block is profiled past it."""
    if into is None:
        yield
        return
    task = asyncio.create_task(kube.cpu_profile(seconds))
    try:
        yield
    finally:
        try:
            path = into / f"{name}-{int(time.time())}.pb.gz"
            path.write_bytes(await task)
            progress(f"apiserver CPU profile: {path}")
        except FAILURES as exc:  # a missing profile is a missing figure, not a failed run
            progress(f"apiserver CPU profile {name} failed: {exc!r}"[:300])


def run_once(design: str, nodes: int, params: Params, kwok_path: Path,
             etcd_path: Path | None) -> JSON:
    """One design at one N on a fresh control plane (so etcd's size is this run's alone)."""
    with tempfile.TemporaryDirectory(prefix="overcommit-bench-scale-") as tmp, \
            MemoryGuard() as guard, ControlPlane(etcd=etcd_path, extra_apiserver_args=(
                ["--profiling=true"] if params.profiles else [])) as cp:
        work = Path(tmp)
        (work / "secrets").mkdir(mode=0o700)
        install(cp, design)
        with kwok(cp, kwok_path, work / "kwok.log") as kwok_proc:
            KWOK[0] = kwok_proc
            try:
                return asyncio.run(run_design(cp, design, nodes, params, work))
            except KeyboardInterrupt:
                if guard.tripped:  # the guard stopped it: say why, not "interrupted"
                    raise RuntimeError(guard.tripped) from None
                raise
            except BaseException:
                for name in ("controller.log", "kwok.log"):
                    log = work / name
                    if log.exists():
                        print(f"--- {name}\n" + log.read_text(errors="replace")[-3000:],
                              file=sys.stderr)
                raise


# -- summaries ------------------------------------------------------------------------------
# -- output ---------------------------------------------------------------------------------
T0 = time.monotonic()


def progress(line: str) -> None:
    say(f"{time.monotonic() - T0:6.1f}s {line}")


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{1000 * value:.0f}"


def print_table(results: JSON) -> None:
    say(f"\n{'design':15} {'N':>5} {'p99 ms':>7} {'wr p99':>7} {'etcd MiB':>8} "
        f"{'conv s':>6} {'burst s':>7} {'b p99':>6} {'b 409':>6} {'b fail':>6} "
        f"{'fover s':>7} {'vanish s':>8} {'stale':>5} {'ev/ag/min':>9} {'KiB/ag/min':>10}")
    for design, by_n in results.items():
        for n, r in sorted(by_n.items(), key=lambda item: int(item[0])):
            if r["repeats"]:
                say(table_row(design, n, r))
                continue
            say(f"{design:15} {n:>5} failed: {r['errors'][0][:200]}")
            if partial := r.get("partial"):
                say(table_row(f"  until {partial['failed_in']}", n, partial))
    say("medians over the repeats; p99: the API server's own request-duration histogram over the "
        "whole run (WATCH/CONNECT left out), wr: writes only, b: the burst window; "
        "'-': none (no failover without a controller; naive designs never drop a vanished "
        "node's entry); 'until <phase>': a run that failed there, its figures until then")


def table_row(label: str, n: str, r: JSON) -> str:
    b, f, v = r.get("burst") or {}, r.get("failover") or {}, r.get("vanish") or {}
    etcd, per_agent = r.get("etcd_db_bytes"), r.get("bytes_per_agent_min")
    return (f"{label:15} {n:>5} {ms(r.get('apiserver_p99_s')):>7} "
            f"{ms(r.get('apiserver_write_p99_s')):>7} "
            f"{fmt(None if etcd is None else etcd / 2**20, 1):>8} "
            f"{fmt(r.get('converge_s')):>6} {fmt(b.get('converge_s')):>7} "
            f"{ms(b.get('apiserver_p99_s')):>6} {fmt(b.get('conflicts'), 0):>6} "
            f"{fmt(b.get('agent_writes_failed'), 0):>6} {fmt(f.get('converge_s')):>7} "
            f"{fmt(v.get('converge_s')):>8} {fmt(v.get('stale_entries'), 0):>5} "
            f"{fmt(r.get('events_per_agent_min'), 1):>9} "
            f"{fmt(None if per_agent is None else per_agent / 1024, 1):>10}")


def verdicts(results: JSON) -> list[str]:
    by_n = results.get(PER_NODE) or {}
    if not by_n:
        return []
    n = max((k for k in by_n if by_n[k]["repeats"]), key=int, default=None)
    if n is None:
        return ["MISS per_node_state: no run completed"]
    r = by_n[n]
    converge = r["converge_s"]
    lines = [f"{'PASS' if converge is not None and converge <= TARGETS['converge_s'] else 'MISS'}"
             f" converge at N={n}: {fmt(converge)} s (target <= {TARGETS['converge_s']:g} s)",
             f"{'PASS' if r['steady_writes_per_node_min'] == 0 else 'MISS'} steady writes at "
             f"N={n}: {fmt(r['steady_writes_per_node_min'], 3)} /node/min (target 0)"]
    for design in results:
        if design == PER_NODE or n not in results[design]:
            continue
        if not results[design][n]["repeats"]:
            lines.append(f"WIN  {design} at N={n} did not complete: "
                         f"{results[design][n]['errors'][0][:160]}")
            continue
        ours, theirs = r["apiserver_p99_s"], results[design][n]["apiserver_p99_s"]
        if ours is not None and theirs is not None:
            lines.append(f"{'WIN ' if ours < theirs else 'LOSS'} API-server p99 at N={n}: "
                         f"{ms(ours)} ms against {design}'s {ms(theirs)} ms")
        ours_b = (r["burst"] or {}).get("converge_s")
        theirs_b = (results[design][n]["burst"] or {}).get("converge_s")
        if ours_b is not None:
            win = theirs_b is None or ours_b < theirs_b
            lines.append(f"{'WIN ' if win else 'LOSS'} burst at N={n}: {fmt(ours_b)} s against "
                         f"{design}'s {fmt(theirs_b)} s")
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
                        help="N = 20, 100, short windows, a 5 s controller lease")
    parser.add_argument("--sizes", help="comma-separated N (default 100,1000,5000)")
    parser.add_argument("--designs", default=",".join(DESIGNS),
                        help=f"comma-separated subset of {','.join(DESIGNS)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs per design and N")
    parser.add_argument("--steady", type=float, help="steady window, s (default 30; quick 3)")
    parser.add_argument("--churn", type=float, help="churn window, s (default 60; quick 10)")
    parser.add_argument("--samples", type=int, help="converge samples (default 4; quick 2)")
    parser.add_argument("--converge-timeout", type=float,
                        help="give up on a converge sample after S seconds (default 120; quick 10)")
    parser.add_argument("--scenario-timeout", type=float,
                        help="give up on burst/failover/vanish after S seconds (default 300; "
                        "quick 60)")
    parser.add_argument("--controller-status-interval", type=float, metavar="S",
                        help="the controller's --status-interval (default: shipped; quick 1)")
    parser.add_argument("--controller-lease", type=int, metavar="S",
                        help="the controller's --lease-duration (default: shipped, 15; quick 5)")
    parser.add_argument("--controller-sweep", type=float, metavar="S",
                        help="the controller's --sweep-interval (default: shipped, 60; quick 2)")
    parser.add_argument("--agent-interval", type=float, default=30.0, metavar="S",
                        help="the simulated agents' cycle (the agent's shipped --interval, 30)")
    parser.add_argument("--agent-status-interval", type=float, default=60.0, metavar="S",
                        help="counter-only writes at most this often (shipped: 60)")
    parser.add_argument("--agent-counter-write-rate", type=float,
                        default=Timing(0, 0).counter_rate, metavar="N",
                        help="the agents' --counter-write-rate: counter-only writes at most "
                             "every max(status interval, nodes/N) s (shipped: 20; 0: the status "
                             "interval alone, as before it existed)")
    parser.add_argument("--apiserver-profiles", type=Path, metavar="DIR",
                        help="turn on kube-apiserver's profiling endpoint and save its CPU "
                             "profile of the churn window and of the burst's first minute in "
                             "DIR (go tool pprof -top -cum <kube-apiserver> <file>)")
    parser.add_argument("--agent-policy-change-rate", type=float,
                        default=Timing(0, 0).policy_change_rate, metavar="N",
                        help="per_node_state: the agents' --policy-change-rate, their writes "
                             "of a policy change spread over nodes/N s (shipped: 250; 0: all "
                             "at once, as before it existed)")
    args = parser.parse_args(argv)
    quick = args.quick
    sizes = tuple(int(s) for s in (args.sizes or ("20,100" if quick else "100,1000,5000"))
                  .split(","))
    designs = tuple(d for d in args.designs.split(",") if d)
    if not set(designs) <= set(DESIGNS) or not designs or min(sizes) < 5 or args.repeat < 1:
        parser.error(f"--designs takes {','.join(DESIGNS)}; every N must be at least 5")
    return Params(
        sizes=sizes, designs=designs, repeat=args.repeat,
        steady_s=args.steady or (3.0 if quick else 30.0),
        churn_s=args.churn or (10.0 if quick else 60.0),
        samples=args.samples or (2 if quick else 4),
        converge_timeout_s=args.converge_timeout or (10.0 if quick else 120.0),
        scenario_timeout_s=args.scenario_timeout or (60.0 if quick else 300.0),
        controller_status_interval_s=args.controller_status_interval or (1.0 if quick else None),
        controller_lease_s=args.controller_lease or (5 if quick else None),
        controller_sweep_s=args.controller_sweep or (2.0 if quick else None),
        churn_after_s=0.0 if quick else 61.0,
        timing=Timing(args.agent_interval, args.agent_status_interval,
                      args.agent_policy_change_rate, args.agent_counter_write_rate),
        profiles=args.apiserver_profiles)


def main(argv: Sequence[str] | None = None) -> int:
    params = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)  # so `finally` stops what the run started
    if PER_NODE in params.designs and (why := controller_missing()):
        print(f"overcommit controller is not available ({why}); run with --designs naive",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    kwok_path = kwok_binary()
    progress(f"kwok: {kwok_path}")
    etcd_path = etcd_binary()
    progress(f"etcd: {etcd_path or 'as the environment names it'}")
    host = host_facts()
    progress(f"host: {host}")
    runs: dict[str, dict[str, list[JSON]]] = {d: {} for d in params.designs}
    for repeat in range(params.repeat):
        # Round-robin: a slow stretch of the shared machine hits every design alike.
        for nodes in params.sizes:
            for design in params.designs:
                progress(f"repeat {repeat + 1}/{params.repeat}")
                try:
                    run = run_once(design, nodes, params, kwok_path, etcd_path)
                except Exception as exc:  # a design that breaks at this N is a result too
                    progress(f"[{design} N={nodes}] FAILED: {exc!r}"[:1000])
                    run = {"nodes": nodes, "error": repr(exc)[:2000]}
                runs[design].setdefault(str(nodes), []).append(run)
    results = {d: {n: summarise(r) for n, r in by_n.items()} for d, by_n in runs.items()}
    print_table(results)
    say("")
    for line in verdicts(results):
        say(line)
    say(f"total {time.monotonic() - started:.0f}s")
    output = {**results,
              "agents_are_system_masters": any(
                  r["agent_identity"]["system_masters"] for by_n in results.values()
                  for r in by_n.values() if r["repeats"]),
              "agent_user": AGENT_USER,
              "host": host,
              "params": {"sizes": list(params.sizes), "repeat": params.repeat,
                         "steady_s": params.steady_s, "churn_s": params.churn_s,
                         "agent_interval_s": params.timing.interval_s,
                         "agent_status_interval_s": params.timing.status_interval_s,
                         "agent_policy_change_rate": params.timing.policy_change_rate,
                         "agent_counter_write_rate": params.timing.counter_rate,
                         "controller_status_interval_s": params.controller_status_interval_s,
                         "controller_lease_s": params.controller_lease_s,
                         "controller_sweep_s": params.controller_sweep_s,
                         "churn_after_s": params.churn_after_s,
                         "kwok_node_lease_s": KWOK_LEASE_SECONDS}}
    print(json.dumps(rounded(output), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
