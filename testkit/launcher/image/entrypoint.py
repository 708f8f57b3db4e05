#!/usr/bin/python3
"""The entrypoint of the KubeVirt-shaped launcher stand-in (testkit/launcher), under tini as
PID 1: one libvirt daemon, one TCG guest, like a virt-launcher pod.

What it does, in order:

1. Writes the daemon's configuration: root runs the system daemon with the image's
   /etc/libvirt; any other uid (KubeVirt's default is 107) the session daemon, whose
   configuration, cache and data go to ``$XDG_CONFIG_HOME`` etc. in the pod's ``private``
   emptyDir (the root filesystem may be read-only).
2. Binds the daemon's socket itself, at ``/var/run/libvirt/virtqemud-sock`` (mode 0700, owned
   by this uid) in the ``libvirt-runtime`` emptyDir, and hands it to the daemon through the
   systemd socket-activation protocol (``LISTEN_FDS``). Debian ships no ``virtqemud`` (neither
   bookworm's libvirt 9.0 nor the 11.x in backports); its ``libvirtd`` with only the QEMU
   driver installed is the same daemon code and RPC protocol, and activation lets it serve on
   the socket name a KubeVirt launcher has.
3. Starts one transient guest named ``<namespace>_<vmi name>`` with KubeVirt's metadata
   (``<kubevirt xmlns="http://kubevirt.io"><uid>``), a virtio balloon with a statistics
   period, its console (ttyS0) in a file and its command port (ttyS1) on a socket, both in the
   ``private`` emptyDir (the guest is testkit.guests' image: it prints /proc/meminfo there).
4. Marks itself ready (``<private>/ready``, the pod's readiness probe), stays up while the
   guest runs and the daemon lives (exit 1 when either stops); on SIGTERM or SIGINT destroys
   the guest, stops the daemon and exits 0.

Configuration comes from the environment (set by testkit.kubevirt.launcher_pod): VMI_NAMESPACE,
VMI_NAME, VMI_UID, GUEST_MEMORY_MIB (the guest's maximum), GUEST_CURRENT_MIB (the balloon's
start, default the maximum), STATS_PERIOD (seconds, default 10), MEMINFO_PERIOD (seconds the
guest waits between two /proc/meminfo prints, default 2), TB_CACHE_MIB (TCG's translation
cache, default 64). Standard library only: the image has Debian's python3, libvirt's daemon,
its virsh and QEMU, nothing else.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

RUNTIME = Path("/var/run/libvirt")  # the libvirt-runtime emptyDir
SOCKET = RUNTIME / "virtqemud-sock"
PRIVATE = Path("/var/run/kubevirt-private")  # the private emptyDir
CONSOLE = PRIVATE / "console.log"
COMMANDS = PRIVATE / "cmd"  # short: the host's path to it must fit a socket address
READY = PRIVATE / "ready"
IMAGE = Path("/usr/share/launcher")  # the guest's kernel and initrd, and the configs
SYSTEM_CONFIG = Path("/etc/libvirt")
QEMU = "/usr/bin/qemu-system-x86_64"
LIBVIRTD = "/usr/sbin/libvirtd"
VIRSH = "/usr/bin/virsh"
DAEMON_START_TIMEOUT = 60.0
STOP_GRACE = 5.0

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_UID = re.compile(r"[0-9a-fA-F-]{1,64}")
_stopping = False


def log(message: str) -> None:
    print(f"launcher: {message}", file=sys.stderr, flush=True)


def _on_signal(signum: int, _frame: object) -> None:
    global _stopping
    _stopping = True


def env_int(name: str, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        if default is None:
            raise SystemExit(f"launcher: {name} is not set")
        return default
    if not text.isdigit() or int(text) <= 0:
        raise SystemExit(f"launcher: {name}={text!r} is not a positive integer")
    return int(text)


def env_matching(name: str, pattern: re.Pattern[str]) -> str:
    text = os.environ.get(name, "")
    if not pattern.fullmatch(text):
        raise SystemExit(f"launcher: {name}={text!r} does not match {pattern.pattern}")
    return text


def system_mode() -> bool:
    return os.geteuid() == 0


def uri() -> str:
    # What virt-launcher itself connects with, and what the agent derives from the owner.
    base = "qemu:///system" if system_mode() else "qemu+unix:///session"
    return f"{base}?socket={SOCKET}"


def prepare_config() -> dict[str, str]:
    """The daemon's environment; the session daemon's configuration copied where it reads it."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    if system_mode():
        # /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt link here (the image's
        # root filesystem may be read-only).
        for name in ("lib", "cache", "log"):
            (PRIVATE / "system" / name).mkdir(mode=0o755, parents=True, exist_ok=True)
        return {**env, "HOME": str(PRIVATE / "system")}
    # The session daemon keeps everything under the XDG directories: runtime (sockets, pid
    # files, QEMU's monitor) in the libvirt-runtime emptyDir as a KubeVirt launcher has it,
    # configuration, capabilities cache, logs and data in the private emptyDir.
    dirs = {"XDG_RUNTIME_DIR": "/var/run", "XDG_CONFIG_HOME": str(PRIVATE / "config"),
            "XDG_CACHE_HOME": str(PRIVATE / "cache"), "XDG_DATA_HOME": str(PRIVATE / "data"),
            "HOME": str(PRIVATE / "home")}
    for key, path in dirs.items():
        if key != "XDG_RUNTIME_DIR":
            Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
    config = Path(dirs["XDG_CONFIG_HOME"]) / "libvirt"
    config.mkdir(mode=0o700, exist_ok=True)
    for name in ("libvirtd.conf", "qemu.conf"):
        (config / name).write_text((IMAGE / f"session-{name}").read_text())
    return {**env, **dirs}


