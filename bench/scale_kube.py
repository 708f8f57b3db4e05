"""The scale benchmark's API-server side: an aiohttp client, watches that only count what they
receive (one per simulated agent), and the harness's own watch that parses the policy.

Every simulated agent's watch is its own TCP + TLS connection, as on a real cluster, so the
API server pays its real fan-out cost. Requests share a keep-alive pool without a size limit:
concurrent requests never queue behind each other in this process (each real agent has its own
connection), only in the API server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

JSON = dict[str, Any]
WATCH_SECONDS = 3600  # long enough for any window; a watch that ends early is restarted


class ApiError(RuntimeError):
    def __init__(self, status: int, what: str, body: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:300]}")
        self.status = status


def ssl_context(kubeconfig: Path, secrets: Path) -> tuple[str, ssl.SSLContext]:
    """(server URL, TLS context with the kubeconfig's client certificate)."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
    files = {}
    for name in ("certificate-authority-data", "client-certificate-data", "client-key-data"):
        path = secrets / name
        path.write_bytes(base64.b64decode(cluster.get(name) or user[name]))
        path.chmod(0o600)
        files[name] = str(path)
    context = ssl.create_default_context(cafile=files["certificate-authority-data"])
    context.load_cert_chain(files["client-certificate-data"], files["client-key-data"])
    return str(cluster["server"]).rstrip("/"), context


def ca_only_context(kubeconfig: Path, secrets: Path) -> ssl.SSLContext:
    """TLS that trusts the cluster's CA and presents no client certificate: a bearer token is
    then the only credential (with a certificate, the API server would authenticate that)."""
    config = yaml.safe_load(kubeconfig.read_text())
    path = secrets / "ca.crt"
    path.write_bytes(base64.b64decode(config["clusters"][0]["cluster"]
                                      ["certificate-authority-data"]))
    return ssl.create_default_context(cafile=str(path))


class Kube:
    """JSON requests to the API server; watches on connections of their own."""

    def __init__(self, kubeconfig: Path, secrets: Path, etcd_url: str = "") -> None:
        self.server, self._context = ssl_context(kubeconfig, secrets)
        self.etcd_url = etcd_url
        self._requests: aiohttp.ClientSession | None = None
        self._watches: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Kube:
        timeout = aiohttp.ClientTimeout(total=120)
        self._requests = aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(ssl=self._context, limit=0))
        # No pooling limit and no read timeout: an idle watch is what we hope to see.
        self._watches = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=60),
            connector=aiohttp.TCPConnector(ssl=self._context, limit=0, force_close=True))
        return self

    async def __aexit__(self, *_: object) -> None:
        for session in (self._requests, self._watches):
            if session is not None:
                await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._requests is not None, "use Kube as an async context manager"
        return self._requests

    async def attempt(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json") -> tuple[int, JSON]:
        """(HTTP status, decoded body), whatever the status."""
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        async with self.session.request(method, self.server + path, data=data,
                                        headers={"Content-Type": content_type}) as response:
            text = await response.text()
            return response.status, (json.loads(text) if text.startswith("{") else {})

    async def call(self, method: str, path: str, body: Any = None,
                   content_type: str = "application/json") -> JSON:
        status, result = await self.attempt(method, path, body, content_type)
        if status >= 400:
            raise ApiError(status, f"{method} {path}", json.dumps(result))
        return result

    async def metrics(self) -> str:
        async with self.session.get(self.server + "/metrics") as response:
            return await response.text()

    async def cpu_profile(self, seconds: float) -> bytes:
        """kube-apiserver's own CPU profile over the next ``seconds`` (gzipped pprof; needs
        ``--profiling=true``, which ``bench.scale --apiserver-profiles`` gives it)."""
        seconds = max(1, round(seconds))
        # The session's 120 s limit would cut a profile of a longer window (--churn 200).
        async with self.session.get(f"{self.server}/debug/pprof/profile",
                                    params={"seconds": str(seconds)},
                                    timeout=aiohttp.ClientTimeout(total=seconds + 60)) as response:
            body = await response.read()
            if response.status != 200:
                raise ApiError(response.status, "GET /debug/pprof/profile",
                               body[:500].decode(errors="replace"))
            return body

    async def versions(self) -> dict[str, str]:
        """What serves this run: kube-apiserver's and etcd's versions (which etcd matters:
        ``scale_model.etcd_caveat``)."""
        kube = await self.call("GET", "/version")
        async with self.session.get(self.etcd_url + "/version", ssl=False) as response:
            etcd = await response.json(content_type=None)
        return {"kube_apiserver": kube.get("gitVersion", "?"),
                "etcd": etcd.get("etcdserver", "?")}

    async def etcd_metrics(self) -> str:
        """etcd's own /metrics (plain HTTP on loopback)."""
        async with self.session.get(self.etcd_url + "/metrics", ssl=False) as response:
            return await response.text()

    @contextlib.asynccontextmanager
    async def watch(self, path: str, resource_version: str) -> AsyncIterator[
            aiohttp.ClientResponse]:
        assert self._watches is not None, "use Kube as an async context manager"
        url = (f"{self.server}{path}?watch=1&timeoutSeconds={WATCH_SECONDS}"
               f"&resourceVersion={resource_version}")
        async with self._watches.get(url) as response:
            yield response


class AgentWatches:
    """The simulated agents' policy watches: each its own TCP + TLS connection, authenticated
    by that agent's bearer token alone."""

    def __init__(self, server: str, context: ssl.SSLContext) -> None:
        self.server = server
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=60),
            connector=aiohttp.TCPConnector(ssl=context, limit=0, force_close=True))

    async def close(self) -> None:
        await self._session.close()

    @contextlib.asynccontextmanager
    async def watch(self, path: str, resource_version: str, token: str) -> AsyncIterator[
            aiohttp.ClientResponse]:
        url = (f"{self.server}{path}?watch=1&timeoutSeconds={WATCH_SECONDS}"
               f"&resourceVersion={resource_version}")
        async with self._session.get(url, headers={"Authorization": f"Bearer {token}"}) \
                as response:
            if response.status >= 400:
                raise ApiError(response.status, f"WATCH {path}", await response.text())
            yield response


