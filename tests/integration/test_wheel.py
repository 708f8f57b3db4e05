"""Only the product ships: the wheel holds the operator and what its demo applies, no test
support or benchmarks, and ``overcommit demo`` runs from the installed wheel alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the tree without build products: pip builds in the tree, and
    setuptools reuses ./build/lib, which still holds modules since deleted (a wheel built in a
    working copy once shipped a removed package that way)."""
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source") / "tree"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache",
        ".pytest_cache", ".import_linter_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=300)
    [built] = out.glob("memory_overcommit_operator-*.whl")
    return built


def test_the_wheel_holds_the_product_and_the_demo_s_manifests(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.endswith(".dist-info/RECORD")}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"overcommit"}
    for absent in ("testkit/", "bench/", "tests/", "overcommit/testing/",
                   "balloon_baselines.py", "pytest_plugin.py", "libvirtd.py", "memrig.py"):
        assert not [n for n in names if absent in n], absent
    # The test fleets (QEMU guests and their initramfs) are not the reconciler's guest half.
    assert not [n for n in names if n.endswith("guests.py") and "reconcile/" not in n]
    for present in ("overcommit/demo/deploy/crds/memoryovercommit.io_memoryovercommitpolicies.yaml",
                    "overcommit/demo/deploy/manifests/kustomization.yaml",
                    "overcommit/demo/deploy/overlays/kubevirt/kustomization.yaml",
                    "overcommit/demo/examples/adaptive-ksm.yaml",
                    "overcommit/localcluster/controlplane.py",
                    "overcommit/demo/workload.py"):
        assert present in names, present


def test_the_demo_runs_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    """Installed on its own (outside any checkout), with this environment's dependencies: the
    demo finds its manifests as package data and runs the agent and controller from there."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import overcommit; print(overcommit.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(site))
    proc = subprocess.run([sys.executable, "-m", "overcommit.cli", "demo", "--once",
                           "--simulate"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "policy deleted: the agent restored every original setting" in proc.stdout
