"""The per-node agent against a real kube-apiserver: reaction time, memory, CPU and a soak.

``python -m bench.agent [--quick] [--repeat N] [--soak-seconds S] [--static]`` starts etcd +
kube-apiserver on loopback (``ControlPlane``), installs the CRDs and ``deploy/manifests``,
registers a Node and runs ``overcommit agent`` as its own process with a pod-bound token (as the
demo does), with the shipped --interval and --status-interval, on a simulated host root in a
temp dir (never the real /sys: KSM is machine-wide and other jobs use it).

By default (the LIVE run, needs root) it also boots real TCG guests under the real libvirtd
(``testkit.guests``), passes ``--libvirt-uri qemu:///system`` to the agent, and applies a policy
with **Adaptive KSM and Auto ballooning** of those guests; a thread moves the simulated host's
KSM counters as ksmd would. ``--static`` is the old set-up: a Static policy, no libvirt, a
static host. Then it measures:

1. policy change -> sysfs: the time from just before a PATCH (one keep-alive HTTPS connection,
   no kubectl per change) until the host-root file holds the value; also from the PATCH's
   response ("ack"). Live: each measured change switches the Adaptive policy to Static with a
   value of ours, and an unmeasured change switches it back. 200 changes: p50, p95, p99, max;
2. the agent's VmRSS / VmHWM after the changes (live: libvirt loaded), and what the imports
   alone cost;
3. CPU (utime+stime) over a steady window and the node-state status writes and Events the
   agent made in it (a watch on the node state counts every write);
4. a soak (--soak-seconds; 1800 full, 120 quick): RSS, open fds and tasks every 5 s with a
   policy change every 30 s; growth after a warm-up and its least-squares slope.

The guests are destroyed at the end, also on Ctrl-C or SIGTERM (guests of a run killed with
SIGKILL at the next start). The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.common import raise_interrupt as _raise_interrupt
from overcommit.api.policy import GROUP, VERSION
from overcommit.cli import build_parser
from overcommit.demo.run import Demo, simulated_host
from overcommit.localcluster.controlplane import ControlPlane
from overcommit.localcluster.processes import stop_process

JSON = dict[str, Any]
DAEMONSET = Path(__file__).resolve().parents[1] / "deploy" / "manifests" / "agent-daemonset.yaml"
POLICIES = f"/apis/{GROUP}/{VERSION}/memoryovercommitpolicies"
NODE_STATES = f"/apis/{GROUP}/{VERSION}/memoryovercommitnodestates"
KSM_FILE = "sys/kernel/mm/ksm/pages_to_scan"
LIBVIRT_URI = "qemu:///system"
POLICY = "bench-agent"
FIRST_PAGES = 1000
FILE_POLL_S = 0.005
WAIT_S = 60.0
TARGETS = {"p95_latency_s": 2.0, "rss_mib": 64.0, "idle_cpu_percent": 0.5}
LIVE_FIRST_PAGES = 9001  # above adaptive.maxPagesToScan (8000): never a value Adaptive writes
GUEST_PREFIX = "oc-bench-agent-"
SOAK_SAMPLE_S = 5.0
SOAK_CHURN_S = 30.0  # during the soak, a policy change this often (cpuBudgetPercent 20 <-> 19)
COUNTER_TICK_S = 1.0


# -- a persistent API client ----------------------------------------------------------------
class Api:
    """HTTPS to the API server as the kubeconfig's user, over one keep-alive connection."""

    def __init__(self, kubeconfig: Path, secrets: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
        files = {}
        for name in ("certificate-authority-data", "client-certificate-data",
                     "client-key-data"):
            path = secrets / name
            path.write_bytes(base64.b64decode(cluster.get(name) or user[name]))
            path.chmod(0o600)
            files[name] = str(path)
        self.context = ssl.create_default_context(cafile=files["certificate-authority-data"])
        self.context.load_cert_chain(files["client-certificate-data"], files["client-key-data"])
        url = urllib.parse.urlsplit(cluster["server"])
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.conn = self.connection(timeout=30)

    def connection(self, timeout: float | None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                           timeout=timeout)

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> JSON:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                text = response.read()
                break
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()  # the server dropped an idle keep-alive: reconnect once
                if attempt:
                    raise
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {text[:300]!r}")
        result: JSON = json.loads(text)
        return result

    def close(self) -> None:
        self.conn.close()


class StateWatch(threading.Thread):
    """One watch on the node state: the time of every write, and the newest object."""

    def __init__(self, api: Api, node: str) -> None:
        super().__init__(name="node-state-watch", daemon=True)
        selector = urllib.parse.quote(f"metadata.name={node}")
        listing = api.request("GET", f"{NODE_STATES}?fieldSelector={selector}")
        self.path = (f"{NODE_STATES}?watch=1&fieldSelector={selector}&timeoutSeconds=3600"
                     f"&resourceVersion={listing['metadata']['resourceVersion']}")
        self.conn = api.connection(timeout=None)  # silence is what we hope to see: no timeout
        self.changed = threading.Condition()
        self.writes: list[float] = []  # monotonic times of ADDED/MODIFIED
        self.latest: JSON = {}
        self.ended = False

    def run(self) -> None:
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            self.conn.request("GET", self.path)
            for line in self.conn.getresponse():  # one JSON event per line
                event = json.loads(line)
                with self.changed:
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.writes.append(time.monotonic())
                        self.latest = event["object"]
                    self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def wait(self, check: Callable[[JSON], bool], what: str, timeout: float = WAIT_S) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: self.ended or check(self.latest), timeout):
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            if self.ended:
                raise RuntimeError("the node-state watch ended early")

    def writes_between(self, start: float, end: float) -> int:
        with self.changed:
            return sum(start <= t <= end for t in self.writes)

    def stop(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self.conn.sock.shutdown(socket.SHUT_RDWR)  # EOF for the reading thread
        self.join(timeout=10)
        self.conn.close()  # only now: closing under a reading thread races http.client


def policy_generation(state: JSON) -> int | None:
    policy = (state.get("status") or {}).get("policy") or {}
    return policy.get("generation")


def policy_document(node: str, pages: int) -> JSON:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MemoryOvercommitPolicy",
            "metadata": {"name": POLICY},
            "spec": {"nodeSelector": {"matchLabels": {"kubernetes.io/hostname": node}},
                     "ksm": {"mode": "Static", "enabled": True, "pagesToScan": pages}}}


