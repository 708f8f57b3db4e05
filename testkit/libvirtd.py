"""Start, stop and restart the host's libvirtd for tests against real guests.

The test machines have no systemd, so nothing starts libvirtd: ``ensure_libvirtd()`` runs
``virtlogd -d`` and ``libvirtd -d`` (both daemonize themselves and outlive the test process,
like a system service would) and polls ``qemu:///system`` until it answers. Fault tests use
``stop_libvirtd()`` / ``restart_libvirtd()``: running QEMU guests survive a libvirtd restart and
are reconnected from their status files under /run/libvirt/qemu.

Packages, users and directories come from ``scripts/install-libvirt``. "Answers" is probed with
``virsh list`` in a subprocess rather than the Python binding, for two reasons: a wedged daemon
would block an in-process ``libvirt.open()`` forever (a subprocess can be timed out), and this
module then works before libvirt-python is installed. (A connection to qemu:///system is only
accepted once the QEMU driver is initialised, so a successful ``list`` means it is usable.)
Standard library only.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = [
    "INSTALL_HINT",
    "URI",
    "LibvirtdError",
    "ensure_libvirtd",
    "libvirtd_answers",
    "libvirtd_pid",
    "restart_libvirtd",
    "stop_libvirtd",
]

URI = "qemu:///system"
INSTALL_HINT = "run scripts/install-libvirt (as root) to install libvirtd, QEMU and libvirt-python"

LIBVIRTD_PIDFILE = Path("/run/libvirtd.pid")
VIRTLOGD_PIDFILE = Path("/run/virtlogd.pid")
VIRTLOGD_SOCKET = Path("/run/libvirt/virtlogd-sock")
LIBVIRTD_LOG = Path("/var/log/libvirt/libvirtd.log")
QEMU_DRIVER = Path("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so")
# What libvirt-daemon-system would create. /run is a tmpfs, so these can vanish on reboot even
# after scripts/install-libvirt ran; both daemons exit at once when their log dir is missing.
RUNTIME_DIRS = ("/var/log/libvirt/qemu", "/run/libvirt", "/var/lib/libvirt/qemu",
                "/var/cache/libvirt/qemu")
# Daemons started from a virtualenv'd pytest still need the system tools (dmidecode, qemu).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_PROBE_TIMEOUT = 10.0
_POLL_INTERVAL = 0.1


class LibvirtdError(RuntimeError):
    """libvirtd is missing, would not start, or would not stop."""


def _binary(name: str) -> str:
    path = shutil.which(name, path=SYSTEM_PATH)
    if path is None:
        raise LibvirtdError(f"{name} not found: {INSTALL_HINT}")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # A zombie still "exists" for kill(0); count it as dead so stop() does not wait for reaping
    # that only its parent (not us, the daemon reparented to init) can do.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


def _read_pid(pidfile: Path, comm: str) -> int | None:
    """The pid in ``pidfile`` if that process is alive and still is ``comm`` (pids get reused)."""
    try:
        pid = int(pidfile.read_text().strip())
        actual = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if actual == comm and _pid_alive(pid) else None


def libvirtd_pid() -> int | None:
    """The running libvirtd's pid, from its pid file; None when it is not running."""
    return _read_pid(LIBVIRTD_PIDFILE, "libvirtd")


def libvirtd_answers(uri: str = URI, timeout: float = _PROBE_TIMEOUT) -> bool:
    """True when ``uri`` accepts a connection and its driver answers ``list``."""
    try:
        done = subprocess.run([_binary("virsh"), "-q", "-c", uri, "list", "--all", "--name"],
                              capture_output=True, timeout=timeout, check=False,
                              env=_daemon_env())
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def _daemon_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = SYSTEM_PATH
    env.pop("LIBVIRT_DEFAULT_URI", None)
    return env


def _log_tail(lines: int = 15) -> str:
    try:
        tail = LIBVIRTD_LOG.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"({LIBVIRTD_LOG} unreadable)"
    return "\n".join(tail)


