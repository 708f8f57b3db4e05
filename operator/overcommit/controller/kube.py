"""The controller's REST calls: the agent's small aiohttp client plus lists, watches, the Lease,
policy status and node-state deletion.

Credentials come from kopf's login functions through ``agent.kubeapi.make_login``, as for the
agent, except that the controller also falls back to $KUBECONFIG; kopf's reactor itself is not
used (see ``runtime`` for why).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp

from overcommit.agent.kubeapi import NODE_STATES, ApiError, KubeApi
from overcommit.api.policy import GROUP, VERSION

JSON = dict[str, Any]
POLICIES = f"/apis/{GROUP}/{VERSION}/memoryovercommitpolicies"
NODES = "/api/v1/nodes"
# Nodes are listed and watched as metadata only: labels are all the controller needs, and a
# Node's status (images, conditions, addresses) is most of its size.
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA_WATCH = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


def leases(namespace: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


class ControllerApi(KubeApi):
    async def get(self, path: str, params: JSON | None = None,
                  accept: str = "application/json") -> JSON:
        url = f"{path}?{urlencode(params)}" if params else path
        return await self.request("GET", url, accept=accept)

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

    # -- leader election -------------------------------------------------------------------
    async def get_lease(self, namespace: str, name: str) -> JSON | None:
        try:
            return await self.get(f"{leases(namespace)}/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create_lease(self, namespace: str, body: JSON) -> JSON:
        return await self.request("POST", leases(namespace), body)

    async def replace_lease(self, namespace: str, name: str, body: JSON) -> JSON:
        """PUT with the resourceVersion in ``body``: fails with 409 if the lease moved on."""
        return await self.request("PUT", f"{leases(namespace)}/{name}", body)

    # -- policies and node states ----------------------------------------------------------
    async def replace_policy_status(self, name: str, uid: str, status: JSON) -> JSON:
        """Replace the whole status, only on the policy with this uid (a policy deleted and
        made again under the same name answers 422 instead of getting a stale status)."""
        patch = [{"op": "test", "path": "/metadata/uid", "value": uid},
                 {"op": "add", "path": "/status", "value": status}]
        return await self.request("PATCH", f"{POLICIES}/{name}/status", patch,
                                  "application/json-patch+json")

    async def delete_node_state(self, name: str, uid: str) -> bool:
        """Delete the node state with this uid; False when it was gone or replaced already."""
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid}}
        try:
            await self.request("DELETE", f"{NODE_STATES}/{name}", options)
        except ApiError as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True
