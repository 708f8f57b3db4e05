"""The container image (Dockerfile): it builds here, and the CLI works inside it.

The base image comes from scripts/docker-base-image (this machine reaches package registries,
not container registries); that script also installs Debian's docker.io and starts dockerd
when no engine answers. Without docker these tests fail and say what to install.
Layers are ordered for the build cache: after the first build only changed code is rebuilt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overcommit.cli import main
from overcommit.demo.run import simulated_host
from overcommit.localcluster import ControlPlane
from overcommit.localcluster.ports import free_port
from testkit.fakes.kernel import FakeKernel
from testkit.waiting import say, wait_for
from tests.integration.kube import apply, install_crds, node, policy

REPO = Path(__file__).resolve().parents[2]
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
TAG = "memory-overcommit:test"
BASE_IMAGE_SCRIPT = REPO / "scripts" / "docker-base-image"
INSTALL_HINT = ("install Debian's docker.io and debootstrap (apt-get install docker.io "
                "debootstrap iptables) and run scripts/docker-base-image as root")
POLICY = REPO / "examples" / "static-virt-nodes.yaml"
POLICY_LABELS = "node-role.kubernetes.io/virt="  # what that example's nodeSelector asks for

pytestmark = pytest.mark.slow


def docker(*args: str, input: str | None = None, timeout: float = 120,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], input=input, capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args)} exited {proc.returncode}:\n" \
                                     f"{proc.stdout}\n{proc.stderr}"
    return proc


def prepare_docker() -> None:
    """A running engine and the local base image, or a failure naming what to install."""
    if os.geteuid() != 0 and shutil.which("docker") is None:
        pytest.fail(f"docker is not installed: {INSTALL_HINT}", pytrace=False)
    try:
        proc = subprocess.run([str(BASE_IMAGE_SCRIPT)], capture_output=True, text=True,
                              timeout=1200)
    except OSError as exc:
        pytest.fail(f"cannot run {BASE_IMAGE_SCRIPT.name}: {exc}; {INSTALL_HINT}", pytrace=False)
    if proc.returncode != 0 or shutil.which("docker") is None:
        pytest.fail(f"docker is not available ({BASE_IMAGE_SCRIPT.name} exited "
                    f"{proc.returncode}: {proc.stderr.strip()[-2000:]}); {INSTALL_HINT}",
                    pytrace=False)


def git_revision() -> str:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


@pytest.fixture(scope="module")
def image(pytestconfig: pytest.Config) -> Iterator[str]:
    prepare_docker()
    started = time.monotonic()
    docker("build", "--tag", TAG, "--build-arg", f"REVISION={git_revision()}", str(REPO),
           timeout=1800)
    seconds = time.monotonic() - started
    size = int(docker("image", "inspect", "--format", "{{.Size}}", TAG).stdout)
    say(pytestconfig, f"\nimage {TAG}: built in {seconds:.1f} s, {size / 2**20:.0f} MiB")
    yield TAG


def run(image: str, *args: str, input: str | None = None, volumes: tuple[str, ...] = (),
        entrypoint: str | None = None) -> subprocess.CompletedProcess[str]:
    flags = [f"--volume={v}" for v in volumes]
    if entrypoint:
        flags.append(f"--entrypoint={entrypoint}")
    return docker("run", "--rm", "--interactive", *flags, image, *args, input=input,
                  check=False)


def test_help_lists_every_command(image: str) -> None:
    proc = run(image, "--help")
    assert proc.returncode == 0, proc.stderr
    subcommands = build_choices()
    assert subcommands, "the CLI has no subcommands?"
    for name in subcommands:
        assert name in proc.stdout, f"{name} missing from the image's overcommit --help"


def build_choices() -> list[str]:
    from overcommit.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return list(action.choices or ())


def without_times(value: object) -> object:
    """``value`` with every RFC 3339 timestamp replaced by a placeholder."""
    if isinstance(value, dict):
        return {key: without_times(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_times(item) for item in value]
    if isinstance(value, str) and TIMESTAMP.fullmatch(value):
        return "<time>"
    return value


def test_without_times_hides_only_timestamps() -> None:
    plan = {"since": "2026-12-04T07:31:37Z", "at": ["2026-12-04T07:31:38Z"], "state": "Plenty"}
    assert without_times(plan) == {"since": "<time>", "at": ["<time>"], "state": "Plenty"}


def test_validate_accepts_a_valid_policy_and_refuses_an_invalid_one(image: str) -> None:
    good = run(image, "validate", "-f", "-", input=POLICY.read_text())
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == "-: static-virt-nodes: valid"
    bad_text = POLICY.read_text().replace("pagesToScan: 1000", "pagesToScan: -5")
    bad = run(image, "validate", "-f", "-", input=bad_text)
    assert bad.returncode == 2
    assert "pagesToScan" in bad.stderr


def test_plan_in_the_image_matches_plan_here(image: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`overcommit plan` against a simulated host root (mounted read-only, no host access):
    the image plans exactly what the checkout plans for the same host and policy."""
    host = tmp_path / "host"
    simulated_host(host)
    for path in (tmp_path, *host.rglob("*")):  # the image's default user is not root
        path.chmod(0o755 if path.is_dir() else 0o644)
    host.chmod(0o755)
    plan_args = ["plan", "-f", "-", "--host-root", "/host", "--state-dir", "/tmp/state",
                 "--no-libvirt", "--node-labels", POLICY_LABELS, "-o", "json"]
    inside = run(image, *plan_args, input=POLICY.read_text(), volumes=(f"{host}:/host:ro",))
    assert inside.returncode == 0, inside.stderr
    here = plan_here(host, tmp_path / "state", capsys)
    # The two plans ran a moment apart: the ladder's clock fields may differ by a second.
    assert without_times(json.loads(inside.stdout)) == without_times(here)
    assert here["policy"] == "static-virt-nodes" and here["changes"], here