def _start(argv: list[str]) -> None:
    """Run a self-daemonizing ``argv``: it returns once the daemon has forked off."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False,
                          cwd="/", env=_daemon_env(), stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise LibvirtdError(f"{' '.join(argv)} exited {done.returncode}: "
                            f"{(done.stderr or done.stdout).strip()}")


def _virtlogd_listening() -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(VIRTLOGD_SOCKET))
        except OSError:
            return False
    return True


def _ensure_virtlogd(deadline: float) -> None:
    # QEMU's stdout/stderr go through virtlogd (qemu.conf stdio_handler="logd"); a privileged
    # libvirtd does not spawn it on demand, so a guest start fails without it.
    if _virtlogd_listening():
        return
    if _read_pid(VIRTLOGD_PIDFILE, "virtlogd") is None:
        _start([_binary("virtlogd"), "-d"])
    while not _virtlogd_listening():
        if time.monotonic() > deadline:
            raise LibvirtdError(f"virtlogd did not open {VIRTLOGD_SOCKET}")
        time.sleep(_POLL_INTERVAL)


def _fix_kvm_device() -> None:
    """Give /dev/kvm the owner Debian's udev rule gives it (root:kvm 0660); no udev runs here.

    Without it every domain start takes ~50 s: QEMU's capability probe reports KVM usable, then
    libvirt's cache check finds /dev/kvm inaccessible to user libvirt-qemu ("KVM was enabled
    when probing ..., but it is not available now"), throws the cache away and probes QEMU
    again (~4 s) on each of the dozen capability lookups of a start. The guests still use TCG.
    """
    kvm = Path("/dev/kvm")
    try:
        st, gid = kvm.stat(), grp.getgrnam("kvm").gr_gid
    except (OSError, KeyError):  # no /dev/kvm: libvirt agrees KVM is absent; no group: see hint
        return
    if st.st_gid != gid or st.st_mode & 0o060 != 0o060:
        os.chown(kvm, -1, gid)
        os.chmod(kvm, (st.st_mode & 0o7777) | 0o060)


def _check_installed() -> None:
    if os.geteuid() != 0:
        raise LibvirtdError("qemu:///system needs root (libvirtd runs as a system daemon)")
    for name in ("libvirtd", "virtlogd", "virsh"):
        _binary(name)
    # Without these libvirtd starts fine but qemu:///system never answers: say why up front.
    if not QEMU_DRIVER.exists():
        raise LibvirtdError(f"{QEMU_DRIVER} (libvirt-daemon-driver-qemu) missing: {INSTALL_HINT}")
    _binary("qemu-system-x86_64")


def ensure_libvirtd(timeout: float = 60.0) -> None:
    """Make ``qemu:///system`` answer, starting virtlogd and libvirtd if needed.

    Does nothing (one ``virsh list``, ~30 ms) when it already answers. Raises LibvirtdError naming
    scripts/install-libvirt when binaries are missing, or with libvirtd's log when it starts
    but its QEMU driver does not come up (typically: user ``libvirt-qemu`` missing).
    """
    if os.geteuid() == 0:
        _fix_kvm_device()  # also for a libvirtd someone else started
    if libvirtd_answers():
        return
    _check_installed()
    deadline = time.monotonic() + timeout
    for d in RUNTIME_DIRS:
        Path(d).mkdir(parents=True, exist_ok=True)
    _ensure_virtlogd(deadline)
    if libvirtd_pid() is None:
        _start([_binary("libvirtd"), "-d"])
    grace = time.monotonic() + 2  # in case the pid file lags behind "libvirtd -d" returning
    while not libvirtd_answers(timeout=max(1.0, deadline - time.monotonic())):
        if libvirtd_pid() is None and time.monotonic() > grace:
            raise LibvirtdError(f"libvirtd exited during start-up ({INSTALL_HINT} if users or "
                                f"directories are missing). {LIBVIRTD_LOG}:\n{_log_tail()}")
        if time.monotonic() > deadline:
            raise LibvirtdError(f"{URI} did not answer within {timeout}s. "
                                f"{LIBVIRTD_LOG}:\n{_log_tail()}")
        time.sleep(_POLL_INTERVAL)


def _wait_gone(pid: int, deadline: float) -> bool:
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def stop_libvirtd(timeout: float = 30.0) -> None:
    """SIGTERM libvirtd and wait until it is gone (SIGKILL after ``timeout``).

    Guests keep running: QEMU processes are not libvirtd's children in any way that a daemon
    stop kills. virtlogd is left running too, since it holds the guests' log pipes.
    """
    pid = libvirtd_pid()
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, time.monotonic() + timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, time.monotonic() + 10):
        raise LibvirtdError(f"libvirtd (pid {pid}) survived SIGKILL")


def restart_libvirtd(timeout: float = 60.0) -> None:
    """Stop libvirtd, then start it and wait until ``qemu:///system`` answers again."""
    stop_libvirtd()
    ensure_libvirtd(timeout=timeout)
