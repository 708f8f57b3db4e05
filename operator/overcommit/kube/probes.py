"""The probe endpoints both components serve: ``/healthz`` (liveness) and ``/readyz`` (readiness),
on a port of their own. What each answers is the component's business."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve_probes(port: int, address: str, healthz: Handler, readyz: Handler,
                       log: logging.Logger | logging.LoggerAdapter[Any]) -> web.AppRunner | None:
    """/healthz and /readyz on ``port`` (0: not at all), for the agent and the controller. A
    port already taken costs the probes, not the component's work: the error is logged and it
    goes on (its probes then fail and say so)."""
    if not port:
        return None
    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        # The kubelet probes the pod's IP; "" (None for aiohttp) listens on every interface.
        await web.TCPSite(runner, address or None, port).start()
    except OSError as exc:
        await runner.cleanup()
        log.error("probes are off: cannot listen on port %s: %s", port, exc)
        return None
    return runner
