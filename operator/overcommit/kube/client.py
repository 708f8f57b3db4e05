"""The Kubernetes REST client both components use: kopf's credentials, aiohttp, JSON.

Not the ``kubernetes`` package: it would add ~20 MiB to every node's agent (measured: kopf alone
40 MiB, with the official client imported 59 MiB). kopf provides the login (a kubeconfig, the
pod's service account), so the agent's watches and both components' requests authenticate the
same way. Paths of the resources the operator uses are in ``overcommit.kube.resources``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import kopf

from overcommit.kube.resources import SELF_ACCESS_REVIEWS, events, leases

JSON = dict[str, Any]
Login = Callable[[], Awaitable[kopf.ConnectionInfo]]
# (method, path, HTTP status or None when no answer came): metrics count the writes.
RequestObserver = Callable[[str, str, int | None], None]
REQUEST_TIMEOUT_SECONDS = 30  # per request, whole exchange
# How long an idle connection is kept for the next request. aiohttp's default (15 s) closes
# it between an agent's writes (at most one per --status-interval, 60 s), so every write paid a
# new TCP + TLS handshake: at 5,000 nodes, 83 handshakes a second on the API server. Below the
# API server's own idle timeout (90 s, k8s.io/apiserver secure serving), so it is the client
# that closes an idle connection, never a request racing the server's close.
KEEPALIVE_SECONDS = 75.0
APISERVER_IDLE_TIMEOUT_SECONDS = 90.0
# What a failed request may raise besides ApiError: the network, a timeout, the host's sockets.
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


def make_login(kubeconfig: str | None, *, fall_back_to_kubeconfig: bool = True) -> Login:
    """kopf's credential discovery: a given kubeconfig, else the pod's service account, else
    (``fall_back_to_kubeconfig``: the controller) $KUBECONFIG or ~/.kube/config. The agent does
    not fall back: on a node, a kubeconfig lying around is not its identity."""
    settings = kopf.OperatorSettings()

    async def login() -> kopf.ConnectionInfo:
        if kubeconfig:
            os.environ["KUBECONFIG"] = kubeconfig
            info = kopf.login_with_kubeconfig(settings=settings)
        else:
            info = kopf.login_with_service_account(settings=settings)
            if info is not None:
                info = dataclasses.replace(info, server=in_cluster_server(info.server))
            elif fall_back_to_kubeconfig:
                info = kopf.login_with_kubeconfig(settings=settings)
        if info is None:
            raise kopf.LoginError("no kubeconfig and no in-cluster service account found")
        return info

    return login


def in_cluster_server(fallback: str) -> str:
    """The API server as the kubelet gives it to every pod (``KUBERNETES_SERVICE_HOST`` and
    ``_PORT``, the ``kubernetes`` Service's address), as client-go's in-cluster config uses it.
    kopf's service-account login names ``kubernetes.default.svc`` instead, which needs the
    cluster's DNS: a node daemon must not stop working while CoreDNS is down (or before it
    runs, or where a cluster has none)."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        return fallback
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


class ApiError(Exception):
    """The API server answered with an HTTP error; ``message`` is its Status message."""

    def __init__(self, status: int, body: str, what: str) -> None:
        self.status = status
        try:
            self.message = str(json.loads(body).get("message", body))
        except ValueError:
            self.message = body
        super().__init__(f"{what}: HTTP {status}: {self.message}")


