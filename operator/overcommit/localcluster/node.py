"""A single-node Kubernetes cluster with a real kubelet, on this machine, for the demo and the
end-to-end tests: ``with LocalCluster() as cluster: cluster.load_image(tag); cluster.kubectl(...)``.

What runs (binaries from ``scripts/install-kube --node``, Debian's containerd, runc and CNI
plugins; docs/local-cluster.md has the full picture):

* in the host's network namespace: etcd on 127.0.0.1 and kube-apiserver on the harness's own
  link address (both through overcommit.localcluster.controlplane.ControlPlane);
* in one network namespace of the harness (``/run/netns/ovc-node``), joined to the host by a
  veth pair: containerd (its own instance: config, socket, root, state and runc root under the
  state directory), kubelet, kube-proxy (iptables mode), kube-controller-manager,
  kube-scheduler and the pods' CNI bridge. Their listening ports, iptables rules, bridge and
  ``net.*`` sysctls are the namespace's own and vanish with it; the host only sees one veth.

Host changes, all undone by ``stop()`` and, after a hard kill, by the next start (or by
``cleanup()``): the network namespace and its veth pair; ``/var/lib/kubelet`` (the standard
kubelet root, so the shipped DaemonSet's hostPath mounts are the ones tested) bind-mounted onto
itself as a shared mount, so the volumes the kubelet mounts there reach containerd; the kubelet's
``/kubepods`` cgroups; the pods' mounts; files the kubelet and containerd create outside their
directories (``/var/log/containers``, ``/var/lib/cni``, shim sockets in ``/run/containerd/s``).
``leftovers()`` lists whatever of it is still there.

The kubelet changes no host sysctl: it would set vm.overcommit_memory, kernel.panic and others
to its liking, so it runs in a private mount namespace where those ``/proc/sys`` files are
bind-mounted copies already holding the values it wants. This machine kind withholds
CAP_SYS_RESOURCE, so containerd clamps pods' oom_score_adj to its own (``restrict_oom_score_adj``)
instead of letting runc fail on the sandbox's -998.

Every daemon is started through ``setpriv --pdeathsig KILL`` from the main thread, so a hard
kill of the harness takes them along; what survives it (the pods' shims and containers, mounts,
cgroups, the namespace) is found and removed by the next start before anything else.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from overcommit.localcluster.controlplane import (
    ControlPlane,
    ControlPlaneError,
    _Process,
    _tail,
    find_binaries,
    find_kubectl,
)

__all__ = [
    "DEFAULT_STATE_DIR",
    "INSTALL_HINT",
    "KUBELET_ROOT",
    "LocalCluster",
    "LocalClusterError",
    "cleanup",
    "find_node_binaries",
    "host_sysctls",
    "image_reference",
    "leftovers",
    "missing_host_tools",
    "sysctl_changes",
]

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "run scripts/install-kube --node (builds kubelet, kube-proxy, kube-controller-manager and "
    "kube-scheduler into the cache) and scripts/bootstrap --apt (containerd, runc, "
    "containernetworking-plugins, iptables, conntrack, iproute2, gcc, libc6-dev), and "
    "scripts/docker-base-image (docker, for the pod images)"
)
DEFAULT_STATE_DIR = Path(os.environ.get("OVERCOMMIT_LOCALCLUSTER_DIR")
                         or "/var/lib/overcommit-localcluster")
KUBELET_ROOT = Path("/var/lib/kubelet")
NETNS_DIR = Path("/run/netns")
NETNS_NAME = "ovc-node"
HOST_LINK = "ovc-host"  # the veth end in the host's namespace
NODE_LINK = "ovc-node"  # its peer in the node's namespace
BRIDGE = "ovc-cni0"  # the pods' bridge, in the node's namespace
DEFAULT_NETWORK = os.environ.get("OVERCOMMIT_LOCALCLUSTER_NETWORK") or "10.77.0.0/16"
API_PORT = 6443  # on the harness's own link address: no collision with loopback test servers
PAUSE_IMAGE = "memory-overcommit/pause:local"
# The sandbox program's source ships with the package (a link to tools/pause in a checkout).
PAUSE_SOURCE = Path(__file__).resolve().parent / "pause"
CNI_BIN_DIR = Path("/usr/lib/cni")
CONTAINERD_NAMESPACE = "k8s.io"  # the one the CRI plugin uses
# containerd's root (content store, image snapshots, metadata) outlives a run, so imported
# images need not be imported again: stop() deletes every container from it first. A run that
# did not stop (hard kill) leaves containers in it, and cleanup() then deletes it all.
IMAGE_CACHE = "containerd-root"
_CACHE_CLEAN = "containerd-root-clean"  # in run/: stop() emptied the cache of containers
_IMAGE_ID_LABEL = "overcommit.localcluster/docker-image-id"
NODE_BINARIES = ("kubelet", "kube-proxy", "kube-controller-manager", "kube-scheduler")
HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables", "ip",
              "nsenter", "unshare", "setpriv", "mount", "gcc", "docker", "openssl")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")

# Files and directories kubelet and containerd create outside the directories they are given
# (hard-coded paths); removed by cleanup() unless they existed before the harness first ran.
HOST_PATHS = (
    KUBELET_ROOT,
    Path("/var/log/containers"),  # kubelet: symlinks to the containers' logs
    Path("/var/log/pods"),
    Path("/var/lib/cni"),  # containerd's CNI library: its results cache
    Path("/run/containerd"),  # containerd's shims: their sockets in /run/containerd/s
    Path("/usr/libexec/kubernetes"),  # kubelet's and controller-manager's default plugin dir
    Path("/etc/cni"),
    Path("/opt/cni"),
    NETNS_DIR,
)
SHIM_SOCKET_DIR = Path("/run/containerd/s")
CNI_RESULTS_DIR = Path("/var/lib/cni/results")
CNI_NETWORK = "overcommit-localcluster"
# Of those, directories others may use too: only our entries in them are removed, and they
# only when empty.
_SHARED_DIRS = (Path("/var/lib/cni"), Path("/run/containerd"), NETNS_DIR)

# kubelet's kernel tunables (pkg/kubelet/cm/container_manager_linux.go setupKernelTunables):
# the values it writes host-wide unless it finds them already there.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
# Counters, not settings: they change by themselves.
_VOLATILE_SYSCTLS = frozenset({"net.netfilter.nf_conntrack_count"})
_OUR_EXECUTABLES = frozenset({
    "containerd", "containerd-shim-runc-v2", "kubelet", "kube-proxy", "kube-controller-manager",
    "kube-scheduler", "kube-apiserver", "etcd", "setpriv", "nsenter", "unshare", "sh", "dash",
    "bash", "ctr",
})  # fmt: skip


class LocalClusterError(RuntimeError):
    """A missing part, a host the cluster cannot run on, or a component that failed."""


# =========================================================================== host inspection


def _run(argv: Sequence[str], *, check: bool = True, input: str | None = None,
         timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except FileNotFoundError as e:
        raise LocalClusterError(f"{argv[0]} is not installed; {INSTALL_HINT}") from e
    if check and proc.returncode != 0:
        raise LocalClusterError(
            f"{' '.join(argv)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc


@dataclasses.dataclass(frozen=True)
class _Mount:
    id: int
    point: Path
    fstype: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts() -> list[_Mount]:
    """This process's mount table (the host's, for the harness)."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        sep = fields.index("-")
        mounts.append(_Mount(int(fields[0]), Path(_unescape(fields[4])), fields[sep + 1]))
    return mounts


