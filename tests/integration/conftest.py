"""Fixtures for tests against real parts: the host's KSM and a real kube-apiserver + etcd.

A missing part FAILS the test with what to install or how to run; nothing is skipped silently.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from overcommit.host.base import HostFS
from overcommit.host.ksm import KsmSource
from overcommit.testing.pytest_plugin import control_plane  # noqa: F401  (a fixture)

KSM_DIR = Path("/sys/kernel/mm/ksm")


def wait_for(condition: Callable[[], object], timeout: float, what: str,
             interval: float = 0.1) -> object:
    """Poll ``condition`` until it is truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)
        time.sleep(interval)


def ksm_value(name: str) -> str:
    text = (KSM_DIR / name).read_text().strip()
    if text.startswith("[") or "[" in text:
        return text.split("[", 1)[1].split("]", 1)[0]
    return text


@pytest.fixture
def real_ksm() -> Iterator[dict[str, str]]:
    """The host's real KSM, with every writable setting put back afterwards (merges undone)."""
    if os.geteuid() != 0:
        pytest.fail("this test drives the real /sys/kernel/mm/ksm and needs root "
                    "(run scripts/test as root, as CI does)", pytrace=False)
    if not (KSM_DIR / "run").exists():
        pytest.fail("this kernel has no /sys/kernel/mm/ksm (CONFIG_KSM): use a kernel with "
                    "KSM", pytrace=False)
    source = KsmSource(HostFS("/"))
    before = dict(source.read().settings)
    yield before
    source.fs.write("sys/kernel/mm/ksm/run", "2")  # unmerge so EBUSY settings can be restored
    result = source.apply(before, allow_unmerge=True)
    assert result.ok, f"could not restore KSM: {result.errors}"
    assert dict(source.read().settings) == before
