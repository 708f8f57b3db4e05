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


def test_an_idle_connection_outlives_the_agents_writes_but_not_the_api_servers_timeout() -> None:
    from overcommit.agent.settings import AgentSettings
    from overcommit.kube.client import APISERVER_IDLE_TIMEOUT_SECONDS, KEEPALIVE_SECONDS

    assert AgentSettings("n").status_interval_seconds < KEEPALIVE_SECONDS \
        < APISERVER_IDLE_TIMEOUT_SECONDS


@pytest.mark.parametrize(("keepalive", "connections"), [(5.0, 1), (0.2, 2)])
def test_requests_share_a_connection_while_it_is_kept(
        monkeypatch: pytest.MonkeyPatch, keepalive: float, connections: int) -> None:
    """Two requests 0.5 s apart: one connection while the client keeps it (its keep-alive,
    scaled down here), a new one each once it closed it in between."""
    import asyncio

    import kopf
    from aiohttp import web

    from overcommit.kube import client as client_module

    monkeypatch.setattr(client_module, "KEEPALIVE_SECONDS", keepalive)
    peers: set[object] = set()

    async def answer(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response({"kind": "Status"})

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/version", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]

        async def login() -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}", token="t")

        kube = client_module.KubeClient(login)
        try:
            await kube.get("/version")
            await asyncio.sleep(0.5)
            await kube.get("/version")
        finally:
            await kube.close()
            await runner.cleanup()

    asyncio.run(scenario())
    assert len(peers) == connections