def plan_here(host: Path, state: Path,
              capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    code = main(["plan", "-f", str(POLICY), "--host-root", str(host), "--state-dir", str(state),
                 "--no-libvirt", "--node-labels", POLICY_LABELS, "-o", "json"])
    assert code == 0
    plan: dict[str, Any] = json.loads(capsys.readouterr().out)
    return plan


def test_the_image_has_debians_libvirt_binding_no_compiler_and_a_non_root_default(
        image: str) -> None:
    probe = ("import json, os, shutil, libvirt, overcommit; "
             "print(json.dumps({'uid': os.getuid(), 'libvirt': libvirt.__file__, "
             "'overcommit': overcommit.__file__, "
             "'compilers': [c for c in ('gcc', 'cc', 'clang') if shutil.which(c)]}))")
    proc = run(image, "-c", probe, entrypoint="python")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["uid"] != 0, "the image's default user must not be root"
    assert found["libvirt"].startswith("/usr/lib/python3/dist-packages/"), found
    assert found["overcommit"].startswith("/opt/overcommit/"), found
    assert found["compilers"] == []


def test_the_image_is_labelled_with_the_project_version(image: str) -> None:
    labels = json.loads(docker("image", "inspect", "--format",
                               "{{json .Config.Labels}}", image).stdout)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.revision"] == git_revision()
    assert labels["org.opencontainers.image.licenses"]




def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def test_the_agent_runs_in_the_image_confined_as_the_daemonset_confines_it(
        image: str, control_plane: ControlPlane, tmp_path: Path) -> None:
    """Root without capabilities, a read-only root filesystem, no new privileges, tmpfs where
    the DaemonSet has emptyDirs, and a simulated host root where the DaemonSet mounts the
    host's: the containerised agent applies a policy, turns ready, and stops on SIGTERM."""
    install_crds(control_plane)
    name = f"node-{uuid.uuid4().hex[:6]}"
    host = FakeKernel(tmp_path / "host")
    apply(control_plane, node(name, {"image-test": name}))
    port = free_port()
    container = f"overcommit-agent-{name}"
    docker("run", "--detach", "--name", container, "--network=host", "--user=0",
           "--cap-drop=ALL", "--security-opt=no-new-privileges", "--read-only",
           "--tmpfs=/tmp", "--tmpfs=/run/memory-overcommit",
           f"--volume={host.root}:/host",
           f"--volume={tmp_path / 'state'}:/var/lib/memory-overcommit",
           f"--volume={control_plane.dir}:{control_plane.dir}:ro", f"--env=NODE_NAME={name}",
           image, "agent", "--host-root=/host", "--state-dir=/var/lib/memory-overcommit",
           f"--kubeconfig={control_plane.admin_kubeconfig}", f"--health-port={port}",
           "--metrics-port=0", "--no-libvirt")
    try:
        apply(control_plane, policy(f"image-{name}", {
            "nodeSelector": {"matchLabels": {"image-test": name}},
            "ksm": {"enabled": True, "pagesToScan": 1234}}))
        wait_for(lambda: host.get("sys/kernel/mm/ksm/pages_to_scan") == "1234", 60,
                 "the containerised agent to apply the policy")
        wait_for(lambda: ready(port), 30, "the containerised agent's /readyz")
        started = time.monotonic()
        docker("stop", "--time=30", container, timeout=60)
        stopped_in = time.monotonic() - started
        code = docker("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip()
        assert code == "0", docker("logs", container, check=False).stderr[-3000:]
        # Exit code 0 already shows SIGTERM was handled (docker's SIGKILL at 30 s gives 137);
        # the bound leaves room for a loaded machine's docker and kopf shutdown.
        assert stopped_in < 25, f"SIGTERM took {stopped_in:.1f}s (as PID 1 in the container)"
        # It restores nothing on SIGTERM: the policy's value stays.
        assert host.get("sys/kernel/mm/ksm/pages_to_scan") == "1234"
    finally:
        docker("rm", "--force", container, check=False)
        control_plane.kubectl("delete", "mop", f"image-{name}", "--ignore-not-found")
