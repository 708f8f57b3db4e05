"""The per-node agent against a real kube-apiserver: reaction time, memory and idle cost.

``python -m bench.agent [--quick] [--repeat N]`` starts etcd + kube-apiserver on loopback
(``ControlPlane``), installs the CRDs and ``deploy/manifests``, registers a Node and runs
``overcommit agent`` as its own process with a pod-bound token (as the demo does), on a
simulated host root in a temp dir (never the real /sys), with the shipped --interval and
--status-interval. Then it measures:

1. policy change -> sysfs: the time from just before a PATCH of ``spec.ksm.pagesToScan`` (one
   keep-alive HTTPS connection, no kubectl per change) until the host-root file holds the value;
   also from the PATCH's response ("ack");
2. the agent's VmRSS / VmHWM after the changes, and what the imports alone cost;
3. idle CPU (utime+stime) over a steady window and the node-state status writes and Events the
   agent made in it (a watch on the node state counts every write).

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
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

from overcommit.api.policy import GROUP, VERSION
from overcommit.cli import build_parser
from overcommit.demo.run import Demo, simulated_host
from overcommit.localcluster.controlplane import ControlPlane
from overcommit.localcluster.processes import stop_process

JSON = dict[str, Any]
POLICIES = f"/apis/{GROUP}/{VERSION}/memoryovercommitpolicies"
NODE_STATES = f"/apis/{GROUP}/{VERSION}/memoryovercommitnodestates"
KSM_FILE = "sys/kernel/mm/ksm/pages_to_scan"
POLICY = "bench-agent"
FIRST_PAGES = 1000
FILE_POLL_S = 0.005
WAIT_S = 60.0
TARGETS = {"p95_latency_s": 2.0, "rss_mib": 64.0, "idle_cpu_percent": 0.5}


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


@dataclass
class AgentRun:
    proc: subprocess.Popen[bytes]
    stop_s: float = 0.0  # SIGTERM to exit: a DaemonSet rollout waits this long per node


@contextlib.contextmanager
def agent_process(demo: Demo, flags: Sequence[str]) -> Iterator[AgentRun]:
    argv = [sys.executable, "-m", "overcommit.cli", "agent", "--node-name", demo.node,
            "--kubeconfig", str(demo.agent_kubeconfig()), "--host-root", str(demo.host_root),
            "--state-dir", str(demo.state_dir), *flags]
    with (demo.work / "agent.log").open("ab") as log:
        run = AgentRun(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
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


def change_series(api: Api, watch: StateWatch, sysfs: Path,
                  values: Sequence[int]) -> tuple[list[float], list[float]]:
    """(from request start, from ack) latencies, one per pagesToScan value."""
    from_start: list[float] = []
    from_ack: list[float] = []
    for value in values:
        patch = {"spec": {"ksm": {"pagesToScan": value}}}
        start = time.monotonic()
        obj = api.request("PATCH", f"{POLICIES}/{POLICY}", patch, "application/merge-patch+json")
        acked = time.monotonic()
        landed = wait_file(sysfs, str(value))
        from_start.append(landed - start)
        from_ack.append(landed - acked)
        # Let the status write of this change land, so every change starts from a quiet agent.
        wait_generation(watch, int(obj["metadata"]["generation"]))
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
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout.split()[-1]) / 1024


def rss_breakdown() -> dict[str, float]:
    return {name: import_rss_mib(code) for name, code in IMPORT_PROBES.items()}


# -- statistics and output ------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def series_stats(values: Sequence[float]) -> dict[str, float]:
    return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95), "max": max(values)}


def median_stats(runs: Sequence[Sequence[float]]) -> dict[str, float]:
    """Each statistic's median over the repeated series."""
    per_run = [series_stats(run) for run in runs]
    return {key: statistics.median(s[key] for s in per_run) for key in per_run[0]}


