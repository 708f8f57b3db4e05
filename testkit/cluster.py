"""End-to-end support: the operator installed on the local single-node cluster, as users do.

``Installation`` wraps a started ``LocalCluster``: it builds the operator's image with docker
(from this checkout), loads it into the node's containerd, installs the Quick start's overlay
(``kubectl apply --server-side -k``, the image named) and waits for the rollout; and it reads
what the node state, the pods and the host say. ``require_parts`` fails a test (never skips it)
with what to install when a part is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from overcommit.api.status import find_condition
from overcommit.demo.node import NodeDemo
from overcommit.demo.run import ASSETS, EXAMPLE
from overcommit.localcluster.node import (
    INSTALL_HINT,
    LocalCluster,
    LocalClusterError,
    find_node_binaries,
    missing_host_tools,
)

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE_SCRIPT = REPO / "scripts" / "docker-base-image"
NAMESPACE = "memory-overcommit"
AGENT = "app.kubernetes.io/component=agent"
CONTROLLER = "app.kubernetes.io/component=controller"


def require_parts() -> None:
    """Root, the node's binaries and tools, and a docker engine with the local base image;
    else fail naming what to install."""
    if os.geteuid() != 0:
        pytest.fail("the local cluster needs root (namespaces, mounts, cgroups): run as root",
                    pytrace=False)
    if missing := missing_host_tools():
        pytest.fail(f"missing on this host: {', '.join(missing)}; {INSTALL_HINT}", pytrace=False)
    try:
        find_node_binaries()
        problem = ""
    except LocalClusterError as e:
        problem = str(e)
    if problem:
        pytest.fail(problem, pytrace=False)
    proc = subprocess.run([str(BASE_IMAGE_SCRIPT)], capture_output=True, text=True,
                          timeout=1200, check=False)
    if proc.returncode != 0:
        pytest.fail(f"docker is not available ({BASE_IMAGE_SCRIPT.name} exited "
                    f"{proc.returncode}: {proc.stderr.strip()[-2000:]}); install Debian's "
                    "docker.io and debootstrap and run scripts/docker-base-image as root",
                    pytrace=False)


def host_file(path: str) -> str:
    """A host setting as the kernel shows it (the selected entry of ``[a] b`` lists)."""
    text = Path("/", path).read_text().strip()
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else text


class Installation:
    """The operator on ``cluster``, installed from ``base`` (a kustomize directory of the
    shipped deploy/, e.g. ``deploy/manifests`` or ``deploy/overlays/kubevirt``)."""

    def __init__(self, cluster: LocalCluster, tag: str = "e2e",
                 base: str = "deploy/manifests") -> None:
        self.cluster = cluster
        self.work = Path(tempfile.mkdtemp(prefix="overcommit-e2e-"))
        self.base = base
        self.demo = NodeDemo(cluster, self.work, ASSETS, EXAMPLE, tag=tag)
        self.node = cluster.node_name

    @property
    def image(self) -> str:
        return self.demo.image

    def build_and_load(self, tag: str | None = None) -> str:
        """Build the image (docker's cache makes a rebuild cheap) and load it into the node;
        ``tag`` also tags it under another name (a new version for a rolling update)."""
        self.demo.build_image()
        image = self.demo.image
        if tag is not None:
            image = f"{self.demo.image.split(':')[0]}:{tag}"
            subprocess.run(["docker", "tag", self.demo.image, image], check=True)
        self.cluster.load_image(image)
        return image

    def install(self, tag: str | None = None) -> None:
        """``kubectl apply --server-side -k`` of an overlay naming the image (``tag``: another
        tag of it), then wait for the rollout."""
        if tag is not None:
            self.demo.image = f"{self.demo.image.split(':')[0]}:{tag}"
        self.kubectl("apply", "--server-side", "-k", str(self.demo.write_overlay(self.base)))
        self.demo.installed = True
        self.demo.rolled_out()

    def uninstall(self) -> None:
        self.kubectl("delete", "-k", str(self.demo.overlay), "--ignore-not-found", "--wait=true",
                     check=False, timeout=180)

    def close(self) -> None:
        """Remove the working directory (the overlay); after the last uninstall."""
        shutil.rmtree(self.work, ignore_errors=True)

    # -- reading ---------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120.0) -> str:
        return self.cluster.kubectl(*args, input=input, check=check, timeout=timeout).stdout

    def get(self, *args: str) -> Any:
        out = self.cluster.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def node_state(self) -> dict[str, Any]:
        obj = self.get("mons", self.node)
        status: dict[str, Any] = (obj or {}).get("status") or {}
        return status

    def ready_reason(self) -> str | None:
        reason = find_condition(self.node_state(), "Ready").get("reason")
        return str(reason) if reason is not None else None

    def pods(self, selector: str) -> list[dict[str, Any]]:
        found = self.get("pods", "-n", NAMESPACE, "-l", selector)
        items: list[dict[str, Any]] = (found or {}).get("items") or []
        return items

    def agent_pod(self) -> dict[str, Any]:
        pods = [p for p in self.pods(AGENT) if not p["metadata"].get("deletionTimestamp")]
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        return pods[0]

    def exec(self, pod: str, *argv: str) -> str:
        return self.kubectl("exec", "-n", NAMESPACE, pod, "--", *argv)

    def apply(self, *objects: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": list(objects)}))

    def events(self, reason: str) -> list[dict[str, Any]]:
        found = self.get("events", "-A", "--field-selector", f"reason={reason}")
        items: list[dict[str, Any]] = (found or {}).get("items") or []
        return items


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "memoryovercommit.io/v1alpha1", "kind": "MemoryOvercommitPolicy",
            "metadata": {"name": name}, "spec": spec}