def live_policy_document(node: str, pattern: str) -> JSON:
    """Adaptive KSM and Auto ballooning of our guests, everything else at its default."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MemoryOvercommitPolicy",
            "metadata": {"name": POLICY},
            "spec": {"nodeSelector": {"matchLabels": {"kubernetes.io/hostname": node}},
                     "ksm": {"mode": "Adaptive"},
                     "balloon": {"mode": "Auto",
                                 "vmSelector": {"domainNamePattern": pattern}}}}


# The live run's measured change (Adaptive -> Static with a value of ours) and the unmeasured
# way back, so every measured change starts from a busy agent in Adaptive mode.
def to_static(value: int) -> JSON:
    return {"spec": {"ksm": {"mode": "Static", "enabled": True, "pagesToScan": value}}}


TO_ADAPTIVE: JSON = {"spec": {"ksm": {"mode": "Adaptive", "enabled": None, "pagesToScan": None}}}


def event_messages(api: Api, node: str) -> list[str]:
    selector = urllib.parse.quote(f"involvedObject.name={node}")
    events = api.request("GET", f"/api/v1/namespaces/default/events?fieldSelector={selector}")
    return [str(e.get("message", "")) for e in events["items"]]


# -- the agent process ----------------------------------------------------------------------
def proc_status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024  # the value is in kB
    raise KeyError(key)


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread, from /proc/<pid>/stat (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_ns(pid: int) -> dict[str, int]:
    """Each live thread's CPU time in ns (schedstat): finer than stat's 10 ms ticks."""
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            times[task.name] = int((task / "schedstat").read_text().split()[0])
    return times


def ns_since(before: dict[str, int], after: dict[str, int]) -> float:
    """Seconds of CPU between two thread_cpu_ns samples (threads that exited are lost)."""
    return sum(ns - before.get(tid, 0) for tid, ns in after.items()) / 1e9


@dataclass(frozen=True)
class SoakSample:
    t: float  # seconds since the soak began
    rss_kib: int
    fds: int  # open file descriptors
    tasks: int  # threads
    cpu_s: float


def soak_sample(pid: int, t: float) -> SoakSample:
    status = {line.split(":")[0]: line.split()[1:] for line in
              Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line}
    return SoakSample(t, int(status["VmRSS"][0]), len(os.listdir(f"/proc/{pid}/fd")),
                      int(status["Threads"][0]), cpu_seconds(pid))


def soak_growth(samples: Sequence[SoakSample], warmup_share: float = 0.1) -> JSON:
    """What grew over the soak. The first ``warmup_share`` of the samples (caches filling,
    the first full cycles) are left out of the growth figures; the maxima cover every sample.

    * ``rss_growth_mib``: the last sample less the first after the warm-up;
    * ``rss_slope_mib_per_h``: the least-squares slope over the samples after the warm-up,
      so one late spike or a collection just before the end does not decide it;
    * the same first/last/max for open fds and tasks, and the CPU share over the soak."""
    if len(samples) < 2:
        raise ValueError("a soak needs at least two samples")
    kept = list(samples[min(int(len(samples) * warmup_share), len(samples) - 2):])
    first, last = kept[0], kept[-1]
    times = [x.t for x in kept]
    slope = statistics.linear_regression(times, [x.rss_kib / 1024 for x in kept]).slope \
        if len(set(times)) > 1 else 0.0
    span = samples[-1].t - samples[0].t
    return {
        "seconds": span, "samples": len(samples), "warmup_samples": len(samples) - len(kept),
        "rss_start_mib": first.rss_kib / 1024, "rss_end_mib": last.rss_kib / 1024,
        "rss_max_mib": max(x.rss_kib for x in samples) / 1024,
        "rss_growth_mib": (last.rss_kib - first.rss_kib) / 1024,
        "rss_slope_mib_per_h": slope * 3600,
        "fds_start": first.fds, "fds_end": last.fds, "fds_max": max(x.fds for x in samples),
        "tasks_start": first.tasks, "tasks_end": last.tasks,
        "tasks_max": max(x.tasks for x in samples),
        "cpu_percent": 100 * (samples[-1].cpu_s - samples[0].cpu_s) / span if span > 0 else 0.0,
    }


class MovingCounters(threading.Thread):
    """Moves the simulated host's KSM counters as ksmd would on a live node: pages_scanned
    every second, a full scan every 10 s, a few more shared pages now and then. Without it
    the host is static and "nothing changed, nothing written" holds by construction."""

    def __init__(self, ksm_dir: Path) -> None:
        super().__init__(name="moving-counters", daemon=True)
        self.ksm_dir, self.halt = ksm_dir, threading.Event()

    def bump(self, name: str, by: int) -> None:
        path = self.ksm_dir / name
        with contextlib.suppress(OSError, ValueError):
            path.write_text(f"{int(path.read_text().split()[0]) + by}\n")

    def run(self) -> None:
        tick = 0
        while not self.halt.wait(COUNTER_TICK_S):
            tick += 1
            self.bump("pages_scanned", 2000)
            if tick % 10 == 0:
                self.bump("full_scans", 1)
                self.bump("pages_sharing", 50)
                self.bump("pages_shared", 10)

    def stop(self) -> None:
        self.halt.set()
        if self.is_alive():  # the static run never starts it
            self.join(timeout=5)


@contextlib.contextmanager
def live_guests(count: int, mib: int) -> Iterator[list[str]]:
    """``count`` real TCG guests with a virtio balloon under the real libvirtd, destroyed on
    the way out (also on SIGTERM, which main turns into KeyboardInterrupt); the guests of an
    earlier run killed with SIGKILL are destroyed first."""
    import libvirt  # type: ignore[import-untyped]  # only for live runs (root)

    from testkit import guests, libvirtd

    libvirtd.ensure_libvirtd()
    guests.guest_image()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(libvirtd.URI)
    domains: list[Any] = []
    try:
        for domain in conn.listAllDomains(0):
            m = re.fullmatch(rf"{GUEST_PREFIX}(\d+)-\d+", domain.name())
            if m and not os.path.exists(f"/proc/{m.group(1)}"):
                with contextlib.suppress(Exception):
                    guests.destroy_guest(domain)
        for i in range(count):
            domains.append(guests.define_guest(
                conn, f"{GUEST_PREFIX}{os.getpid()}-{i}", mib, mib, with_balloon=True,
                balloon_driver=True, stats_period=10, share_pages=False))
        for domain in domains:
            guests.wait_booted(domain, timeout=180)
        yield [d.name() for d in domains]
    finally:
        for domain in domains:
            with contextlib.suppress(Exception):
                guests.destroy_guest(domain)
        with contextlib.suppress(Exception):
            conn.close()
        print(f"{len(domains)} guests destroyed", flush=True)


@dataclass
class AgentRun:
    proc: subprocess.Popen[bytes]
    stop_s: float = 0.0  # SIGTERM to exit: a DaemonSet rollout waits this long per node


def shipped_env(manifest: Path = DAEMONSET) -> dict[str, str]:
    """The agent container's literal environment (the DaemonSet's ``value`` entries; the
    ``valueFrom`` ones are the demo's business): the bench measures the agent with the
    environment it ships with."""
    for doc in yaml.safe_load_all(manifest.read_text()):
        if doc and doc.get("kind") == "DaemonSet":
            [container] = [c for c in doc["spec"]["template"]["spec"]["containers"]
                           if c["name"] == "agent"]
            return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
    raise ValueError(f"no DaemonSet in {manifest}")


@contextlib.contextmanager
def agent_process(demo: Demo, flags: Sequence[str]) -> Iterator[AgentRun]:
    argv = [sys.executable, "-m", "overcommit.cli", "agent", "--node-name", demo.node,
            "--kubeconfig", str(demo.agent_kubeconfig()), "--host-root", str(demo.host_root),
            "--state-dir", str(demo.state_dir), *flags]
    with (demo.work / "agent.log").open("ab") as log:
        run = AgentRun(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **shipped_env()}))
    try:
        yield run
    finally:
        start = time.monotonic()
        stop_process(run.proc)
        run.stop_s = time.monotonic() - start


# -- measurements ---------------------------------------------------------------------------
def wait_file(path: Path, value: str, timeout: float = WAIT_S) -> float:
    """Poll ``path`` every 5 ms; the monotonic time it first held ``value``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if path.read_text().strip() == value:
                return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never became {value}")
        time.sleep(FILE_POLL_S)