def _is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@dataclasses.dataclass(frozen=True)
class _Proc:
    pid: int
    exe: str
    cmdline: str


def _processes() -> Iterator[_Proc]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            exe = os.readlink(entry / "exe").removesuffix(" (deleted)")
        except OSError:  # gone, or a kernel thread
            continue
        yield _Proc(int(entry.name), os.path.basename(exe), cmdline)


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def _our_processes(run_dir: Path) -> list[_Proc]:
    """The harness's daemons and containerd's shims: one of our executables whose command line
    names the run directory (configs, sockets and data all live there)."""
    marker, mine = str(run_dir) + "/", _ancestors()
    return [p for p in _processes()
            if p.exe in _OUR_EXECUTABLES and marker in p.cmdline and p.pid not in mine]


def _foreign_kubelets(run_dir: Path) -> list[_Proc]:
    marker = str(run_dir) + "/"
    return [p for p in _processes() if p.exe == "kubelet" and marker not in p.cmdline]


def _cgroup_mounts() -> list[Path]:
    return [m.point for m in _mounts() if m.fstype in ("cgroup", "cgroup2")]


def _kubepods_cgroups() -> list[Path]:
    """The kubelet's pod cgroups (cgroupfs driver) in every hierarchy."""
    found = []
    for root in _cgroup_mounts():
        for name in ("kubepods", "kubepods.slice"):
            if (root / name).is_dir():
                found.append(root / name)
    return found


def _cgroup_pids(tree: Path) -> set[int]:
    pids: set[int] = set()
    for dirpath, _, _ in os.walk(tree):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
    return pids


def _links() -> list[str]:
    """Network interfaces of this process's namespace."""
    out = _run(["ip", "-o", "link", "show"], check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _iptables_chains() -> list[str]:
    """KUBE-* and CNI-* chains and rules in this namespace's iptables (IPv4 and IPv6); listed
    with *-save, which reads the tables that exist and creates none."""
    found = []
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool) is None:
            continue
        for line in _run([tool], check=False).stdout.splitlines():
            if re.search(r"(^:|-j |-A )(KUBE-|CNI-)", line):
                found.append(f"{tool}: {line}")
    return found


def _pid_start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


# =========================================================================== baseline


@dataclasses.dataclass
class _Baseline:
    """What was on the host before the harness changed anything: what cleanup() must keep."""

    paths: dict[str, bool]  # HOST_PATHS entry -> existed
    kubelet_entries: list[str]  # /var/lib/kubelet's entries, when it existed
    mounts: list[tuple[int, str]]  # (id, mount point) under the watched paths

    @classmethod
    def take(cls, state_dir: Path) -> _Baseline:
        kubelet_entries = sorted(p.name for p in KUBELET_ROOT.iterdir()) \
            if KUBELET_ROOT.is_dir() else []
        return cls(
            paths={str(p): p.exists() for p in HOST_PATHS},
            kubelet_entries=kubelet_entries,
            mounts=[(m.id, str(m.point)) for m in _mounts() if _watched(m.point, state_dir)],
        )

    @classmethod
    def load(cls, state_dir: Path) -> _Baseline | None:
        try:
            data = json.loads((state_dir / "baseline.json").read_text())
            return cls(paths=dict(data["paths"]), kubelet_entries=list(data["kubelet_entries"]),
                       mounts=[(int(i), str(p)) for i, p in data["mounts"]])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, state_dir: Path) -> None:
        path = state_dir / "baseline.json"
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")

    def existed(self, path: Path) -> bool:
        return self.paths.get(str(path), True)  # unknown paths: assume not ours


def _watched(point: Path, state_dir: Path) -> bool:
    return (_is_under(point, state_dir) or _is_under(point, KUBELET_ROOT)
            or point == NETNS_DIR / NETNS_NAME)


def _our_mounts(state_dir: Path, baseline: _Baseline | None) -> list[_Mount]:
    before = set(baseline.mounts) if baseline else set()
    return [m for m in _mounts()
            if _watched(m.point, state_dir) and (m.id, str(m.point)) not in before]


# =========================================================================== cleanup


_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