def verdicts(result: JSON) -> list[str]:
    checks = [("p95 latency", result["p95_latency_s"], TARGETS["p95_latency_s"], "s"),
              ("agent RSS", result["rss_mib"], TARGETS["rss_mib"], "MiB"),
              ("idle CPU", result["idle_cpu_percent"], TARGETS["idle_cpu_percent"], "%"),
              ("steady status writes", result["steady_status_writes"], 0, "")]
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
    print(f"  {'policy change -> sysfs file':34} {'p50':>8} {'p95':>8} {'max':>8}")
    for label, stats in (("from request start", lat), ("from API acknowledgement", ack)):
        print(f"  {label:34} " + " ".join(f"{stats[k]:7.3f}s" for k in ("p50", "p95", "max")))
    print(f"  {'agent VmRSS / VmHWM':34} {result['rss_mib']:.1f} MiB / {result['hwm_mib']:.1f} MiB")
    print(f"  {'idle CPU (one core)':34} {result['idle_cpu_percent']:.3f}% "
          f"({result['idle_cpu_s']:.2f}s CPU in {result['steady_window_s']:.1f}s; "
          f"schedstat: {result['idle_cpu_percent_schedstat']:.4f}%)")
    print(f"  {'steady status writes / Events':34} {result['steady_status_writes']} / "
          f"{result['steady_events']}")
    print(f"  {'status writes per policy change':34} {result['status_writes_per_change']:g}")
    print(f"  {'agent SIGTERM -> exit':34} {result['agent_stop_s']:.2f}s, exit code "
          f"{result['agent_exit_code']}")
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
    for repeat in range(args.repeat):
        base = FIRST_PAGES + 1 + repeat * args.changes
        from_start, from_ack = change_series(api, watch, sysfs, range(base, base + args.changes))
        series.from_start.append(from_start)
        series.from_ack.append(from_ack)
        series.last_value = base + args.changes - 1
    series.status_writes = watch.writes_between(begin, time.monotonic())
    return series


def measure(cp: ControlPlane, work: Path, args: argparse.Namespace) -> JSON:
    demo = Demo(cp, work, real=False, policy_file=Path(os.devnull))
    simulated_host(demo.host_root)
    demo.install()
    (work / "secrets").mkdir(mode=0o700)
    api = Api(cp.admin_kubeconfig, work / "secrets")
    watch = StateWatch(api, demo.node)
    watch.start()
    flags, interval, status_interval = agent_flags(args)
    sysfs = demo.host_root / KSM_FILE
    try:
        with agent_process(demo, flags) as agent:
            api.request("POST", POLICIES, policy_document(demo.node, FIRST_PAGES))
            wait_file(sysfs, str(FIRST_PAGES))
            wait_generation(watch, 1)
            series = latency_series(api, watch, sysfs, args)
            # The Event follows the status write: wait for it so the steady window starts quiet.
            last = f"->{series.last_value}"
            wait_until(lambda: any(last in m for m in event_messages(api, demo.node)),
                       "the last change's Event")
            rss, hwm = (proc_status_mib(agent.proc.pid, k) for k in ("VmRSS", "VmHWM"))
            steady = steady_window(api, watch, agent.proc.pid, demo.node, args.steady)
            if agent.proc.poll() is not None:
                raise RuntimeError(f"the agent exited with {agent.proc.returncode}")
    except BaseException:
        print((work / "agent.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        watch.stop()
        api.close()
    return {**latency_figures(series), "rss_mib": rss, "hwm_mib": hwm,
            **steady_figures(steady), "changes": args.changes, "repeats": args.repeat,
            "agent_interval_s": interval, "agent_status_interval_s": status_interval,
            "status_writes_per_change": series.status_writes / (args.changes * args.repeat),
            "agent_log_problems": log_problems(work / "agent.log"),
            "agent_exit_code": agent.proc.returncode, "agent_stop_s": agent.stop_s}


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
                        help="10 changes and a 20 s steady window (about a minute in all)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="repeat the latency series N times, report the medians")
    parser.add_argument("--changes", type=int, help="changes per series (default 20, quick 10)")
    parser.add_argument("--steady", type=float, help="steady window in seconds (default 60, "
                        "quick 20)")
    parser.add_argument("--agent-interval", type=float, metavar="S",
                        help="pass --interval S to the agent (default: the shipped default)")
    parser.add_argument("--agent-status-interval", type=float, metavar="S",
                        help="pass --status-interval S to the agent (default: shipped)")
    args = parser.parse_args(argv)
    args.changes = args.changes or (10 if args.quick else 20)
    args.steady = args.steady or (20.0 if args.quick else 60.0)
    if args.repeat < 1 or args.changes < 1:
        parser.error("--repeat and --changes must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="overcommit-bench-agent-") as tmp, \
            ControlPlane() as cp:
        result = measure(cp, Path(tmp), args)
    breakdown = rss_breakdown()
    result["rss_breakdown_mib"] = breakdown
    result["quick"] = args.quick
    print_report(result, breakdown)
    print(json.dumps(rounded(result), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
