"""A single-node Kubernetes cluster with a real kubelet on this machine, for the demo and the
end-to-end tests (see node.py and docs/local-cluster.md).

Test support, not part of the operator: nothing in the product imports it.
"""