def change_series(api: Api, watch: StateWatch, sysfs: Path, values: Sequence[int],
                  live: bool = False) -> tuple[list[float], list[float]]:
    """(from request start, from ack) latencies, one per pagesToScan value. ``live``: each
    change switches an Adaptive policy to Static with the value, and an unmeasured second
    change switches it back to Adaptive."""
    from_start: list[float] = []
    from_ack: list[float] = []
    for value in values:
        patch = to_static(value) if live else {"spec": {"ksm": {"pagesToScan": value}}}
        start = time.monotonic()
        obj = api.request("PATCH", f"{POLICIES}/{POLICY}", patch, "application/merge-patch+json")
        acked = time.monotonic()
        landed = wait_file(sysfs, str(value))
        from_start.append(landed - start)
        from_ack.append(landed - acked)
        # Let the status write of this change land, so every change starts from a quiet agent.
        wait_generation(watch, int(obj["metadata"]["generation"]))
        if live:
            back = api.request("PATCH", f"{POLICIES}/{POLICY}", TO_ADAPTIVE,
                               "application/merge-patch+json")
            wait_generation(watch, int(back["metadata"]["generation"]))
    return from_start, from_ack


def wait_generation(watch: StateWatch, generation: int) -> None:
    watch.wait(lambda state: policy_generation(state) == generation,
               f"generation {generation} in the node state")


