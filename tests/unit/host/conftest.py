from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.fakes.kernel import FakeKernel, scratch_parent


@pytest.fixture
def host_root() -> Iterator[Path]:
    """An empty directory for a fake host tree (in RAM where possible, for speed)."""
    with tempfile.TemporaryDirectory(dir=scratch_parent(), prefix="fake-host-") as root:
        yield Path(root)


@pytest.fixture
def kernel(host_root: Path) -> FakeKernel:
    """A mainline kernel with KSM (NUMA, advisor, smart scan), zswap and swap."""
    return FakeKernel(host_root)


@pytest.fixture
def uksm_kernel(host_root: Path) -> FakeKernel:
    """A kernel with the UKSM patch: /sys/kernel/mm/uksm and no /sys/kernel/mm/ksm."""
    return FakeKernel(host_root, uksm=True)