# -- one simulated agent's policy watch -----------------------------------------------------
@dataclass
class Tally:
    """What one agent's watch received."""

    events: int = 0
    bytes: int = 0
    restarts: int = 0


async def count_watch(watches: AgentWatches, token: str, path: str,
                      resource_version: Callable[[], str], tally: Tally,
                      ready: asyncio.Event | None = None,
                      on_event: Callable[[], None] | None = None) -> None:
    """Watch ``path`` as the agent whose token is ``token`` until cancelled, counting events
    (one JSON line each) and bytes, without decoding them; ``on_event`` is called after every
    chunk that held an event (the agent reacts to a policy change). A watch the server ends is
    restarted at the harness's newest version."""
    while True:
        try:
            async with watches.watch(path, resource_version(), token) as response:
                if ready is not None:
                    ready.set()
                    ready = None
                async for chunk in response.content.iter_any():
                    tally.bytes += len(chunk)
                    lines = chunk.count(b"\n")
                    tally.events += lines
                    if lines and on_event is not None:
                        on_event()
        except (aiohttp.ClientError, OSError, TimeoutError, ApiError):
            await asyncio.sleep(0.5)
        tally.restarts += 1


async def json_lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Newline-delimited lines of any length (StreamReader.readline caps them at 128 KiB)."""
    buffer = bytearray()
    async for chunk in response.content.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            yield bytes(buffer[:end])
            del buffer[:end + 1]


# -- the harness's view of the policy -------------------------------------------------------
@dataclass
class PolicyObserver:
    """Parses every event of one policy: its newest status, and when and how big each write
    to it was."""

    kube: Kube
    path: str
    name: str
    latest: JSON = field(default_factory=dict)
    resource_version: str = ""
    writes: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, bytes)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def start(self) -> asyncio.Task[None]:
        listing = await self.kube.call("GET", self.path)
        self.resource_version = listing["metadata"]["resourceVersion"]
        for item in listing["items"]:
            if item["metadata"]["name"] == self.name:
                self.latest = item
        started = asyncio.Event()
        task = asyncio.create_task(self._run(started))
        await started.wait()
        return task

    async def _run(self, started: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with self.kube.watch(self.path, self.resource_version) as response:
                    started.set()
                    async for line in json_lines(response):
                        await self._take(json.loads(line), len(line) + 1)
            await asyncio.sleep(0.2)

    async def _take(self, event: JSON, size: int) -> None:
        obj = event.get("object") or {}
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = version
        if obj.get("metadata", {}).get("name") != self.name or event["type"] == "BOOKMARK":
            return
        async with self.changed:
            if event["type"] == "MODIFIED":
                self.writes.append((time.monotonic(), size))
            self.latest = obj
            self.changed.notify_all()

    @property
    def status(self) -> JSON:
        status: JSON = self.latest.get("status") or {}
        return status

    async def wait_for(self, check: Callable[[JSON], bool], timeout: float) -> float | None:
        """The monotonic time ``check(status)`` first held, or None after ``timeout``."""
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: check(self.status)),
                                       timeout)
            except TimeoutError:
                return None
        return time.monotonic()