class KubeClient:
    """Authenticated JSON requests and watches; logs in again through kopf on HTTP 401."""

    def __init__(self, login: Login, on_write: RequestObserver | None = None) -> None:
        self._login = login
        self._on_write = on_write
        self._session: aiohttp.ClientSession | None = None
        self._info: kopf.ConnectionInfo | None = None

    async def _ensure(self, refresh: bool = False) -> tuple[aiohttp.ClientSession, str]:
        if self._session is None or refresh:
            if self._session is not None:
                await self._session.close()
            self._info = await self._login()
            self._session = aiohttp.ClientSession(
                headers=self._info.as_http_headers(),
                connector=aiohttp.TCPConnector(ssl=self._info.as_ssl_context(),
                                               keepalive_timeout=KEEPALIVE_SECONDS),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS))
        assert self._info is not None
        return self._session, self._info.server.rstrip("/")

    def _observe(self, method: str, path: str, status: int | None) -> None:
        if self._on_write is not None and method != "GET":
            self._on_write(method, path, status)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json",
                      accept: str = "application/json") -> JSON:
        for attempt in (0, 1):
            session, server = await self._ensure(refresh=attempt == 1)
            data = None if body is None else json.dumps(body)
            try:
                headers = {"Content-Type": content_type, "Accept": accept}
                async with session.request(method, server + path, data=data,
                                           headers=headers) as response:
                    text = await response.text()
            except (aiohttp.ClientError, TimeoutError):
                self._observe(method, path, None)
                raise
            self._observe(method, path, response.status)
            if response.status == 401 and attempt == 0:
                continue  # a rotated token: log in again once
            if response.status >= 400:
                raise ApiError(response.status, text, f"{method} {path}")
            result: JSON = json.loads(text) if text else {}
            return result
        raise AssertionError("unreachable")

    async def get(self, path: str, params: JSON | None = None,
                  accept: str = "application/json") -> JSON:
        url = f"{path}?{urlencode(params)}" if params else path
        return await self.request("GET", url, accept=accept)

    async def get_or_none(self, path: str) -> JSON | None:
        """The object at ``path``, or None when there is none (404)."""
        try:
            return await self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def json_patch(self, path: str, patch: list[JSON]) -> JSON:
        return await self.request("PATCH", path, patch, "application/json-patch+json")

    async def watch(self, path: str, params: JSON,
                    accept: str = "application/json") -> AsyncIterator[JSON]:
        """The events of one watch request, until the server ends it."""
        session, server = await self._ensure()
        server_timeout = int(params.get("timeoutSeconds", 300))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=server_timeout + 30)
        url = f"{server}{path}?{urlencode({**params, 'watch': 'true'})}"
        async with session.get(url, headers={"Accept": accept}, timeout=timeout) as response:
            if response.status == 401:
                await self._ensure(refresh=True)  # the caller retries with the new login
            if response.status >= 400:
                raise ApiError(response.status, await response.text(), f"watch {path}")
            # Lines, not readline(): one node state with many guests can exceed aiohttp's
            # line limit.
            buffer = bytearray()
            async for chunk in response.content.iter_any():
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[:end + 1]
                    if line.strip():
                        event: JSON = json.loads(line)
                        yield event

    # -- leases (leader election) ---------------------------------------------------------
    async def get_lease(self, namespace: str, name: str) -> JSON | None:
        return await self.get_or_none(f"{leases(namespace)}/{name}")

    async def create_lease(self, namespace: str, body: JSON) -> JSON:
        return await self.request("POST", leases(namespace), body)

    async def replace_lease(self, namespace: str, name: str, body: JSON) -> JSON:
        """PUT with the resourceVersion in ``body``: fails with 409 if the lease moved on."""
        return await self.request("PUT", f"{leases(namespace)}/{name}", body)

    # -- events ----------------------------------------------------------------------------
    async def create_event(self, namespace: str, body: JSON) -> JSON:
        """POST a core/v1 Event (``overcommit.kube.events.event_body``); components post
        through an ``overcommit.kube.outbox.EventOutbox``, which retries."""
        return await self.request("POST", events(namespace), body)

    # -- questions any identity may ask ----------------------------------------------------
    async def serves(self, group: str, version: str, plural: str) -> bool | None:
        """Whether the API server serves ``plural`` in ``group/version`` (discovery, which
        every authenticated identity may read); None when it cannot be asked right now."""
        try:
            found = await self.get(f"/apis/{group}/{version}")
        except ApiError as exc:
            return False if exc.status == 404 else None
        except (aiohttp.ClientError, TimeoutError, ValueError, kopf.LoginError):
            return None
        return any(r.get("name") == plural for r in found.get("resources") or [])

    async def may(self, verb: str, group: str, resource: str) -> bool | None:
        """Whether this identity may ``verb`` ``resource`` in every namespace (a
        SelfSubjectAccessReview, which every authenticated identity may create); None when
        the API server cannot be asked right now."""
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": {"verb": verb, "group": group,
                                                  "resource": resource}}}
        try:
            found = await self.request("POST", SELF_ACCESS_REVIEWS, review)
        except (ApiError, aiohttp.ClientError, TimeoutError, ValueError, kopf.LoginError):
            return None
        status = found.get("status") or {}
        if status.get("allowed"):
            return True
        # Not allowed because an authorizer failed (a webhook down, say) is no answer.
        return False if status.get("denied") or not status.get("evaluationError") else None
