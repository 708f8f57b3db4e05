"""Test support: a real kube-apiserver + etcd control plane (see controlplane.py).

Not imported by the operator itself; importing it costs only the standard library.
"""

from overcommit.testing.controlplane import (
    INSTALL_HINT,
    ControlPlane,
    ControlPlaneError,
    find_binaries,
    find_kubectl,
)

__all__ = ["INSTALL_HINT", "ControlPlane", "ControlPlaneError", "find_binaries", "find_kubectl"]
