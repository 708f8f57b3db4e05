"""pytest fixtures backed by a real control plane.

Enable with ``pytest_plugins = ["testkit.pytest_plugin"]`` in the root conftest,
or ``-p testkit.pytest_plugin`` on the command line.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from overcommit.localcluster.controlplane import ControlPlane, ControlPlaneError, find_binaries


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One etcd + kube-apiserver for the whole session; stopped (and cleaned up) at the end.

    Missing binaries FAIL the test rather than skip it: a silently skipped integration
    suite looks green while testing nothing. The message says how to build them.
    """
    try:
        find_binaries()
        missing = ""
    except ControlPlaneError as e:
        missing = str(e)
    if missing:  # failed outside the except block, so pytest shows one clean message
        pytest.fail(missing, pytrace=False)
    with ControlPlane() as cp:
        yield cp
