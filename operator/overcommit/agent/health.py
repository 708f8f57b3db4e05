"""The agent's probes: ``/healthz`` (liveness) and ``/readyz`` (readiness), like the controller's.

Liveness asks one question: is the loop wedged? A cycle that has been running for longer than
``stuck_after`` (a libvirt call that never returns, say) means a restart helps. Waiting for the
API server, or for this node's Node to appear, is not wedged: a restart would not help there,
so the agent stays live. Readiness adds: has a cycle completed (the host was observed and the
policy acted on) and has its report reached the API server since the agent started? A DaemonSet
rollout moves to the next node only then, and a Ready agent's node state is there to read.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from overcommit.kube.probes import serve_probes

# Long enough for a legitimate slow cycle: KSM's run=2 unmerges every merged page in the
# writing process, which can take minutes on a large host, and killing it midway only makes
# the next agent start over.
STUCK_AFTER_SECONDS = 600.0


@dataclass
class CycleHealth:
    """Pure bookkeeping of the agent's cycles, against an injectable monotonic clock."""

    clock: Callable[[], float] = time.monotonic
    stuck_after: float = STUCK_AFTER_SECONDS
    completed: int = 0
    running_since: float | None = None
    last_completed: float | None = None
    reported: bool = False  # a cycle's node state has been written (or was already current)

    @contextmanager
    def cycle(self) -> Iterator[None]:
        """Wrap one reconcile cycle; only a cycle that returns counts as completed."""
        self.running_since = self.clock()
        try:
            yield
            self.completed += 1
            self.last_completed = self.clock()
        finally:
            self.running_since = None

    def liveness_problem(self) -> str | None:
        if self.running_since is None:
            return None
        running = self.clock() - self.running_since
        if running <= self.stuck_after:
            return None
        return f"a cycle has been running for {running:.0f}s (limit {self.stuck_after:.0f}s)"

    def readiness_problem(self) -> str | None:
        if problem := self.liveness_problem():
            return problem
        if not self.completed:
            return "no cycle has completed yet"
        return None if self.reported else "no cycle's node state has been written yet"

    def report(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "cyclesCompleted": self.completed,
            "reported": self.reported,
            "secondsSinceLastCycle": None if self.last_completed is None
            else round(now - self.last_completed, 3),
            "cycleRunningSeconds": None if self.running_since is None
            else round(now - self.running_since, 3),
        }


def _response(health: CycleHealth, problem: str | None) -> web.Response:
    body = {**health.report(), "ok": problem is None, "problem": problem}
    return web.json_response(body, status=503 if problem else 200, dumps=json.dumps)


async def serve_health(health: CycleHealth, port: int, address: str = "",
                       log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
                       ) -> web.AppRunner | None:
    """The agent's probes (see ``serve_probes``)."""
    async def healthz(_: web.Request) -> web.Response:
        return _response(health, health.liveness_problem())

    async def readyz(_: web.Request) -> web.Response:
        return _response(health, health.readiness_problem())

    return await serve_probes(port, address, healthz, readyz,
                              log or logging.getLogger("overcommit.agent"))
