"""Which libvirt endpoints a node has: given URIs, the host's daemon, KubeVirt launchers.

Every ``virt-launcher`` pod runs its own ``virtqemud`` with its socket in the pod's
``libvirt-runtime`` emptyDir, on the host at
``<kubelet pods dir>/<pod uid>/volumes/kubernetes.io~empty-dir/libvirt-runtime/virtqemud-sock``
(``libvirt-sock`` on releases that ran libvirtd). The URI form follows what virt-launcher itself
connects with (cmd/virt-launcher ``createLibvirtConnection``): ``qemu:///system`` when the
daemon runs as root, ``qemu+unix:///session?socket=...`` for the default non-root launcher
(uid 107), whose virtqemud runs in session mode and refuses ``/system``. The socket's owner
tells which.

A Unix socket path may be 107 bytes (``sun_path`` is 108 with the NUL); the kubelet's path
alone is longer than that. Longer paths get a short symlink in a private directory
(``/run/memory-overcommit/sockets/<hash>``): ``connect()`` follows symlinks, the length limit
applies only to the name passed in. Launchers come and go, so discovery runs every cycle and
removes the links of sockets that vanished.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = [
    "DEFAULT_LINK_DIR",
    "SYSTEM_SOCKETS",
    "SYSTEM_URI",
    "Endpoint",
    "LauncherSocket",
    "discover_endpoints",
    "find_launcher_sockets",
    "launcher_uri",
]

SYSTEM_URI = "qemu:///system"
# The host's own daemon: monolithic libvirtd, or the modular virtqemud.
SYSTEM_SOCKETS = ("/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock")
POD_SOCKET_DIR = "volumes/kubernetes.io~empty-dir/libvirt-runtime"
LAUNCHER_SOCKETS = ("virtqemud-sock", "libvirt-sock")  # preferred first
DEFAULT_LINK_DIR = "/run/memory-overcommit/sockets"
SUN_PATH_MAX = 107
_LINK_NAME = re.compile(r"[0-9a-f]{16}(\.new)?")


@dataclass(frozen=True)
class LauncherSocket:
    pod_uid: str
    path: str  # as found under the pods dir
    owner_uid: int


@dataclass(frozen=True)
class Endpoint:
    """One libvirt URI to observe, and where it came from."""

    uri: str
    source: str  # "explicit" | "system" | "kubevirt"
    socket: str | None = None  # kubevirt: the launcher's socket as found
    pod_uid: str | None = None  # kubevirt: the launcher pod
    problem: str | None = None  # set when the URI is known not to work (why)


def discover_endpoints(explicit_uris: Sequence[str], pods_dir: str | None, *,
                       link_dir: str = DEFAULT_LINK_DIR, host_root: str = "/",
                       system_sockets: Sequence[str] = SYSTEM_SOCKETS,
                       discover_system: bool = True) -> list[Endpoint]:
    """Explicit URIs (else the host's daemon when one of its sockets exists under
    ``host_root``), then launchers.

    Removes links in ``link_dir`` whose launcher socket is gone. Never raises for a missing
    pods dir or an unusable link dir: the affected endpoints carry a ``problem``.
    """
    found = [Endpoint(uri, "explicit") for uri in explicit_uris]
    if not explicit_uris and discover_system:
        found += _system_endpoint(host_root, system_sockets)
    launchers = find_launcher_sockets(pods_dir) if pods_dir else []
    found += _launcher_endpoints(launchers, link_dir)
    unique: dict[str, Endpoint] = {}
    for endpoint in found:
        unique.setdefault(endpoint.uri, endpoint)  # the first of each URI wins
    return list(unique.values())


def _system_endpoint(host_root: str, sockets: Sequence[str]) -> list[Endpoint]:
    """The host's own daemon, when one of its sockets exists under ``host_root``: plain
    ``qemu:///system`` on the host itself, the socket's path in the URI otherwise (a container
    that mounts the host elsewhere; a test's host root has none, so it never reaches a real
    daemon)."""
    root = Path(host_root)
    for socket in sockets:
        path = root / socket.lstrip("/")
        if _is_socket(str(path)):
            uri = SYSTEM_URI if root == Path("/") else \
                f"{SYSTEM_URI}?socket={quote(str(path), safe='/')}"
            return [Endpoint(uri, "system")]
    return []


def find_launcher_sockets(pods_dir: str) -> list[LauncherSocket]:
    """Launcher sockets under a kubelet pods dir, one per pod, sorted by path."""
    sockets: dict[str, LauncherSocket] = {}
    for name in LAUNCHER_SOCKETS:
        pattern = os.path.join(glob.escape(pods_dir), "*", POD_SOCKET_DIR, name)
        for path in sorted(glob.glob(pattern)):
            pod_uid = Path(path).relative_to(pods_dir).parts[0]
            owner = _socket_owner(path)
            if owner is not None and pod_uid not in sockets:
                sockets[pod_uid] = LauncherSocket(pod_uid, path, owner)
    return sorted(sockets.values(), key=lambda s: s.path)


def launcher_uri(socket_path: str, owner_uid: int) -> str:
    base = SYSTEM_URI if owner_uid == 0 else "qemu+unix:///session"
    # libvirt unescapes query values ("+" included), so escape everything but "/".
    return f"{base}?socket={quote(socket_path, safe='/')}"


def _socket_owner(path: str) -> int | None:
    """The owner of a Unix socket at ``path``; None for anything else.

    lstat, not stat: the emptyDir is the launcher's to write, and a symlink planted there
    must not lead a root agent to some other daemon's socket.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_uid if stat.S_ISSOCK(st.st_mode) else None


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _launcher_endpoints(launchers: Sequence[LauncherSocket], link_dir: str) -> list[Endpoint]:
    needs_link = [s for s in launchers if len(os.fsencode(s.path)) > SUN_PATH_MAX]
    problem = _prepare_link_dir(link_dir) if needs_link else None
    endpoints, keep = [], set()
    for s in launchers:
        path, link_problem = s.path, None
        if s in needs_link:
            path, link_problem = _link(s.path, link_dir, problem)
            keep.add(os.path.basename(path))
        endpoints.append(Endpoint(launcher_uri(path, s.owner_uid), "kubevirt", s.path,
                                  s.pod_uid, link_problem))
    _remove_stale_links(link_dir, keep)
    return endpoints


