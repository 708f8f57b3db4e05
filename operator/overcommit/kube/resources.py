"""Where the resources the operator reads and writes live in the API, and how they are asked for."""

from __future__ import annotations

from overcommit.api.policy import GROUP, VERSION

POLICIES = f"/apis/{GROUP}/{VERSION}/memoryovercommitpolicies"
NODE_STATES = f"/apis/{GROUP}/{VERSION}/memoryovercommitnodestates"
NODES = "/api/v1/nodes"
SELF_ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
# Nodes are listed and watched as metadata only: labels are all the controller needs, and a
# Node's status (images, conditions, addresses) is most of its size.
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA_WATCH = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


def leases(namespace: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


def events(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/events"


def migrations(namespace: str) -> str:
    """KubeVirt's VirtualMachineInstanceMigrations in ``namespace`` (relief creates them)."""
    return f"/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachineinstancemigrations"
