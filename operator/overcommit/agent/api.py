"""The agent's own requests: its node's MemoryOvercommitNodeState (get, create, replace the
status). Everything else goes through the shared client (``overcommit.kube.client``)."""

from __future__ import annotations

from typing import Any

from overcommit.api.policy import GROUP, NODE_STATE_KIND, VERSION
from overcommit.kube.client import ApiError, KubeClient
from overcommit.kube.resources import NODE_STATES

JSON = dict[str, Any]
LABELS = {"app.kubernetes.io/name": "memory-overcommit"}


class AgentApi(KubeClient):
    async def get_node_state(self, name: str) -> JSON | None:
        return await self.get_or_none(f"{NODE_STATES}/{name}")

    async def create_node_state(self, name: str, node_uid: str | None) -> JSON:
        metadata: JSON = {"name": name, "labels": dict(LABELS)}
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
        return await self.json_patch(f"{NODE_STATES}/{name}/status",
                                     [{"op": "add", "path": "/status", "value": status}])