def _prepare_link_dir(link_dir: str) -> str | None:
    """Create the link dir (0700); a problem text when it cannot be trusted or made."""
    try:
        os.makedirs(link_dir, mode=0o700, exist_ok=True)
        st = os.lstat(link_dir)
    except OSError as e:
        return f"cannot create {link_dir} for short socket links: {e}"
    # Private, because whoever can replace a link there redirects a root connection.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        return (f"{link_dir} is not a directory owned by this user: refusing to put socket "
                f"links there")
    if st.st_mode & 0o077:
        os.chmod(link_dir, 0o700)
    return None


def _link_path(socket_path: str, link_dir: str) -> str:
    digest = hashlib.sha256(os.fsencode(socket_path)).hexdigest()[:16]
    return os.path.join(link_dir, digest)


def _link(socket_path: str, link_dir: str, dir_problem: str | None) -> tuple[str, str | None]:
    """(path to connect to, problem): the short link, or the long path and why not."""
    if dir_problem is not None:
        return socket_path, dir_problem
    link = _link_path(socket_path, link_dir)
    if len(os.fsencode(link)) > SUN_PATH_MAX:
        return socket_path, f"link dir {link_dir} is too long for a socket path"
    try:
        if not (os.path.islink(link) and os.readlink(link) == socket_path):
            # Built beside and renamed over: a reader never sees a missing or half-made link.
            with contextlib.suppress(FileNotFoundError):  # left by an interrupted run
                os.unlink(link + ".new")
            os.symlink(socket_path, link + ".new")
            os.replace(link + ".new", link)
    except OSError as e:
        return socket_path, f"cannot link {link} -> {socket_path}: {e}"
    return link, None


def _remove_stale_links(link_dir: str, keep: Iterable[str]) -> None:
    keep = set(keep)
    try:
        names = os.listdir(link_dir)
    except OSError:
        return  # never made: nothing to clean
    for name in names:
        path = os.path.join(link_dir, name)
        # Only our own names, and only links: the directory is ours, but be exact anyway.
        if name not in keep and _LINK_NAME.fullmatch(name) and os.path.islink(path):
            with contextlib.suppress(FileNotFoundError):  # another process cleaned it first
                os.unlink(path)