def listening_socket() -> socket.socket:
    """The daemon's socket, bound here: 0700 and this uid's, as a launcher's is."""
    with contextlib.suppress(FileNotFoundError):
        SOCKET.unlink()  # a previous container of this pod (a restart) left it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        sock.bind(str(SOCKET))
    finally:
        os.umask(old)
    os.chmod(SOCKET, 0o700)
    sock.listen(64)
    return sock


def start_daemon(sock: socket.socket, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """libvirtd with ``sock`` as its main socket (socket activation: fd 3, LISTEN_PID = the
    daemon's own pid, which only the child knows: the shell sets it and execs)."""
    fd = sock.fileno()
    activation = {**env, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "libvirtd.socket"}
    argv = [LIBVIRTD, "--pid-file", str(RUNTIME / "libvirtd.pid")]
    if system_mode():
        argv += ["--config", str(SYSTEM_CONFIG / "libvirtd.conf")]
    return subprocess.Popen(
        ["/bin/sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', "sh", *argv],
        env=activation, pass_fds=(fd,), preexec_fn=lambda: _as_fd3(fd))


def _as_fd3(fd: int) -> None:
    if fd != 3:
        os.dup2(fd, 3)


def virsh(*args: str, timeout: float = 30.0, check: bool = True,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([VIRSH, "-q", "-c", uri(), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)}: {proc.stderr.strip() or proc.stdout}")
    return proc


def wait_for_daemon(daemon: subprocess.Popen[bytes], env: dict[str, str]) -> None:
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    while True:
        if daemon.poll() is not None:
            raise RuntimeError(f"libvirtd exited with {daemon.returncode} before answering")
        try:
            if virsh("version", timeout=10, check=False, env=env).returncode == 0:
                return
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline or _stopping:
            raise RuntimeError("libvirtd did not answer in time")
        time.sleep(0.2)


def domain_name() -> str:
    return f"{env_matching('VMI_NAMESPACE', _DNS_LABEL)}_{os.environ.get('VMI_NAME', '')}"


def domain_xml() -> str:
    namespace = env_matching("VMI_NAMESPACE", _DNS_LABEL)
    name = env_matching("VMI_NAME", _DNS_LABEL)
    uid = env_matching("VMI_UID", _UID)
    max_mib = env_int("GUEST_MEMORY_MIB")
    current_mib = min(env_int("GUEST_CURRENT_MIB", max_mib), max_mib)
    stats = env_int("STATS_PERIOD", 10)
    meminfo = env_int("MEMINFO_PERIOD", 2)
    tb_cache = env_int("TB_CACHE_MIB", 64)
    cmdline = f"console=ttyS0 loglevel=7 panic=1 meminfo_period={meminfo}"
    # As testkit.guests builds it (TCG: nested guests hang here), plus what KubeVirt writes:
    # the metadata with the VMI's uid. The TCG translation cache is bounded so QEMU fits the
    # pod's memory limit (QEMU 7.2's default is 1 GiB for system emulation).
    return f"""<domain type='qemu'>
  <name>{escape(f"{namespace}_{name}")}</name>
  <metadata>
    <kubevirt xmlns="http://kubevirt.io">
      <uid>{escape(uid)}</uid>
    </kubevirt>
  </metadata>
  <memory unit='MiB'>{max_mib}</memory>
  <currentMemory unit='MiB'>{current_mib}</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(IMAGE / "vmlinuz"))}</kernel>
    <initrd>{escape(str(IMAGE / "initrd.gz"))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features>
    <acpi/>
    <tcg><tb-cache unit='MiB'>{tb_cache}</tb-cache></tcg>
  </features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{QEMU}</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path={quoteattr(str(CONSOLE))}/>
      <target port='0'/>
    </serial>
    <serial type='unix'>
      <source mode='bind' path={quoteattr(str(COMMANDS))}/>
      <target port='1'/>
    </serial>
    <video><model type='none'/></video>
    <memballoon model='virtio'>
      <stats period='{stats}'/>
    </memballoon>
  </devices>
</domain>
"""


def qemu_pid(env: dict[str, str], name: str) -> int | None:
    run = RUNTIME / "qemu" if system_mode() else RUNTIME / "qemu" / "run"
    try:
        return int((run / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop(daemon: subprocess.Popen[bytes], env: dict[str, str], name: str) -> None:
    pid = qemu_pid(env, name)
    try:
        done = virsh("destroy", name, timeout=15, check=False, env=env)
        log(f"destroy {name}: {(done.stdout + done.stderr).strip() or 'done'}")
    except subprocess.TimeoutExpired:
        log(f"destroy {name} timed out")
    if pid is not None and alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    daemon.terminate()
    try:
        daemon.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def main() -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    name = domain_name()
    xml = domain_xml()  # validates the environment before anything starts
    env = prepare_config()
    sock = listening_socket()
    daemon = start_daemon(sock, env)
    sock.close()  # the daemon has it
    mode = "system" if system_mode() else "session"
    log(f"uid {os.geteuid()}: libvirtd ({mode} mode) pid {daemon.pid} on {SOCKET}")
    try:
        wait_for_daemon(daemon, env)
        domain_file = PRIVATE / "domain.xml"
        domain_file.write_text(xml)
        virsh("create", str(domain_file), timeout=120, env=env)
        pid = qemu_pid(env, name)
        log(f"guest {name} started (QEMU pid {pid}); console {CONSOLE}, commands {COMMANDS}")
        READY.write_text(f"{name}\n")
        print("LAUNCHER-READY", flush=True)
    except Exception as e:
        log(f"failed to start: {e}")
        stop(daemon, env, name)
        return 1
    code = 0
    while not _stopping:
        if daemon.poll() is not None:
            log(f"libvirtd exited with {daemon.returncode}")
            code = 1
            break
        pid = qemu_pid(env, name)
        if pid is None or not alive(pid):
            log(f"guest {name} is no longer running")
            code = 1
            break
        time.sleep(0.5)
    if _stopping:
        log("stopping: signal received")
    with contextlib.suppress(FileNotFoundError):
        READY.unlink()
    stop(daemon, env, name)
    log(f"stopped (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