def _umount(point: Path) -> None:
    if _libc.umount2(os.fsencode(point), 0) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):  # no longer a mount point
        return
    if _libc.umount2(os.fsencode(point), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise LocalClusterError(f"cannot unmount {point}: {os.strerror(err)}")


def _kill_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _remove_tree(path: Path) -> None:
    """rm -rf that refuses to descend into anything still mounted (a pod's subPath bind mount
    of a host directory must never have its contents deleted)."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    mounted = [m.point for m in _mounts() if _is_under(m.point, path)]
    if mounted:
        raise LocalClusterError(f"not removing {path}: still mounted below it: {mounted}")
    shutil.rmtree(path)


def _shim_sockets(run_dir: Path) -> list[Path]:
    """Sockets of our containerd's shims: containerd 1.6 names them
    /run/containerd/s/sha256(<containerd socket>/<namespace>/<task id>)."""
    address = run_dir / "containerd" / "containerd.sock"
    tasks = run_dir / "containerd" / "state" / "io.containerd.runtime.v2.task"
    sockets = []
    for task in tasks.glob("*/*"):
        digest = hashlib.sha256(f"{address}/{task.parent.name}/{task.name}".encode()).hexdigest()
        sockets.append(SHIM_SOCKET_DIR / digest)
    return sockets


def _cni_results(run_dir: Path) -> list[Path]:
    """containerd's CNI library caches each attachment in /var/lib/cni/results as
    <network>-<sandbox id>-<interface>: our network's and our sandboxes' loopback ones."""
    sandboxes = run_dir / "containerd" / "state" / "io.containerd.grpc.v1.cri" / "sandboxes"
    ids = {p.name for p in sandboxes.glob("*")}
    if not CNI_RESULTS_DIR.is_dir():
        return []
    return [p for p in CNI_RESULTS_DIR.iterdir() if p.name.startswith(f"{CNI_NETWORK}-")
            or (p.name.startswith("cni-loopback-") and p.name.split("-")[2] in ids)]


def _wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


class _StateLock:
    """An exclusive flock on ``<state_dir>/lock`` for a cluster's lifetime: a second cluster
    (or a cleanup()) of the same state directory is refused while one runs. The kernel drops
    it when its holder dies, however hard."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "lock"
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock; while another cluster holds it, wait up to ``wait`` seconds for it
        to stop (OVERCOMMIT_LOCALCLUSTER_WAIT sets a default: sessions sharing a machine)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(2)
                    continue
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise LocalClusterError(
                    f"a local cluster of {self.path.parent} is running (process {holder}): "
                    "stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def cleanup(state_dir: Path = DEFAULT_STATE_DIR, *, purge_images: bool = False) -> list[str]:
    """Remove whatever a cluster of ``state_dir`` left on this host (a hard-killed run's
    processes, mounts, cgroups, network namespace, files); what it removed, one line each.
    Refused while a cluster of ``state_dir`` runs (also when nothing is left).
    The imported images stay (in ``<state_dir>/containerd-root``) unless ``purge_images`` or
    the run ended without stop()."""
    lock = _StateLock(state_dir)
    lock.acquire()
    try:
        return _cleanup(state_dir, purge_images=purge_images)
    finally:
        lock.release()


def _cleanup(state_dir: Path, *, purge_images: bool = False) -> list[str]:
    run_dir = state_dir / "run"
    baseline = _Baseline.load(state_dir)
    done = _kill_processes(state_dir, run_dir)
    done += _unmount(state_dir, baseline)
    done += _remove_cgroups()
    done += _remove_network()
    done += _remove_files(state_dir, run_dir, baseline, purge_images)
    return done


def _kill_processes(state_dir: Path, run_dir: Path) -> list[str]:
    """Our daemons and shims, by the run directory in their command lines, then the pods'
    processes, by the kubelet's cgroups: SIGKILL, until none is left."""
    done: list[str] = []
    procs = _our_processes(run_dir)
    pids = {p.pid for p in procs} | _recorded_pids(run_dir)
    if pids:
        done.append("killed " + ", ".join(f"{p.exe}[{p.pid}]" for p in procs)
                    + "".join(f", pid {pid}" for pid in pids - {p.pid for p in procs}))
    _kill_all(pids, signal.SIGKILL)
    _wait_until(lambda: not _our_processes(run_dir), 10)
    killed: set[int] = set()
    for _ in range(100):
        pids = set().union(*(_cgroup_pids(c) for c in _kubepods_cgroups()))
        if not pids:
            break
        killed |= pids
        _kill_all(pids, signal.SIGKILL)
        time.sleep(0.05)
    if killed:
        done.append(f"killed {len(killed)} pod processes")
    _save_logs(state_dir)
    return done


def _unmount(state_dir: Path, baseline: _Baseline | None) -> list[str]:
    """Mounts: the pods' volumes, rootfs, netns and shm, the shared /var/lib/kubelet, the node's
    namespace; deepest first, again while unmounting one uncovers another."""
    done: list[str] = []
    for _ in range(10):
        mounts = _our_mounts(state_dir, baseline)
        if not mounts:
            break
        for m in sorted(mounts, key=lambda m: (len(m.point.parts), m.id), reverse=True):
            _umount(m.point)
        done.append(f"unmounted {len(mounts)} mounts")
    return done


def _remove_cgroups() -> list[str]:
    """The kubelet's cgroups, deepest first (a cgroup goes once its processes are reaped)."""
    done: list[str] = []
    for tree in _kubepods_cgroups():
        def remove(tree: Path = tree) -> bool:
            for dirpath, _, _ in os.walk(tree, topdown=False):
                with contextlib.suppress(FileNotFoundError, OSError):
                    os.rmdir(dirpath)
            return not tree.exists()

        if not _wait_until(remove, 10, 0.1):
            raise LocalClusterError(f"cannot remove cgroup {tree}: {_cgroup_pids(tree)} in it")
        done.append(f"removed cgroup {tree}")
    return done


def _remove_network() -> list[str]:
    """The network: the veth pair (deleting one end deletes both), then the namespace."""
    done: list[str] = []
    if HOST_LINK in _links():
        _run(["ip", "link", "delete", HOST_LINK])
        done.append(f"deleted link {HOST_LINK}")
    netns = NETNS_DIR / NETNS_NAME
    if netns.exists():
        _umount(netns)
        netns.unlink()
        done.append(f"deleted network namespace {netns}")
    return done


def _remove_files(state_dir: Path, run_dir: Path, baseline: _Baseline | None,
                  purge_images: bool) -> list[str]:
    """Files: the shims' sockets, the run directory, and what kubelet and containerd made
    outside it (unless it was there before the harness first ran)."""
    done: list[str] = []
    for sock in _shim_sockets(run_dir):
        if sock.exists() or sock.is_symlink():
            sock.unlink()
            done.append(f"removed shim socket {sock}")
    for result in _cni_results(run_dir):
        result.unlink()
        done.append(f"removed CNI result {result}")
    cache = state_dir / IMAGE_CACHE
    if cache.exists() and (purge_images or (run_dir.exists()
                                            and not (run_dir / _CACHE_CLEAN).exists())):
        _remove_tree(cache)  # may hold a killed run's containers: start afresh
        done.append(f"removed {cache}")
    if run_dir.exists():
        _remove_tree(run_dir)
        done.append(f"removed {run_dir}")
    if baseline is not None:
        done += _remove_host_paths(baseline)
    return done


def _remove_host_paths(baseline: _Baseline) -> list[str]:
    """What kubelet and containerd made outside the state directory, unless it was there
    before the harness first ran."""
    done: list[str] = []
    for path in HOST_PATHS:
        if path == KUBELET_ROOT and baseline.existed(path):
            for entry in sorted(KUBELET_ROOT.iterdir()) if path.is_dir() else []:
                if entry.name not in baseline.kubelet_entries:
                    _remove_tree(entry)
                    done.append(f"removed {entry}")
        elif path in _SHARED_DIRS and not baseline.existed(path) and path.is_dir():
            for dirpath, _, _ in os.walk(path, topdown=False):
                with contextlib.suppress(OSError):  # not empty: someone else's too
                    os.rmdir(dirpath)
            if not path.exists():
                done.append(f"removed {path}")
        elif not baseline.existed(path) and (path.exists() or path.is_symlink()):
            _remove_tree(path)
            done.append(f"removed {path}")
    return done


def _recorded_pids(run_dir: Path) -> set[int]:
    """The pids the harness recorded that still run the process it started (same start
    time: a recycled pid is someone else's)."""
    try:
        recorded = json.loads((run_dir / "pids.json").read_text())
    except (OSError, ValueError):
        return set()
    return {int(r["pid"]) for r in recorded.values()
            if r.get("start") is not None and _pid_start_time(int(r["pid"])) == r["start"]}


def _save_logs(state_dir: Path) -> None:
    """The control plane's logs (in its directory under run/) next to the node's, in logs/."""
    logs = state_dir / "logs"
    for found in (state_dir / "run").glob("overcommit-cp-*/*.log"):
        with contextlib.suppress(OSError):
            logs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found, logs / found.name)


def leftovers(state_dir: Path = DEFAULT_STATE_DIR) -> list[str]:
    """Everything of a cluster of ``state_dir`` still on this host, one line each: processes,
    mounts, the network namespace, interfaces, cgroups, iptables chains in the host's
    namespace, files. Empty once the cluster stopped (or cleanup() ran)."""
    run_dir = state_dir / "run"
    baseline = _Baseline.load(state_dir)
    found = [f"process {p.exe}[{p.pid}]: {p.cmdline[:200]}" for p in _our_processes(run_dir)]
    found += _cgroups_left()
    found += [f"mount {m.point} ({m.fstype})" for m in _our_mounts(state_dir, baseline)]
    found += _network_left()
    found += [f"shim socket {s}" for s in _shim_sockets(run_dir) if s.exists()]
    found += [f"CNI result {r}" for r in _cni_results(run_dir)]
    if run_dir.exists():
        found.append(f"directory {run_dir}")
    if baseline is not None:
        found += _host_paths_left(baseline)
    return found


def _cgroups_left() -> list[str]:
    """The pods' cgroup trees and every process still in them."""
    trees = _kubepods_cgroups()
    found = [f"cgroup {tree}" for tree in trees]
    for pid in sorted(set().union(*(_cgroup_pids(tree) for tree in trees))):
        with contextlib.suppress(OSError):
            found.append(f"pod process {pid}: "
                         + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                         .decode(errors="replace")[:200])
    return found


def _network_left() -> list[str]:
    """The node's network namespace, our interfaces and iptables chains in the host's."""
    found = []
    if (NETNS_DIR / NETNS_NAME).exists():
        found.append(f"network namespace {NETNS_DIR / NETNS_NAME}")
    found += [f"interface {name}" for name in _links() if name in (HOST_LINK, NODE_LINK, BRIDGE)]
    found += [f"iptables in the host's namespace: {line}" for line in _iptables_chains()]
    return found


def _host_paths_left(baseline: _Baseline) -> list[str]:
    """Host paths the node created (or kubelet-root entries it added) that are still there."""
    found: list[str] = []
    for path in HOST_PATHS:
        if path == KUBELET_ROOT and baseline.existed(path):
            found += [f"file {e}" for e in sorted(path.iterdir()) if path.is_dir()
                      and e.name not in baseline.kubelet_entries]
        elif path in _SHARED_DIRS:
            continue  # our entries in them are listed above
        elif not baseline.existed(path) and (path.exists() or path.is_symlink()):
            found.append(f"file {path}")
    return found


# =========================================================================== sysctls


def host_sysctls() -> dict[str, str]:
    """The sysctls a node could change on this host: the kubelet's kernel tunables and every
    ``net.*`` of the calling process's network namespace (counters left out)."""
    values: dict[str, str] = {}
    for name in KUBELET_SYSCTLS:
        values[name.replace("/", ".")] = Path("/proc/sys", name).read_text().strip()
    root = Path("/proc/sys/net")
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            key = ".".join(path.relative_to("/proc/sys").parts)
            if key in _VOLATILE_SYSCTLS:
                continue
            with contextlib.suppress(OSError):
                values[key] = " ".join(path.read_text().split())
    return values


_PER_INTERFACE = re.compile(r"^net\.ipv[46]\.(conf|neigh)\.([^.]+)\.")


def sysctl_changes(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Keys whose values differ, as (before, after) ("<absent>" for a missing key). Keys of
    network interfaces that exist in only one snapshot are left out: interfaces come and go
    (docker's veths); the harness's own are reported by leftovers()."""
    changes = {}
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key, "<absent>"), after.get(key, "<absent>")
        if old == new:
            continue
        m = _PER_INTERFACE.match(key)
        if m and m.group(2) not in ("all", "default") and (key not in before
                                                           or key not in after):
            continue
        changes[key] = (old, new)
    return changes


# =========================================================================== parts


def find_node_binaries() -> dict[str, Path]:
    """kube-apiserver, etcd and the node's four binaries, all from one directory (see
    overcommit.localcluster.controlplane.find_binaries for where it is looked for)."""
    try:
        apiserver, etcd = find_binaries()
    except ControlPlaneError as e:
        raise LocalClusterError(f"{e}; for the node: {INSTALL_HINT}") from e
    found = {"kube-apiserver": apiserver, "etcd": etcd}
    missing = []
    for name in NODE_BINARIES:
        path = apiserver.parent / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            missing.append(name)
        found[name] = path
    if missing:
        raise LocalClusterError(
            f"missing node binaries in {apiserver.parent}: {', '.join(missing)}; {INSTALL_HINT}"
        )
    return found


def missing_host_tools() -> list[str]:
    """Commands and CNI plugins the node needs that this host lacks."""
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    missing += [f"CNI plugin {CNI_BIN_DIR / p}" for p in CNI_PLUGINS
                if not (CNI_BIN_DIR / p).exists()]
    return missing


def image_reference(tag: str) -> str:
    """The name containerd (and so a pod's ``image:``) knows a docker tag by:
    ``memory-overcommit:0.1.0`` -> ``docker.io/library/memory-overcommit:0.1.0``."""
    name = tag if ":" in tag.rsplit("/", 1)[-1] or "@" in tag else f"{tag}:latest"
    first = name.split("/", 1)[0]
    if "/" not in name:
        return f"docker.io/library/{name}"
    if "." in first or ":" in first or first == "localhost":
        return name
    return f"docker.io/{name}"


# =========================================================================== the cluster

_LIVE: set[LocalCluster] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        clusters = list(_LIVE)
    for cluster in clusters:
        with contextlib.suppress(Exception):
            cluster.stop()


class LocalCluster:
    """One node: containerd, kubelet, kube-proxy, kube-controller-manager, kube-scheduler in a
    network namespace of the harness; etcd and kube-apiserver in the host's (see the module
    docstring). Needs root. One at a time per host (the kubelet root is /var/lib/kubelet)."""

    def __init__(
        self,
        *,
        state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR,
        node_name: str | None = None,
        network: str = DEFAULT_NETWORK,
        startup_timeout: float = 120.0,
        verbose: bool = False,
        lock_wait: float | None = None,
    ) -> None:
        """Nothing happens until start().

        state_dir: configs, data, sockets (``run/``, removed by stop()), the last run's logs
            (``logs/``) and what the host had before the first start (``baseline.json``).
        node_name: the Node's name (default: this host's name).
        network: an IPv4 range (a /22 or larger; default 10.77.0.0/16) nothing on this host
            uses: its first /30 links the host (.1, kube-apiserver) and the node (.2, the
            node's InternalIP); the next two /24s are the pods' and the Services' ranges.
        verbose: print each phase's duration to stderr (it is logged at INFO anyway).
        lock_wait: how long start() waits for another cluster of this state directory to stop
            (default: $OVERCOMMIT_LOCALCLUSTER_WAIT, else 0: refuse at once).
        """
        self.state_dir = Path(state_dir).resolve()
        self.run_dir = self.state_dir / "run"
        self.logs_dir = self.state_dir / "logs"
        self.node_name = node_name or _default_node_name()
        net = ipaddress.IPv4Network(network)
        if net.prefixlen > 22:
            raise LocalClusterError(f"network {network} is too small: give a /22 or larger")
        subnets = list(net.subnets(new_prefix=24))
        link = next(subnets[0].subnets(new_prefix=30))
        hosts = list(link.hosts())
        self.network = net
        self.link = link
        self.host_address, self.node_address = str(hosts[0]), str(hosts[1])
        self.pod_cidr, self.service_cidr = str(subnets[1]), str(subnets[2])
        self.startup_timeout = startup_timeout
        self.verbose = verbose
        self.lock_wait = lock_wait if lock_wait is not None else float(
            os.environ.get("OVERCOMMIT_LOCALCLUSTER_WAIT") or 0)
        self.timings: dict[str, float] = {}
        self.cleaned_up: list[str] = []  # what start() found left by an earlier run
        self._lock = threading.RLock()
        self._cp: ControlPlane | None = None
        self._procs: dict[str, _Process] = {}
        self._images_thread: threading.Thread | None = None
        self._images_error: BaseException | None = None
        self._probe_cert: tuple[Path, Path] | None = None
        self._binaries: dict[str, Path] = {}
        self._kubeconfigs: dict[str, Path] = {}
        self._started = False  # by this object: only then may stop() clean up
        self._lock_file = _StateLock(self.state_dir)

    # ---------------------------------------------------------------- properties

    @property
    def control_plane(self) -> ControlPlane:
        if self._cp is None:
            raise LocalClusterError("the cluster is not started")
        return self._cp

    @property
    def api_url(self) -> str:
        return self.control_plane.url

    @property
    def admin_kubeconfig(self) -> Path:
        return self.control_plane.admin_kubeconfig

    @property
    def ca_file(self) -> Path:
        return self.control_plane.ca_file

    @property
    def kubernetes_service_ip(self) -> str:
        return str(next(ipaddress.IPv4Network(self.service_cidr).hosts()))

    @property
    def netns(self) -> Path:
        """The node's network namespace (``nsenter --net=<this>`` or ``ip netns exec ovc-node``)."""
        return NETNS_DIR / NETNS_NAME

    @property
    def containerd_socket(self) -> Path:
        return self.run_dir / "containerd" / "containerd.sock"

    @property
    def running(self) -> bool:
        return self._cp is not None and self._cp.running and all(
            p.alive() for p in self._procs.values())

    def log_file(self, component: str) -> Path:
        """The log of a component: containerd, kubelet, kube-proxy, kube-controller-manager,
        kube-scheduler (etcd's and kube-apiserver's are copied here when the cluster stops)."""
        return self.logs_dir / f"{component}.log"

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> Self:
        """Clean up after an earlier run, then start everything and wait for the Node to be
        Ready and the default ServiceAccount to exist. Idempotent."""
        with self._lock:
            if self._cp is not None:
                return self
            self.timings = {}
            started = time.monotonic()
            with self._phase("checks"):
                self._check_host()
                self._lock_file.acquire(self.lock_wait)
            with self._phase("cleanup of earlier runs"):
                try:
                    self.cleaned_up = _cleanup(self.state_dir)
                    if left := leftovers(self.state_dir):
                        raise LocalClusterError("cannot clean up after an earlier run: "
                                                + "; ".join(left))
                except BaseException:
                    self._lock_file.release()
                    raise
                for line in self.cleaned_up:
                    log.warning("cleaned up after an earlier run: %s", line)
            with _LIVE_LOCK:
                _LIVE.add(self)
            self._started = True
            try:
                self._start(started)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.stop()
                raise
            return self

    def stop(self) -> None:
        """Stop everything (clients before the API server; SIGTERM, then SIGKILL) and undo every
        host change. Raises if anything is left behind (see leftovers())."""
        with self._lock:
            if not self._started:
                return
            started = time.monotonic()
            try:
                self._stop()
            finally:  # what failed is the next start's (or cleanup()'s) to finish
                with _LIVE_LOCK:
                    _LIVE.discard(self)
                self._started = False
                self._lock_file.release()
            self._say(f"stopped in {time.monotonic() - started:.1f} s")
            if left := leftovers(self.state_dir):
                raise LocalClusterError("left behind after stop: " + "; ".join(left))

    def _stop(self) -> None:
        if self._images_thread is not None:
            self._images_thread.join(timeout=120)
            self._images_thread = None
        if self._procs or self._cp is not None:
            with self._phase("stop node components"):
                self._stop_procs("kube-proxy", "kubelet", "kube-scheduler",
                                 "kube-controller-manager")
            with self._phase("stop pods"):
                self._stop_pods()
                self._delete_containers()
            with self._phase("stop containerd"):
                self._stop_procs("containerd")
            if self._cp is not None:
                with self._phase("stop kube-apiserver + etcd"):
                    self._cp.stop()
                self._cp = None
        with self._phase("undo host changes"):
            _cleanup(self.state_dir)

    # ---------------------------------------------------------------- helpers for tests

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """kubectl (see overcommit.localcluster.find_kubectl) as the cluster's admin; its discovery
        cache stays in the run directory, not in ~/.kube."""
        try:
            kubectl = find_kubectl()
        except ControlPlaneError as e:
            raise LocalClusterError(str(e)) from e
        argv = [str(kubectl), "--kubeconfig", str(self.admin_kubeconfig),
                "--cache-dir", str(self.run_dir / "kubectl-cache"), *args]
        proc = subprocess.run(argv, input=input, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise LocalClusterError(
                f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def node_exec(self, *argv: str, check: bool = True, input: str | None = None,
                  timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a command in the node's network namespace (where pods and Services are
        reachable), in the host's mount namespace."""
        return _run(["nsenter", f"--net={self.netns}", "--", *argv], check=check, input=input,
                    timeout=timeout)

    def ctr(self, *args: str, check: bool = True,
            timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """containerd's ctr against the cluster's containerd, in the CRI's namespace."""
        return _run(["ctr", "--address", str(self.containerd_socket), "--namespace",
                     CONTAINERD_NAMESPACE, *args], check=check, timeout=timeout)

    def load_image(self, tag: str) -> str:
        """Copy a docker image into the cluster's containerd (``docker save | ctr images
        import``), so pods with ``imagePullPolicy: IfNotPresent`` or ``Never`` run it. Returns
        the name containerd knows it by (see image_reference)."""
        if not self.containerd_socket.exists():
            raise LocalClusterError("the cluster's containerd is not running")
        return _import_image(tag, self.containerd_socket)

    # ---------------------------------------------------------------- start

    def _say(self, message: str) -> None:
        log.info("%s", message)
        if self.verbose:
            print(f"localcluster: {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.timings[name] = seconds = time.monotonic() - started
        self._say(f"{name}: {seconds:.2f} s")

    def _check_host(self) -> None:
        if os.geteuid() != 0:
            raise LocalClusterError("the local cluster needs root (mounts, namespaces, cgroups)")
        if missing := missing_host_tools():
            raise LocalClusterError(f"missing on this host: {', '.join(missing)}; {INSTALL_HINT}")
        self._binaries = find_node_binaries()
        if not any(p.name in ("memory", "cpu") for p in _cgroup_mounts()) and not Path(
                "/sys/fs/cgroup/cgroup.controllers").exists():
            raise LocalClusterError("no cgroup hierarchy mounted under /sys/fs/cgroup")
        if foreign := _foreign_kubelets(self.run_dir):
            raise LocalClusterError(
                f"another kubelet runs on this host and owns {KUBELET_ROOT}: "
                + "; ".join(f"pid {p.pid}: {p.cmdline[:200]}" for p in foreign)
                + "; stop it first (the local cluster needs the standard kubelet root)"
            )
        self._check_network_free()

    def _check_network_free(self) -> None:
        """Nothing on the host may use the harness's range (but a default route)."""
        for line in _run(["ip", "-o", "-4", "addr", "show"]).stdout.splitlines():
            fields = line.split()
            if fields[1] == HOST_LINK:
                continue  # ours, from a hard-killed run: cleanup() removes it
            address = ipaddress.IPv4Interface(fields[3])
            if address.network.overlaps(self.network):
                raise LocalClusterError(
                    f"{fields[1]} has {address}, inside the local cluster's network "
                    f"{self.network}: pick another (LocalCluster(network=...) or "
                    f"OVERCOMMIT_LOCALCLUSTER_NETWORK)")
        for line in _run(["ip", "-4", "route", "show"]).stdout.splitlines():
            dst = line.split()[0]
            if dst == "default" or f"dev {HOST_LINK}" in line:
                continue
            with contextlib.suppress(ValueError):
                if ipaddress.IPv4Network(dst, strict=False).overlaps(self.network):
                    raise LocalClusterError(
                        f"route '{line}' overlaps the local cluster's network {self.network}: "
                        "pick another (LocalCluster(network=...))")

    def _start(self, started: float) -> None:
        with self._phase("configs"):
            self.state_dir.mkdir(parents=True, exist_ok=True)
            _Baseline.take(self.state_dir).save(self.state_dir)
            if self.logs_dir.exists():  # the previous run's, kept once more
                shutil.rmtree(self.state_dir / "logs.previous", ignore_errors=True)
                self.logs_dir.rename(self.state_dir / "logs.previous")
            for d in (self.run_dir, self.logs_dir):
                d.mkdir(parents=True, exist_ok=True)
            self._write_static_configs()
        with self._phase("network namespace + veth"):
            self._setup_network()
        with self._phase("containerd"):
            self._start_containerd()
        self._images_thread = threading.Thread(target=self._prepare_images,
                                               name="localcluster-images", daemon=True)
        self._images_thread.start()
        with self._phase("etcd + kube-apiserver"):
            self._cp = ControlPlane(
                kube_apiserver=self._binaries["kube-apiserver"], etcd=self._binaries["etcd"],
                base_dir=self.run_dir, startup_timeout=self.startup_timeout, keep_dir=True,
                address=self.host_address, port=API_PORT, service_cidr=self.service_cidr,
                kubelet_client=True,
            )
            try:
                self._cp.start()
            except ControlPlaneError as e:
                raise LocalClusterError(str(e)) from e
        with self._phase("credentials + configs"):
            self._write_component_configs()
        with self._phase("controllers, kubelet, kube-proxy started"):
            self._start_components()
        with self._phase("node Ready"):
            self._wait("node Ready", self._node_ready)
        with self._phase("default ServiceAccount"):
            self._wait("the default ServiceAccount and kube-root-ca.crt",
                       self._default_service_account)
        with self._phase("images"):
            self._images_thread.join()
            self._images_thread = None
            if self._images_error is not None:
                raise LocalClusterError(f"pause image: {self._images_error}")
        self.timings["total"] = total = time.monotonic() - started
        self._say(f"node {self.node_name} Ready, API {self.api_url}, up in {total:.1f} s; "
                  f"KUBECONFIG={self.admin_kubeconfig}")

    # --- host network

    def _setup_network(self) -> None:
        netns = self.netns
        NETNS_DIR.mkdir(mode=0o755, exist_ok=True)
        netns.touch()
        _run(["unshare", f"--net={netns}", "true"])  # a namespace kept by a bind mount
        _run(["ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", NODE_LINK,
              "netns", NETNS_NAME])
        prefix = self.link.prefixlen
        _run(["ip", "addr", "add", f"{self.host_address}/{prefix}", "dev", HOST_LINK])
        _run(["ip", "link", "set", HOST_LINK, "up"])
        # Pods and Services are reachable from the host through the node (a route that goes
        # with the veth); nothing is forwarded the other way, the host does not route.
        _run(["ip", "route", "add", str(self.network), "via", self.node_address,
              "dev", HOST_LINK])
        inside = ["ip", "-n", NETNS_NAME]
        _run([*inside, "link", "set", "lo", "up"])
        _run([*inside, "addr", "add", f"{self.node_address}/{prefix}", "dev", NODE_LINK])
        _run([*inside, "link", "set", NODE_LINK, "up"])
        # No default route in the node: nothing of it may leave through the host. The Service
        # range needs a route for hostNetwork pods' connections to reach kube-proxy's DNAT;
        # on-link, so an address with no Service behind it is unreachable, not bounced.
        _run([*inside, "route", "add", self.service_cidr, "dev", NODE_LINK])
        # The node routes between its pods' bridge and the link (its own namespace's setting).
        _run(["nsenter", f"--net={netns}", "--", "sh", "-c",
              "echo 1 > /proc/sys/net/ipv4/ip_forward"])

    # --- configs

    def _write_static_configs(self) -> None:
        run = self.run_dir
        runc = shutil.which("runc") or "runc"
        for d in ("containerd", "cni/net.d", "cni/ipam", "kubelet/pki", "kubelet/plugins",
                  "pod-logs", "sysctl-shadow", "certs"):
            (run / d).mkdir(parents=True, exist_ok=True)
        _write(run / "containerd" / "config.toml", f"""\
# The local cluster's own containerd (Debian's 1.6), beside any other: its own socket, root,
# state and runc root, all under {run}.
version = 2
root = "{self.state_dir / IMAGE_CACHE}"
state = "{run}/containerd/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{run}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image_reference(PAUSE_IMAGE)}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # Pod network namespaces under the state directory, not /run/netns.
  netns_mounts_under_state_dir = true
  # These machines withhold CAP_SYS_RESOURCE from every process, so none may lower an
  # oom_score_adj below 0 and runc fails on the sandbox's -998 ("can't get final child's PID
  # from pipe: EOF"): clamp containers' scores to containerd's own (0) instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{run}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{run}/cni/net.d"
    max_conf_num = 1
""")
        _write(run / "cni" / "net.d" / "10-overcommit-localcluster.conflist", json.dumps({
            "cniVersion": "1.0.0",
            "name": CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    # Pods reach the API server on the host's side of the link as the node.
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(run / "cni" / "ipam"),
                        "ranges": [[{"subnet": self.pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }, indent=1))
        for name, value in KUBELET_SYSCTLS.items():
            _write(run / "sysctl-shadow" / name.replace("/", "."), value + "\n")

    def _write_component_configs(self) -> None:
        cp, run = self.control_plane, self.run_dir
        self._probe_cert = cp.issue_certificate("localcluster-probe", "overcommit-localcluster",
                                                ["system:masters"])
        serving = cp.issue_certificate("kubelet-serving", f"system:node:{self.node_name}",
                                       server_names=[self.node_address, self.node_name])
        self._kubeconfigs = {
            "kubelet": cp.kubeconfig_for_user(f"system:node:{self.node_name}", ["system:nodes"],
                                              filename="kubelet.kubeconfig"),
            "kube-proxy": cp.kubeconfig_for_user("system:kube-proxy",
                                                 filename="kube-proxy.kubeconfig"),
            "kube-controller-manager": cp.kubeconfig_for_user(
                "system:kube-controller-manager", filename="kube-controller-manager.kubeconfig"),
            "kube-scheduler": cp.kubeconfig_for_user("system:kube-scheduler",
                                                     filename="kube-scheduler.kubeconfig"),
        }
        _write(run / "kubelet" / "config.json", json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.node_address,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "tlsCertFile": str(serving[0]),
            "tlsPrivateKeyFile": str(serving[1]),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(cp.ca_file)}},
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",  # no systemd; matches containerd's SystemdCgroup=false
            "failCgroupV1": False,  # these machines are cgroup v1; 1.34 still allows it
            "failSwapOn": False,  # other tests turn swap on
            "protectKernelDefaults": False,  # it finds its values in the shadowed sysctls
            "podLogsDir": str(run / "pod-logs"),
            "volumePluginDir": str(run / "kubelet" / "plugins"),
            "clusterDomain": "cluster.local",
            "resolvConf": "/etc/resolv.conf",
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "registerNode": True,
            "syncFrequency": "10s",
            "nodeStatusUpdateFrequency": "5s",
            # Never garbage-collect the images the harness imported (nothing can be pulled).
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            # The disk is shared with other jobs: evict on nearly-full only.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        }, indent=1))
        _write(run / "kube-proxy.json", json.dumps({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self._kubeconfigs["kube-proxy"])},
            "hostnameOverride": self.node_name,
            "mode": "iptables",
            "clusterCIDR": self.pod_cidr,
            "bindAddress": "0.0.0.0",  # a specific one is taken for the node's IP
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            "nodePortAddresses": ["primary"],
            # else it sets net.ipv4.conf.all.route_localnet=1 (in the node's namespace, but no
            # need for it)
            "iptables": {"localhostNodePorts": False, "syncPeriod": "30s",
                         "minSyncPeriod": "1s"},
            # zeros: leave conntrack's sysctls alone (nf_conntrack_max is host-wide)
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
        }, indent=1))

    # --- processes

    def _in_node(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net={self.netns}", "--", *argv]

    def _start_process(self, name: str, argv: Sequence[str]) -> _Process:
        proc = _Process(name, argv, self.log_file(name))
        proc.start()
        self._procs[name] = proc
        self._record_pids()
        return proc

    def _record_pids(self) -> None:
        pids = {name: {"pid": p.pid, "start": _pid_start_time(p.pid)}
                for name, p in self._procs.items() if p.pid is not None}
        if self._cp is not None:
            for name, pid in (("etcd", self._cp.etcd_pid), ("kube-apiserver",
                                                            self._cp.apiserver_pid)):
                if pid is not None:
                    pids[name] = {"pid": pid, "start": _pid_start_time(pid)}
        _write(self.run_dir / "pids.json", json.dumps(pids, indent=1))

    def _start_containerd(self) -> None:
        proc = self._start_process("containerd", self._in_node(
            "containerd", "--config", str(self.run_dir / "containerd" / "config.toml")))

        def ready() -> bool:
            return self.containerd_socket.exists() and self.ctr("version", check=False,
                                                                timeout=5).returncode == 0

        self._wait("containerd", ready, procs=[proc])

    def _start_components(self) -> None:
        b, run, cp, kc = self._binaries, self.run_dir, self.control_plane, self._kubeconfigs
        self._record_pids()  # etcd and kube-apiserver
        common = ["--v=1", "--profiling=false"]
        self._start_process("kube-controller-manager", self._in_node(
            str(b["kube-controller-manager"]),
            f"--kubeconfig={kc['kube-controller-manager']}",
            f"--authentication-kubeconfig={kc['kube-controller-manager']}",
            f"--authorization-kubeconfig={kc['kube-controller-manager']}",
            "--bind-address=127.0.0.1", "--secure-port=10257", f"--cert-dir={run / 'certs'}",
            "--leader-elect=false", "--use-service-account-credentials=true",
            # Its client's default rate limit (20/s) spaces the controllers' starts ~0.15 s
            # apart: ~5 s until the ServiceAccount controller runs. A single node needs no limit.
            "--kube-api-qps=200", "--kube-api-burst=400",
            f"--root-ca-file={cp.ca_file}", f"--service-cluster-ip-range={self.service_cidr}",
            # else it creates /usr/libexec/kubernetes/kubelet-plugins/volume/exec
            f"--flex-volume-plugin-dir={run / 'kubelet' / 'plugins'}",
            *common,
        ))  # fmt: skip
        self._start_process("kube-scheduler", self._in_node(
            str(b["kube-scheduler"]),
            f"--kubeconfig={kc['kube-scheduler']}",
            f"--authentication-kubeconfig={kc['kube-scheduler']}",
            f"--authorization-kubeconfig={kc['kube-scheduler']}",
            "--bind-address=127.0.0.1", "--secure-port=10259", f"--cert-dir={run / 'certs'}",
            "--leader-elect=false", *common,
        ))  # fmt: skip
        # The kubelet: in a private mount namespace whose /proc/sys files for its kernel
        # tunables are bind-mounted copies holding the values it wants, so it writes none of the
        # host's. /proc is made private there first (no shadow may propagate to the host);
        # /var/lib/kubelet stays shared, so its volume mounts reach the host's namespace, where
        # containerd and the pods' containers see them.
        self._share_kubelet_root()
        shadows = " ".join(f'mount --bind "$0/{n.replace("/", ".")}" /proc/sys/{n};'
                           for n in KUBELET_SYSCTLS)
        script = f'set -e; mount --make-rprivate /proc; {shadows} exec "$@"'
        self._start_process("kubelet", self._in_node(
            "unshare", "--mount", "--propagation", "unchanged", "--",
            "/bin/sh", "-c", script, str(run / "sysctl-shadow"),
            str(b["kubelet"]),
            f"--config={run / 'kubelet' / 'config.json'}",
            f"--kubeconfig={kc['kubelet']}",
            f"--root-dir={KUBELET_ROOT}",
            f"--cert-dir={run / 'kubelet' / 'pki'}",
            f"--hostname-override={self.node_name}",
            f"--node-ip={self.node_address}",
            "--v=1",
        ))  # fmt: skip
        self._start_process("kube-proxy", self._in_node(
            str(b["kube-proxy"]), f"--config={run / 'kube-proxy.json'}", "--v=1"))

    def _share_kubelet_root(self) -> None:
        KUBELET_ROOT.mkdir(parents=True, exist_ok=True)
        _run(["mount", "--bind", str(KUBELET_ROOT), str(KUBELET_ROOT)])
        _run(["mount", "--make-rshared", str(KUBELET_ROOT)])

    def _stop_procs(self, *names: str) -> None:
        procs = [(n, self._procs.pop(n)) for n in names if n in self._procs]
        for _, proc in procs:  # all at once: each exits in well under a second
            if proc.alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in procs:
            proc.stop(grace=10)

    def _stop_pods(self, grace: float = 5.0) -> None:
        """SIGTERM to every container process (the kubelet is gone: nothing restarts them),
        SIGKILL to what is left after ``grace``; cleanup() then removes their shims."""
        def pids() -> set[int]:
            return set().union(*(_cgroup_pids(c) for c in _kubepods_cgroups()))

        _kill_all(pids(), signal.SIGTERM)
        if not _wait_until(lambda: not pids(), grace, 0.1):
            _kill_all(pids(), signal.SIGKILL)

    def _delete_containers(self) -> None:
        """Delete the (stopped) tasks and every container from containerd, which then ends
        their shims and leaves only images in its root, kept for the next run."""
        if "containerd" not in self._procs or not self._procs["containerd"].alive():
            return
        if tasks := self.ctr("tasks", "ls", "--quiet", check=False).stdout.split():
            self.ctr("tasks", "delete", "--force", *tasks, check=False)
        if containers := self.ctr("containers", "ls", "--quiet", check=False).stdout.split():
            self.ctr("containers", "delete", *containers, check=False)
        listed = self.ctr("containers", "ls", "--quiet", check=False)
        if listed.returncode == 0 and not listed.stdout.split():
            (self.run_dir / _CACHE_CLEAN).touch()

    # --- images

    def _prepare_images(self) -> None:
        try:
            _build_pause_image()
            _import_image(PAUSE_IMAGE, self.containerd_socket)
        except BaseException as e:  # reported by start()
            self._images_error = e

    # --- readiness

    def _wait(self, what: str, ready: Callable[[], bool],
              procs: Sequence[_Process] | None = None) -> None:
        watched = list(procs if procs is not None else self._procs.values())
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            for proc in watched:
                if not proc.alive():
                    raise LocalClusterError(
                        f"{proc.name} exited while waiting for {what}; last lines of "
                        f"{proc.log}:\n{_tail(proc.log)}")
            try:
                if ready():
                    return
            except (OSError, ValueError, LocalClusterError) as e:
                last = str(e)
            time.sleep(0.1)
        logs = "\n".join(f"--- {p.log}:\n{_tail(p.log, 15)}" for p in watched)
        raise LocalClusterError(f"{what} not within {self.startup_timeout:.0f} s ({last})\n{logs}")

    def _get(self, path: str) -> Any:
        assert self._probe_cert is not None
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(*map(str, self._probe_cert))
        try:
            with urllib.request.urlopen(f"{self.api_url}{path}", timeout=5,
                                        context=ctx) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def _node_ready(self) -> bool:
        node = self._get(f"/api/v1/nodes/{self.node_name}")
        conditions = (node or {}).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _default_service_account(self) -> bool:
        return (self._get("/api/v1/namespaces/default/serviceaccounts/default") is not None
                and self._get("/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
                is not None)

    def __repr__(self) -> str:
        state = f"api={self.api_url}" if self._cp is not None else "stopped"
        return f"<LocalCluster {self.node_name} {state}>"


# =========================================================================== images


def _docker(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    proc = _run(["docker", *args], check=False, timeout=timeout)
    if proc.returncode != 0:
        raise LocalClusterError(
            f"docker {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()} (is "
            "dockerd running? scripts/docker-base-image installs and starts it)")
    return proc


def _build_pause_image() -> None:
    """The sandbox image: tools/pause/pause.c compiled static, in an image FROM scratch.
    Built once; docker keeps it."""
    if _run(["docker", "image", "inspect", PAUSE_IMAGE], check=False).returncode == 0:
        return
    with tempfile.TemporaryDirectory(prefix="overcommit-pause-") as tmp:
        shutil.copy(PAUSE_SOURCE / "Dockerfile", tmp)
        _run(["gcc", "-Os", "-static", "-Wall", "-o", f"{tmp}/pause",
              str(PAUSE_SOURCE / "pause.c")])
        _run(["strip", f"{tmp}/pause"], check=False)
        _docker("build", "--quiet", "--tag", PAUSE_IMAGE, tmp)


def _import_image(tag: str, containerd_socket: Path) -> str:
    """``docker save | ctr images import``, unless containerd has this very image already
    (its docker image ID is in a label of the containerd image)."""
    reference = image_reference(tag)
    image_id = _docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    ctr = ["ctr", "--address", str(containerd_socket), "--namespace", CONTAINERD_NAMESPACE]
    listed = _run([*ctr, "images", "ls", f"name=={reference}"], check=False).stdout
    if f"{_IMAGE_ID_LABEL}={image_id}" in listed:
        return reference
    with tempfile.TemporaryFile() as errors:
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE, stderr=errors)
        assert save.stdout is not None
        imported: subprocess.CompletedProcess[str] | None = None
        try:
            imported = subprocess.run(
                [*ctr, "images", "import", "-"], stdin=save.stdout, capture_output=True,
                text=True, timeout=600, check=False)
        finally:
            save.stdout.close()
            if save.poll() is None and (imported is None or imported.returncode != 0):
                save.kill()  # ctr gave up: docker save would block on a full pipe
            save.wait(timeout=60)
        errors.seek(0)
        save_err = errors.read().decode(errors="replace").strip()
    if save.returncode != 0:
        raise LocalClusterError(f"docker save {tag} exited {save.returncode}: {save_err}")
    if imported.returncode != 0:
        raise LocalClusterError(f"ctr images import of {tag} exited {imported.returncode}: "
                                f"{imported.stderr.strip()}")
    _run([*ctr, "images", "label", reference, f"{_IMAGE_ID_LABEL}={image_id}"])
    return reference


# =========================================================================== small helpers


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _default_node_name() -> str:
    name = socket.gethostname().split(".")[0].lower()
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        return "overcommit-node"
    return name
