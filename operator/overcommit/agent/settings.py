"""The agent's settings: one documented dataclass, filled from flags and the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class AgentSettings:
    """How one node's agent runs. Defaults suit a DaemonSet pod; flags override them."""

    node_name: str
    """The Node this agent manages (from the downward API: ``spec.nodeName`` -> NODE_NAME)."""

    host_root: str = "/"
    """Where the host's / is mounted; sysfs and procfs paths are read and written under it."""

    state_dir: str = "/var/lib/memory-overcommit"
    """Host directory for the recorded originals; must survive pod restarts (a hostPath)."""

    interval_seconds: float = 30.0
    """Cycle period when nothing wakes the agent earlier (policy or node changes do)."""

    retry_seconds: float = 2.0
    """After a failed cycle (the API server away, a host file unreadable), try again sooner
    than the interval: a random wait from half this up to a ceiling of this that doubles with
    each failure in a row, never above the interval (so a cluster's agents do not retry in
    step)."""

    status_interval_seconds: float = 60.0
    """At most one status write per this many seconds for counter-only changes; changes of
    the policy in force, conditions, errors or originals are written at once."""

    counter_writes_per_second: float = 20.0
    """The cluster's agents together write counter-only changes (merged pages, bytes saved) at
    most about this many a second: each waits at least N / this seconds between such writes,
    and never less than ``status_interval_seconds``, N being the largest node count the
    controller wrote into any policy's status. Each write costs the API server about 10 ms of
    CPU (bench/README.md, scale), so 20 a second is a fifth of a core whatever the cluster's
    size: 60 s up to 1,200 nodes, 250 s at 5,000 (the kubelet reports an unchanged Node
    status every 5 minutes). News is written at once; metrics follow every cycle. 0: the
    status interval alone."""

    policy_change_writes_per_second: float = 250.0
    """After a policy changes, every agent it reaches has the change to report at the same
    moment. Each holds that report (its status write and its Events) back a random time within
    N / this seconds, at most ``interval_seconds``, where N is the largest node count the
    controller wrote into any policy's status, so the cluster's agents together write about
    this many per second instead of all at once, which API Priority and Fairness answers with
    429s and retries (bench.scale, bench/README.md). 20 s at 5,000 nodes, 1 s at 250; the
    host is changed at once, only the report waits. 0: no spread."""

    kubeconfig: str | None = None
    """A kubeconfig file; None means in-cluster (the pod's service account)."""

    libvirt_uris: tuple[str, ...] = ()
    """libvirt endpoints to manage guests on; empty: ``qemu:///system`` when its socket exists
    under the host root."""

    kubevirt_pods_dir: str | None = None
    """The host's /var/lib/kubelet/pods mounted at a short path: KubeVirt launchers' sockets."""

    manage_guests: bool = True
    """False: never look at guests (nodes without libvirt)."""

    event_namespace: str = "default"
    """Namespace of the Events about this cluster-scoped node state (Kubernetes convention)."""

    metrics_port: int = 9464
    """Port of the Prometheus endpoint ``/metrics``; 0 turns it off."""

    metrics_address: str = ""
    """Address ``/metrics`` listens on; empty: every interface."""

    health_port: int = 0
    """Port of the probes ``/healthz`` and ``/readyz`` (overcommit.agent.health); 0: none."""

    @classmethod
    def node_name_from_env(cls) -> str:
        name = os.environ.get("NODE_NAME", "")
        if not name:
            raise ValueError("the agent needs its node's name: pass --node-name or set NODE_NAME "
                             "(the DaemonSet sets it from spec.nodeName)")
        return name
