"""A KubeVirt-shaped launcher stand-in for end-to-end tests: its image, and its guest as the
host sees it.

KubeVirt cannot be built here, so the e2e tests emulate what the agent touches: a pod that, like
``virt-launcher``, runs its own libvirt daemon with its socket at
``/var/run/libvirt/virtqemud-sock`` on an emptyDir named ``libvirt-runtime`` (so on the host at
``/var/lib/kubelet/pods/<pod uid>/volumes/kubernetes.io~empty-dir/libvirt-runtime/
virtqemud-sock``), and one TCG guest named ``<namespace>_<vmi name>`` with KubeVirt's domain
metadata. The image (``image/``: Dockerfile, entrypoint, daemon configuration) is built with
docker from the local ``debian:bookworm-slim`` (scripts/docker-base-image) and the guest of
``testkit.guests`` (kernel + busybox initramfs, copied into the build context).
docs/local-cluster.md ("The launcher stand-in") says what is faithful and what is not.

``launcher_image()`` builds once per content (tag = hash of the build context and the base
image's id) and fails naming what to install. ``LauncherGuest`` reads a running launcher's
guest through the host's view of its ``private`` emptyDir: the console (/proc/meminfo every
few seconds, as testkit.guests prints it) and the command port (``eat``/``stop``).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from testkit.guests import GuestError, _meminfo_blocks, guest_image

__all__ = [
    "BASE_IMAGE",
    "IMAGE_DIR",
    "INSTALL_HINT",
    "PRIVATE_MOUNT",
    "PRIVATE_VOLUME",
    "REPOSITORY",
    "RUNTIME_MOUNT",
    "RUNTIME_VOLUME",
    "LauncherError",
    "LauncherGuest",
    "empty_dir",
    "launcher_image",
]

IMAGE_DIR = Path(__file__).parent / "image"
REPOSITORY = "memory-overcommit/e2e-launcher"
BASE_IMAGE = "debian:bookworm-slim"
INSTALL_HINT = ("install Debian's docker.io and debootstrap (apt-get install docker.io "
                "debootstrap iptables) and run scripts/docker-base-image as root")
GUEST_HINT = ("run scripts/install-libvirt (as root): it installs busybox-static and unpacks "
              "the guest kernel")
KUBELET_PODS = Path("/var/lib/kubelet/pods")
# The launcher pod's volumes (testkit.kubevirt.launcher_pod mounts them; the entrypoint uses
# the paths): KubeVirt's names and mount points.
RUNTIME_VOLUME, RUNTIME_MOUNT = "libvirt-runtime", "/var/run/libvirt"
PRIVATE_VOLUME, PRIVATE_MOUNT = "private", "/var/run/kubevirt-private"
SOCKET_NAME = "virtqemud-sock"


class LauncherError(RuntimeError):
    """The launcher image cannot be built, or its guest did not answer in time."""


# --------------------------------------------------------------------------- the image


def _docker(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["docker", *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except FileNotFoundError as e:
        raise LauncherError(f"docker is not installed: {INSTALL_HINT}") from e
    except subprocess.TimeoutExpired as e:
        raise LauncherError(f"docker {args[0]} did not finish within {timeout:.0f} s") from e


def _context_files() -> dict[str, Path]:
    """Build-context name -> source: the image directory and the guest's kernel and initrd."""
    try:
        guest = guest_image()
    except GuestError as e:
        raise LauncherError(f"the launcher's guest cannot be built: {e}") from e
    files = {p.name: p for p in sorted(IMAGE_DIR.iterdir()) if p.is_file()}
    files.update({"vmlinuz": guest.kernel, "initrd.gz": guest.initrd})
    return files


def _tag(files: Mapping[str, Path], base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode())
    for name, path in sorted(files.items()):
        digest.update(f"\0{name}\0".encode())
        digest.update(path.read_bytes())
    return f"{REPOSITORY}:{digest.hexdigest()[:12]}"


