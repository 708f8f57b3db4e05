"""The shared Kubernetes client's in-cluster address: the kubernetes Service's, not its DNS name."""

from __future__ import annotations

import pytest

from overcommit.kube.client import in_cluster_server


def test_the_service_address_the_kubelet_gives_every_pod(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert in_cluster_server("https://kubernetes.default.svc") == "https://10.96.0.1:443"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert in_cluster_server("https://kubernetes.default.svc") == "https://[fd00::1]:443"


def test_without_the_service_variables_the_given_server_stays(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert in_cluster_server("https://kubernetes.default.svc") == \
        "https://kubernetes.default.svc"