@dataclass
class Steady:
    seconds: float
    cpu_seconds: float
    schedstat_seconds: float
    status_writes: int
    events: int


def steady_window(api: Api, watch: StateWatch, pid: int, node: str, seconds: float) -> Steady:
    events_before = len(event_messages(api, node))
    threads_before = thread_cpu_ns(pid)
    cpu_before, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)  # the measurement window itself: nothing is supposed to happen
    cpu_after, end = cpu_seconds(pid), time.monotonic()
    precise = ns_since(threads_before, thread_cpu_ns(pid))
    events = len(event_messages(api, node)) - events_before
    return Steady(end - start, cpu_after - cpu_before, precise,
                  watch.writes_between(start, end), events)


BLOCK = "import sys; sys.modules['kubernetes'] = None; "  # what cli.cmd_agent does
IMPORT_PROBES = {
    "python -c pass": "",
    "import asyncio, ssl": "import asyncio, ssl",
    "import aiohttp": "import aiohttp",
    "import kubernetes": "import kubernetes",
    "import kopf (kubernetes importable)": "import kopf",
    "import kopf (kubernetes blocked, as the agent)": BLOCK + "import kopf",
    "import kopf, overcommit.agent.runner (blocked)": BLOCK
    + "import kopf, overcommit.agent.runner",
}