def launcher_image(*, log: Callable[[str], None] | None = None) -> str:
    """The launcher image's tag, built first when docker has no image of this content.

    Idempotent and cached: the tag is a hash of every build-context file (Dockerfile,
    entrypoint, configuration, guest kernel and initrd) and of the base image's id, so an
    unchanged context costs one ``docker image inspect``. Raises LauncherError naming what to
    install when docker, its engine, the base image or the guest's parts are missing.
    """
    if shutil.which("docker") is None:
        raise LauncherError(f"docker is not installed: {INSTALL_HINT}")
    info = _docker("info", "--format", "{{.ServerVersion}}")
    if info.returncode != 0:
        raise LauncherError(f"the docker engine does not answer ({info.stderr.strip()}): "
                            f"{INSTALL_HINT}")
    base = _docker("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE)
    if base.returncode != 0:
        raise LauncherError(f"docker has no {BASE_IMAGE} image (nothing is pulled from a "
                            f"container registry here): {INSTALL_HINT}")
    files = _context_files()
    tag = _tag(files, base.stdout.strip())
    if _docker("image", "inspect", "--format", "{{.Id}}", tag).returncode == 0:
        return tag
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ovc-launcher-") as context:
        for name, path in files.items():
            shutil.copyfile(path, Path(context) / name)
        build = _docker("build", "--quiet", "--tag", tag, context, timeout=1800)
    if build.returncode != 0:
        raise LauncherError(f"docker build of {tag} failed (exit {build.returncode}):\n"
                            f"{build.stderr[-4000:]}")
    if log is not None:
        log(f"launcher image {tag} built in {time.monotonic() - started:.1f} s")
    return tag


# --------------------------------------------------------------------------- the guest


def empty_dir(pod_uid: str, volume: str) -> Path:
    """Where the kubelet keeps a pod's emptyDir on the host."""
    return KUBELET_PODS / pod_uid / "volumes" / "kubernetes.io~empty-dir" / volume


@dataclass
class LauncherGuest:
    """A running launcher's guest, from the host: its console and its command port.

    The console is the file the guest's ttyS0 writes in the pod's ``private`` emptyDir; the
    command port (ttyS1) is a socket beside it, kept open once connected (QEMU drops input a
    client has not delivered when it hangs up: see testkit.guests).
    """

    pod_uid: str
    domain: str
    _channel: socket.socket | None = field(default=None, repr=False)

    @property
    def private_dir(self) -> Path:
        return empty_dir(self.pod_uid, PRIVATE_VOLUME)

    @property
    def socket_path(self) -> Path:
        return empty_dir(self.pod_uid, RUNTIME_VOLUME) / SOCKET_NAME

    def balloon_stats(self, root: bool) -> dict[str, int]:
        """``virsh dommemstat`` through the launcher's socket (as the agent reaches it: a short
        symlink, the kubelet's path being too long for a socket address)."""
        with tempfile.TemporaryDirectory(prefix="ovc-", dir="/tmp") as short:
            link = Path(short) / "s"
            link.symlink_to(self.socket_path)
            base = "qemu:///system" if root else "qemu+unix:///session"
            proc = subprocess.run(["virsh", "-c", f"{base}?socket={link}", "dommemstat",
                                   self.domain], capture_output=True, text=True, timeout=30,
                                  check=False)
        if proc.returncode != 0:
            raise LauncherError(f"virsh dommemstat {self.domain}: {proc.stderr.strip()}")
        return {k: int(v) for k, v in (line.split() for line in proc.stdout.splitlines()
                                       if len(line.split()) == 2)}

    def console(self) -> str:
        try:
            return (self.private_dir / "console.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def meminfo(self) -> dict[str, int] | None:
        """The guest's latest complete /proc/meminfo (kB), None before its first."""
        blocks = list(_meminfo_blocks(self.console()))
        return blocks[-1] if blocks else None

    def wait_meminfo(self, predicate: Callable[[Mapping[str, int]], bool], timeout: float,
                     what: str) -> dict[str, int]:
        """Poll until the latest /proc/meminfo satisfies ``predicate``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.meminfo()
            if info is not None and predicate(info):
                return info
            if time.monotonic() > deadline:
                raise LauncherError(f"{self.domain}: timed out after {timeout:.0f} s waiting "
                                    f"for {what}; last meminfo: {_short(info)}")
            time.sleep(0.5)

    def command(self, line: str, timeout: float = 120.0) -> tuple[int, str]:
        """Run one guest command (``eat <MiB>``, ``stop``, ``run <shell>``): (rc, text)."""
        cid = uuid.uuid4().hex[:10]
        if self._channel is None:
            channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            channel.connect(str(self.private_dir / "cmd"))
            self._channel = channel
        self._channel.sendall(f"\n{cid} {line}\n".encode())
        done = re.compile(rf"^CMD-DONE {cid} (\d+)([^\n]*)$", re.MULTILINE)
        deadline = time.monotonic() + timeout
        while (match := done.search(self.console())) is None:
            if time.monotonic() > deadline:
                raise LauncherError(f"{self.domain}: no answer to {line!r} in {timeout:.0f} s")
            time.sleep(0.2)
        return int(match.group(1)), match.group(2).strip()

    def eat(self, mib: int, timeout: float = 180.0) -> None:
        """Make the guest allocate and touch ``mib`` MiB more (testkit.guests' ``eat``)."""
        rc, text = self.command(f"eat {int(mib)}", timeout)
        if rc != 0:
            raise LauncherError(f"{self.domain} could not eat {mib} MiB: {text}")

    def stop_eating(self) -> None:
        self.command("stop", 60.0)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def _short(info: Mapping[str, int] | None) -> str:
    if info is None:
        return "none yet"
    return ", ".join(f"{k} {info[k]} kB" for k in ("MemTotal", "MemAvailable") if k in info)

