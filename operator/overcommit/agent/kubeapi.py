"""A few REST calls the agent makes itself, over kopf's own credentials and aiohttp.

kopf watches; writes of the node state and Events go through this small client instead of the
``kubernetes`` package, which would add ~20 MiB to every node's agent (measured: kopf alone
40 MiB, with the official client imported 59 MiB).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import kopf

from overcommit.agent.status import now_rfc3339
from overcommit.api.policy import GROUP, NODE_STATE_KIND, VERSION

JSON = dict[str, Any]
# (method, path, HTTP status or None when no answer came): metrics count the writes.
RequestObserver = Callable[[str, str, int | None], None]
NODE_STATES = f"/apis/{GROUP}/{VERSION}/memoryovercommitnodestates"
SELF_ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
REQUEST_TIMEOUT_SECONDS = 30  # per request, whole exchange


def make_login(kubeconfig: str | None, *, fall_back_to_kubeconfig: bool = True
               ) -> Callable[[], Awaitable[kopf.ConnectionInfo]]:
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
            if info is None and fall_back_to_kubeconfig:
                info = kopf.login_with_kubeconfig(settings=settings)
        if info is None:
            raise kopf.LoginError("no kubeconfig and no in-cluster service account found")
        return info

    return login


class ApiError(Exception):
    def __init__(self, status: int, body: str, what: str) -> None:
        self.status = status
        try:
            self.message = str(json.loads(body).get("message", body))
        except ValueError:
            self.message = body
        super().__init__(f"{what}: HTTP {status}: {self.message}")


class KubeApi:
    """Authenticated JSON requests; re-logs in through kopf's login function on HTTP 401."""

    def __init__(self, login: Callable[[], Awaitable[kopf.ConnectionInfo]],
                 on_write: RequestObserver | None = None) -> None:
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
                connector=aiohttp.TCPConnector(ssl=self._info.as_ssl_context()),
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

    async def serves(self, group: str, version: str, plural: str) -> bool | None:
        """Whether the API server serves ``plural`` in ``group/version`` (discovery, which
        every authenticated identity may read); None when it cannot be asked right now."""
        try:
            found = await self.request("GET", f"/apis/{group}/{version}")
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

    # -- node state ------------------------------------------------------------------------
    async def get_node_state(self, name: str) -> JSON | None:
        try:
            return await self.request("GET", f"{NODE_STATES}/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create_node_state(self, name: str, node_uid: str | None) -> JSON:
        metadata: JSON = {"name": name, "labels": {"app.kubernetes.io/name": "memory-overcommit"}}
        if node_uid:
            # Owned by the Node, so it is garbage-collected with the node.
            metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": name,
                                            "uid": node_uid}]
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": NODE_STATE_KIND,
                "metadata": metadata, "spec": {"nodeName": name}}
        try:
            return await self.request("POST", NODE_STATES, body)
        except ApiError as exc:
            if exc.status == 409:  # someone (a previous life of ours) made it already
                existing = await self.get_node_state(name)
                if existing is not None:
                    return existing
            raise

    async def replace_status(self, name: str, status: JSON) -> JSON:
        # JSON patch "add" replaces the whole status, so keys we dropped disappear too.
        patch = [{"op": "add", "path": "/status", "value": status}]
        return await self.request("PATCH", f"{NODE_STATES}/{name}/status", patch,
                                  "application/json-patch+json")

    # -- events ----------------------------------------------------------------------------
    async def post_event(self, namespace: str, involved: JSON, event_type: str, reason: str,
                         message: str, component: str, host: str) -> None:
        stamp = now_rfc3339()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{involved['name']}.{uuid.uuid4().hex[:16]}",
                         "namespace": namespace},
            "involvedObject": involved, "type": event_type, "reason": reason,
            "message": message[:1024], "source": {"component": component, "host": host},
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
            "reportingComponent": component, "reportingInstance": host,
        }
        await self.request("POST", f"/api/v1/namespaces/{namespace}/events", body)