def import_rss_mib(code: str) -> float:
    probe = f"{code}\nprint(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
    # With the agent's shipped environment, as the agent itself runs here.
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=120, env={**os.environ, **shipped_env()})
    return int(out.stdout.split()[-1]) / 1024


def rss_breakdown() -> dict[str, float]:
    return {name: import_rss_mib(code) for name, code in IMPORT_PROBES.items()}


# -- statistics and output ------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values or not 0 <= q <= 1:
        raise ValueError("percentile needs values and 0 <= q <= 1")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def series_stats(values: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99 and max. Below 100 samples a p99 is an interpolation towards the maximum
    (and a p95 below 20 nearly the maximum): the runs take 200 changes."""
    return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95),
            "p99": percentile(values, 0.99), "max": max(values)}


def median_stats(runs: Sequence[Sequence[float]]) -> dict[str, float]:
    """Each statistic's median over the repeated series."""
    per_run = [series_stats(run) for run in runs]
    return {key: statistics.median(s[key] for s in per_run) for key in per_run[0]}


def allowed_writes(result: JSON) -> int:
    """Status writes a steady window may hold: none on a static host; on a live one (counters
    moving) one per --status-interval, plus one for a window that straddles two."""
    if not result.get("live"):
        return 0
    return int(result["steady_window_s"] // result["agent_status_interval_s"]) + 1


def verdicts(result: JSON) -> list[str]:
    cpu = "CPU, Adaptive + Auto (live)" if result.get("live") else "idle CPU"
    checks = [("p95 latency", result["p95_latency_s"], TARGETS["p95_latency_s"], "s"),
              ("p99 latency", result["latency_s"]["p99"], TARGETS["p95_latency_s"], "s"),
              ("agent RSS", result["rss_mib"], TARGETS["rss_mib"], "MiB"),
              (cpu, result["idle_cpu_percent"], TARGETS["idle_cpu_percent"], "%"),
              ("steady status writes", result["steady_status_writes"], allowed_writes(result),
               "")]
    return [f"{'PASS' if value <= limit else 'MISS'} {name}: {value:.3g}{unit} "
            f"(target <= {limit:g}{unit})" for name, value, limit, unit in checks]


def rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


def log_problems(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines()
            if " WARNING " in line or " ERROR " in line or "Traceback" in line]


def print_report(result: JSON, breakdown: dict[str, float]) -> None:
    lat, ack = result["latency_s"], result["latency_from_ack_s"]
    print(f"\nagent benchmark: {result['changes']} changes x {result['repeats']} series, "
          f"agent --interval {result['agent_interval_s']:g} --status-interval "
          f"{result['agent_status_interval_s']:g}, steady window {result['steady_window_s']:.0f}s")
    if result.get("live"):
        print(f"  LIVE: {result['guests']} real TCG guests x {result['guest_mib']} MiB under "
              f"libvirtd, Auto ballooning (reported {result['guests_reported']}), Adaptive KSM "
              f"on a simulated host root whose KSM counters move; each measured change is "
              f"Adaptive -> Static (and back, unmeasured)")
    print(f"  {'policy change -> sysfs file':34} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}")
    for label, stats in (("from request start", lat), ("from API acknowledgement", ack)):
        print(f"  {label:34} " + " ".join(f"{stats[k]:7.3f}s"
                                          for k in ("p50", "p95", "p99", "max")))
    print(f"  {'agent VmRSS / VmHWM':34} {result['rss_mib']:.1f} MiB / {result['hwm_mib']:.1f} MiB")
    label = "CPU, Adaptive+Auto (one core)" if result.get("live") else "idle CPU (one core)"
    print(f"  {label:34} {result['idle_cpu_percent']:.3f}% "
          f"({result['idle_cpu_s']:.2f}s CPU in {result['steady_window_s']:.1f}s; "
          f"schedstat: {result['idle_cpu_percent_schedstat']:.4f}%)")
    print(f"  {'steady status writes / Events':34} {result['steady_status_writes']} / "
          f"{result['steady_events']}")
    per = "measured change (2 PATCHes)" if result.get("live") else "policy change"
    print(f"  {'status writes per ' + per:34} {result['status_writes_per_change']:g}")
    print(f"  {'agent SIGTERM -> exit':34} {result['agent_stop_s']:.2f}s, exit code "
          f"{result['agent_exit_code']}")
    soak = result.get("soak") or {}
    if soak:
        print(f"  {'soak':34} {soak['seconds']:.0f}s, {soak['samples']} samples, "
              f"{soak['policy_changes']} policy changes, CPU {soak['cpu_percent']:.3f}%")
        print(f"  {'  RSS after warm-up: start -> end':34} {soak['rss_start_mib']:.1f} -> "
              f"{soak['rss_end_mib']:.1f} MiB (max {soak['rss_max_mib']:.1f}; growth "
              f"{soak['rss_growth_mib']:+.2f} MiB, slope {soak['rss_slope_mib_per_h']:+.2f} MiB/h)")
        print(f"  {'  open fds / tasks: start -> end':34} {soak['fds_start']} -> "
              f"{soak['fds_end']} (max {soak['fds_max']}) / {soak['tasks_start']} -> "
              f"{soak['tasks_end']} (max {soak['tasks_max']})")
    print(f"  {'agent log warnings/errors':34} {len(result['agent_log_problems'])}")
    for line in result["agent_log_problems"][:10]:
        print(f"    {line}")
    print("  memory breakdown (VmRSS of a fresh interpreter after the imports):")
    for name, mib in breakdown.items():
        print(f"    {name:50} {mib:6.1f} MiB")
    print(f"    {'the running agent (after the changes)':50} {result['rss_mib']:6.1f} MiB")
    print()
    for line in verdicts(result):
        print(line)


# -- orchestration --------------------------------------------------------------------------
def agent_flags(args: argparse.Namespace) -> tuple[list[str], float, float]:
    shipped = build_parser().parse_args(["agent"])  # the CLI's defaults: what ships
    interval = args.agent_interval or shipped.interval
    status_interval = args.agent_status_interval or shipped.status_interval
    flags = []
    if args.agent_interval:
        flags += ["--interval", str(interval)]
    if args.agent_status_interval:
        flags += ["--status-interval", str(status_interval)]
    return flags, interval, status_interval


@dataclass
class Series:
    from_start: list[list[float]]  # one list of latencies per repeat
    from_ack: list[list[float]]
    status_writes: int
    last_value: int


def latency_series(api: Api, watch: StateWatch, sysfs: Path, args: argparse.Namespace) -> Series:
    series = Series([], [], 0, FIRST_PAGES)
    begin = time.monotonic()
    first = LIVE_FIRST_PAGES if args.live else FIRST_PAGES + 1
    for repeat in range(args.repeat):
        base = first + repeat * args.changes
        from_start, from_ack = change_series(api, watch, sysfs, range(base, base + args.changes),
                                             live=args.live)
        series.from_start.append(from_start)
        series.from_ack.append(from_ack)
        series.last_value = base + args.changes - 1
    series.status_writes = watch.writes_between(begin, time.monotonic())
    return series


def measure(cp: ControlPlane, work: Path, args: argparse.Namespace,
            guest_names: Sequence[str] = ()) -> JSON:
    demo = Demo(cp, work, policy_file=Path(os.devnull))
    simulated_host(demo.host_root)
    demo.install()
    (work / "secrets").mkdir(mode=0o700)
    api = Api(cp.admin_kubeconfig, work / "secrets")
    watch = StateWatch(api, demo.node)
    watch.start()
    flags, interval, status_interval = agent_flags(args)
    sysfs = demo.host_root / KSM_FILE
    counters = MovingCounters(sysfs.parent)
    if args.live:
        flags += ["--libvirt-uri", LIBVIRT_URI]
        counters.start()
    soak: JSON = {}
    try:
        with agent_process(demo, flags) as agent:
            if args.live:
                api.request("POST", POLICIES, live_policy_document(
                    demo.node, f"{GUEST_PREFIX}{os.getpid()}-*"))
                wait_generation(watch, 1)
                watch.wait(lambda st: len(managed(st, guest_names)) == len(guest_names),
                           "the agent's first report of our guests", timeout=120)
            else:
                api.request("POST", POLICIES, policy_document(demo.node, FIRST_PAGES))
                wait_file(sysfs, str(FIRST_PAGES))
                wait_generation(watch, 1)
            series = latency_series(api, watch, sysfs, args)
            if not args.live:
                # The Event follows the status write: wait for it so the steady window starts
                # quiet.
                last = f"->{series.last_value}"
                wait_until(lambda: any(last in m for m in event_messages(api, demo.node)),
                           "the last change's Event")
            rss, hwm = (proc_status_mib(agent.proc.pid, k) for k in ("VmRSS", "VmHWM"))
            steady = steady_window(api, watch, agent.proc.pid, demo.node, args.steady)
            if args.soak_seconds > 0:
                soak = run_soak(api, agent.proc.pid, args.soak_seconds)
            seen = managed(watch.latest, guest_names)
            if agent.proc.poll() is not None:
                raise RuntimeError(f"the agent exited with {agent.proc.returncode}")
    except BaseException:
        print((work / "agent.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        counters.stop()
        watch.stop()
        api.close()
    return {**latency_figures(series), "rss_mib": rss, "hwm_mib": hwm,
            **steady_figures(steady), "changes": args.changes, "repeats": args.repeat,
            "live": args.live, "guests": len(guest_names), "guests_reported": len(seen),
            "guest_current_mib": {g.get("domain"): (g.get("currentBytes") or 0) / 2**20
                                  for g in seen},
            "soak": soak,
            "agent_interval_s": interval, "agent_status_interval_s": status_interval,
            "status_writes_per_change": series.status_writes / (args.changes * args.repeat),
            "agent_log_problems": log_problems(work / "agent.log"),
            "agent_exit_code": agent.proc.returncode, "agent_stop_s": agent.stop_s}


def managed(state: JSON, names: Sequence[str]) -> list[JSON]:
    """Our guests as the node state reports them (the agent saw them through libvirt)."""
    return [g for g in (state.get("status") or {}).get("guests") or []
            if g.get("domain") in names]


def run_soak(api: Api, pid: int, seconds: float) -> JSON:
    """The agent left running for ``seconds``: its RSS, open fds and tasks sampled every 5 s,
    and a policy change every 30 s (adaptive.cpuBudgetPercent 19 <-> 20) so the watch, the
    handlers, the status writes and the Events keep turning over as they would in a cluster."""
    print(f"soak: {seconds:.0f} s, a sample every {SOAK_SAMPLE_S:g} s", flush=True)
    start = time.monotonic()
    samples = [soak_sample(pid, 0.0)]
    next_churn, budget, changes = start + SOAK_CHURN_S, 19, 0
    while (now := time.monotonic()) - start < seconds:
        time.sleep(min(SOAK_SAMPLE_S, max(0.0, start + seconds - now)))
        now = time.monotonic()
        if now >= next_churn:
            api.request("PATCH", f"{POLICIES}/{POLICY}",
                        {"spec": {"ksm": {"adaptive": {"cpuBudgetPercent": budget}}}},
                        "application/merge-patch+json")
            budget, next_churn, changes = 39 - budget, next_churn + SOAK_CHURN_S, changes + 1
        samples.append(soak_sample(pid, now - start))
    result = soak_growth(samples)
    result["policy_changes"] = changes
    result["series"] = [[round(x.t), x.rss_kib, x.fds, x.tasks] for x in samples]
    return result


def latency_figures(series: Series) -> JSON:
    lat, ack = median_stats(series.from_start), median_stats(series.from_ack)
    return {"p50_latency_s": lat["p50"], "p95_latency_s": lat["p95"],
            "max_latency_s": lat["max"], "p50_latency_from_ack_s": ack["p50"],
            "p95_latency_from_ack_s": ack["p95"], "max_latency_from_ack_s": ack["max"],
            "latency_s": lat, "latency_from_ack_s": ack}


def steady_figures(steady: Steady) -> JSON:
    return {"idle_cpu_percent": 100 * steady.cpu_seconds / steady.seconds,
            "idle_cpu_percent_schedstat": 100 * steady.schedstat_seconds / steady.seconds,
            "idle_cpu_s": steady.cpu_seconds, "steady_window_s": steady.seconds,
            "steady_status_writes": steady.status_writes, "steady_events": steady.events}


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a 20 s steady window, a 2 minute soak and guests of 512 MiB "
                             "(still 200 changes)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="repeat the latency series N times, report the medians")
    parser.add_argument("--changes", type=int, help="changes per series (default 200)")
    parser.add_argument("--steady", type=float, help="steady window in seconds (default 60, "
                        "quick 20)")
    parser.add_argument("--soak-seconds", type=float, default=None, metavar="S",
                        help="the soak after the steady window (default 1800, quick 120; 0: "
                             "none)")
    parser.add_argument("--static", dest="live", action="store_false",
                        help="the old set-up: a Static KSM policy on a static simulated host, "
                             "no libvirt, no guests (no root needed)")
    parser.add_argument("--guests", type=int, default=2, help="real guests in the live run "
                        "(default 2)")
    parser.add_argument("--guest-mib", type=int, default=None,
                        help="each guest's memory (default 1024, quick 512)")
    parser.add_argument("--agent-interval", type=float, metavar="S",
                        help="pass --interval S to the agent (default: the shipped default)")
    parser.add_argument("--agent-status-interval", type=float, metavar="S",
                        help="pass --status-interval S to the agent (default: shipped)")
    args = parser.parse_args(argv)
    args.changes = args.changes or 200
    args.steady = args.steady or (20.0 if args.quick else 60.0)
    if args.soak_seconds is None:
        args.soak_seconds = 120.0 if args.quick else 1800.0
    args.guest_mib = args.guest_mib or (512 if args.quick else 1024)
    if args.repeat < 1 or args.changes < 1 or args.guests < 1:
        parser.error("--repeat, --changes and --guests must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.live and os.geteuid() != 0:
        print("bench.agent needs root for its real guests (qemu:///system); --static runs "
              "without", file=sys.stderr)
        return 2
    # So every `finally` runs (guests destroyed, control plane stopped) on kill as well.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with contextlib.ExitStack() as stack:
            names: Sequence[str] = ()
            if args.live:
                names = stack.enter_context(live_guests(args.guests, args.guest_mib))
            tmp = stack.enter_context(tempfile.TemporaryDirectory(
                prefix="overcommit-bench-agent-"))
            cp = stack.enter_context(ControlPlane())
            result = measure(cp, Path(tmp), args, names)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    breakdown = rss_breakdown()
    result["rss_breakdown_mib"] = breakdown
    result["quick"] = args.quick
    result["guest_mib"] = args.guest_mib if args.live else 0
    print_report(result, breakdown)
    print(json.dumps(rounded(result), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
