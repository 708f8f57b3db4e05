"""A Kubernetes cluster on this one machine, for the demo (and the tests): a real
kube-apiserver + etcd on loopback (``controlplane``), a whole single node with a real kubelet,
containerd and kube-proxy in a network namespace of its own (``node``, see
docs/local-cluster.md), and the helpers that start, stop and wire their processes
(``processes``, ``ports``). Importing it costs only the standard library.
"""

from overcommit.localcluster.controlplane import (
    INSTALL_HINT,
    ControlPlane,
    ControlPlaneError,
    find_binaries,
    find_kubectl,
)

__all__ = ["INSTALL_HINT", "ControlPlane", "ControlPlaneError", "find_binaries", "find_kubectl"]
