"""The controller's settings: one documented dataclass, filled from flags and the environment."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports these settings: kopf (and with it the official client,
    # ~20 MiB) must not load before the agent has hidden that client
    from overcommit.kube.lease import LeaseConfig

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "memory-overcommit"
DEFAULT_LEASE_NAME = "memory-overcommit-controller"


@dataclass(frozen=True)
class ControllerSettings:
    """How the controller runs. Defaults suit the Deployment; flags override them."""

    identity: str
    """This replica's name in the Lease; unique per process (see ``default_identity``)."""

    lease_namespace: str = DEFAULT_NAMESPACE
    """Namespace of the leader-election Lease (the controller's own namespace)."""

    lease_name: str = DEFAULT_LEASE_NAME
    """Name of the leader-election Lease; all replicas of one installation share it."""

    lease_seconds: int = 15
    """How long a lease lasts without renewal: the standby takes over this long after the
    leader died (at once when the leader shut down cleanly and released it)."""

    status_interval_seconds: float = 5.0
    """At most one status write per policy per this many seconds; none when nothing changed.
    The floor of the interval: on large clusters ``status_fanout_per_second`` stretches it."""

    status_fanout_per_second: float = 250.0
    """Every agent watches the policies, so one policy status write is one watch event per
    node for the API server to send. The status interval grows with the nodes the controller
    knows so that its writes cost at most this many watch events per second per policy:
    ``max(status_interval_seconds, nodes / status_fanout_per_second)``, 5 s up to 1,250
    nodes, 20 s at 5,000 (bench/README.md, scale: at 5,000 nodes one write every 5 s was
    100,000 events in a 100 s burst, against 16,800 node-state writes)."""

    savings_interval_seconds: float = 60.0
    """Changes of the saved-bytes sums alone (counters drift all the time on busy nodes) are
    written at most this often; counts, conditions and problems follow status_interval."""

    retry_seconds: float = 2.0
    """After a failed status write, fold and write that policy again this much later; Events
    whose post failed for now are tried again at the same pace."""

    sweep_interval_seconds: float = 60.0
    """How often node states whose Node is gone are looked for (and deleted on the second
    sighting)."""

    event_namespace: str = "default"
    """Namespace of the Events about the cluster-scoped policies (as the agent's about node
    states: the Kubernetes convention for cluster-scoped objects)."""

    kubevirt_namespace: str = "kubevirt"
    """Namespace of the KubeVirt CR whose memoryOvercommit a policy may manage
    (spec.capacity.kubevirt); KubeVirt's own install uses kubevirt."""

    kubevirt_name: str = "kubevirt"
    """Name of that KubeVirt CR."""

    kubeconfig: str | None = None
    """A kubeconfig file; None: the pod's service account, else $KUBECONFIG or ~/.kube/config."""

    health_port: int = 8081
    """Port of /healthz and /readyz (0: no health endpoint)."""

    metrics_port: int = 9464
    """Port of the Prometheus /metrics endpoint (0: no metrics)."""

    metrics_address: str = ""
    """Address /metrics listens on ("": every interface)."""

    def lease(self) -> LeaseConfig:
        """The leader-election Lease these settings name, held as ``identity``."""
        from overcommit.kube.lease import LeaseConfig

        return LeaseConfig(self.lease_namespace, self.lease_name, self.identity,
                           self.lease_seconds)


def default_identity() -> str:
    """The pod's name (or host name) plus a random suffix, as client-go does: a restarted
    process never believes it still holds a lease its previous life held."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


def default_namespace() -> str:
    if namespace := os.environ.get("POD_NAMESPACE"):
        return namespace
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE
