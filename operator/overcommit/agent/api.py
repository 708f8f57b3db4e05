"""The agent's own requests: its node's MemoryOvercommitNodeState (get, create, replace the
status), and relief's: a VirtualMachineInstanceMigration, its Node's taints. Everything else
goes through the shared client (``overcommit.kube.client``)."""

from __future__ import annotations

from typing import Any

from overcommit.api.policy import GROUP, NODE_STATE_KIND, VERSION
from overcommit.kube.client import ApiError, KubeClient
from overcommit.kube.resources import NODE_STATES, NODES, migrations

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

    async def create_migration(self, namespace: str, vmi: str, labels: dict[str, str],
                               annotations: dict[str, str]) -> JSON:
        """Ask KubeVirt to live-migrate ``vmi`` (a generated name: one object per request)."""
        body = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
                "metadata": {"generateName": "overcommit-relief-", "namespace": namespace,
                             "labels": {**LABELS, **labels}, "annotations": annotations},
                "spec": {"vmiName": vmi}}
        return await self.request("POST", migrations(namespace), body)

    async def set_taints(self, node: str, before: list[JSON] | None, after: list[JSON],
                         resource_version: str) -> JSON:
        """Replace the Node's taints, only if they are still ``before`` (None: the Node had
        none, then only if it is still at ``resource_version``): a JSON patch's test, so a
        taint someone else set meanwhile is never lost (the API server refuses with 422 and
        the next cycle tries again)."""
        patch: list[JSON]
        if before is None:
            patch = [{"op": "test", "path": "/metadata/resourceVersion",
                      "value": resource_version},
                     {"op": "add", "path": "/spec/taints", "value": after}]
        else:
            patch = [{"op": "test", "path": "/spec/taints", "value": before},
                     {"op": "replace", "path": "/spec/taints", "value": after}]
        return await self.json_patch(f"{NODES}/{node}", patch)
