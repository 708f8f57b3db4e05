"""The controller's own requests: policy status and node-state deletion. Lists, watches, the
Lease and Events go through the shared client (``overcommit.kube``)."""

from __future__ import annotations

from typing import Any

from overcommit.kube.client import ApiError, KubeClient
from overcommit.kube.resources import NODE_STATES, POLICIES

KUBEVIRTS = "/apis/kubevirt.io/v1/namespaces/{namespace}/kubevirts/{name}"

JSON = dict[str, Any]


class ControllerApi(KubeClient):
    async def replace_policy_status(self, name: str, uid: str, status: JSON) -> JSON:
        """Replace the whole status, only on the policy with this uid (a policy deleted and
        made again under the same name answers 422 instead of getting a stale status)."""
        return await self.json_patch(f"{POLICIES}/{name}/status",
                                     [{"op": "test", "path": "/metadata/uid", "value": uid},
                                      {"op": "add", "path": "/status", "value": status}])

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

    async def get_kubevirt(self, namespace: str, name: str) -> JSON | None:
        """The KubeVirt CR, or None when there is none (or KubeVirt is not installed)."""
        return await self.get_or_none(KUBEVIRTS.format(namespace=namespace, name=name))

    async def patch_kubevirt(self, namespace: str, name: str, patch: JSON) -> JSON:
        """A merge patch of the KubeVirt CR (the controller sets memoryOvercommit only)."""
        return await self.request("PATCH", KUBEVIRTS.format(namespace=namespace, name=name),
                                  patch, "application/merge-patch+json")
