"""Where the control-plane harness finds kube-apiserver and etcd, in its documented order:
explicit paths, then $KUBEBUILDER_ASSETS, then the cache; and what it says when they are missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from overcommit.localcluster import controlplane
from overcommit.localcluster.controlplane import ControlPlaneError, find_binaries

NAMES = ("kube-apiserver", "etcd")


def binaries(directory: Path, *names: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text("#!/bin/sh\n")
        (directory / name).chmod(0o755)
    return directory


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for variable in ("KUBEBUILDER_ASSETS", "TEST_ASSET_KUBE_APISERVER", "TEST_ASSET_ETCD"):
        monkeypatch.delenv(variable, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("OVERCOMMIT_CACHE", str(cache))
    monkeypatch.setattr(controlplane, "pinned_kube_version", lambda: "v1.99.0")
    return cache


def test_the_cache_of_the_pinned_version(clean_environment: Path) -> None:
    cached = binaries(clean_environment / "kube/v1.99.0/bin", *NAMES)
    assert find_binaries() == (cached / "kube-apiserver", cached / "etcd")


def test_kubebuilder_assets_wins_over_the_cache(clean_environment: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    binaries(clean_environment / "kube/v1.99.0/bin", *NAMES)
    assets = binaries(tmp_path / "assets", *NAMES)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    assert find_binaries() == (assets / "kube-apiserver", assets / "etcd")


def test_kubebuilder_assets_never_falls_back_to_the_cache(
        clean_environment: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binaries(clean_environment / "kube/v1.99.0/bin", *NAMES)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(binaries(tmp_path / "assets", "etcd")))
    with pytest.raises(ControlPlaneError, match=r"kube-apiserver \(looked in .*assets\)"):
        find_binaries()


def test_explicit_paths_win_and_envtest_variables_count_as_explicit(
        clean_environment: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = binaries(clean_environment / "kube/v1.99.0/bin", *NAMES)
    own = binaries(tmp_path / "own", *NAMES)
    assert find_binaries(kube_apiserver=own / "kube-apiserver") == \
        (own / "kube-apiserver", cached / "etcd")
    monkeypatch.setenv("TEST_ASSET_ETCD", str(own / "etcd"))
    assert find_binaries() == (cached / "kube-apiserver", own / "etcd")


def test_missing_binaries_name_each_one_and_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(ControlPlaneError) as failure:
        find_binaries(etcd=tmp_path / "no-such-etcd")
    message = str(failure.value)
    assert "kube-apiserver (looked in" in message
    assert f"etcd (not an executable file: {tmp_path / 'no-such-etcd'})" in message
    assert "scripts/install-kube" in message
