"""The controller: folds every node's MemoryOvercommitNodeState into its policy's small status.

``fold`` (pure: node reports + nodes + a policy -> that policy's status, kstatus conditions),
``lease`` (pure: the leader-election decisions on a coordination.k8s.io Lease) and ``sweep``
(pure: which node states lost their node) are the logic; ``kube``, ``informer`` and ``runtime``
are the thin shell that lists, watches, elects and writes.
"""
