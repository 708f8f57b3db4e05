"""The controller process: leader election (``kube.lease``) around the leader's work
(``reconciler.Controller``), probes and metrics, until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from typing import Any

from aiohttp import web

from overcommit.controller.api import ControllerApi
from overcommit.controller.reconciler import Controller
from overcommit.controller.settings import ControllerSettings
from overcommit.kube.client import make_login
from overcommit.kube.lease import LeaderElector
from overcommit.kube.probes import serve_probes
from overcommit.observability.metrics import ControllerMetrics, serve_metrics

log = logging.getLogger("overcommit.controller")

JSON = dict[str, Any]


async def serve_health(port: int, elector: LeaderElector,
                       controller: Controller) -> web.AppRunner | None:
    """/healthz (liveness: the election loop turns) and /readyz (a standby is ready; a leader
    once its caches are synced), each with a JSON body describing the replica."""
    def body() -> JSON:
        return {"identity": elector.lease.identity, "leader": elector.leading,
                "leaderTransitions": elector.transitions, **controller.health()}

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(body(), status=200 if elector.healthy() else 503,
                                 dumps=json.dumps)

    async def readyz(_: web.Request) -> web.Response:
        ready = elector.healthy() and (not elector.leading or controller.synced)
        return web.json_response(body(), status=200 if ready else 503, dumps=json.dumps)

    return await serve_probes(port, "0.0.0.0", healthz, readyz, log)


async def run(settings: ControllerSettings, stop: asyncio.Event | None = None) -> None:
    """Run one replica until ``stop`` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    metrics = ControllerMetrics()
    api = ControllerApi(make_login(settings.kubeconfig), on_write=metrics.api_write)
    controller = Controller(api, settings, metrics=metrics)
    elector = LeaderElector(api, settings.lease(), controller.lead,
                            on_leading=metrics.set_leader, on_error=metrics.error)
    health = await serve_health(settings.health_port, elector, controller)
    metrics_server = await serve_metrics(metrics.registry, settings.metrics_port,
                                         settings.metrics_address, log)
    log.info("%s: lease %s/%s, %ss; status interval %ss, stretched to nodes/%g s",
             settings.identity, settings.lease_namespace, settings.lease_name,
             settings.lease_seconds, settings.status_interval_seconds,
             settings.status_fanout_per_second)
    try:
        await elector.run(stop)
    finally:
        if health is not None:
            await health.cleanup()
        if metrics_server is not None:
            await metrics_server.stop()
        await api.close()
