"""Fixtures for tests against real parts: the host's KSM, a real kube-apiserver + etcd, and
the real libvirtd.

A missing part FAILS the test with what to install or how to run; nothing is skipped silently.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overcommit.host.base import HostFS
from overcommit.host.ksm import KsmSource
from testkit.pytest_plugin import control_plane  # noqa: F401  (a fixture)

KSM_DIR = Path("/sys/kernel/mm/ksm")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped real-part test is a failed run: CI must not go green without the real parts."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = reporter.stats.get("skipped", [])
    if skipped and exitstatus == 0:
        names = ", ".join(report.nodeid for report in skipped)
        reporter.ensure_newline()
        reporter.write_line(f"FAILED: integration tests were skipped, which CI does not allow: "
                            f"{names}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def ksm_value(name: str) -> str:
    text = (KSM_DIR / name).read_text().strip()
    if text.startswith("[") or "[" in text:
        return text.split("[", 1)[1].split("]", 1)[0]
    return text


def require_root(what: str) -> None:
    """Fail (never skip) a test that touches the real host without root, saying so."""
    if os.geteuid() != 0:
        pytest.fail(f"this test {what} and needs root (run scripts/test as root, as CI does)",
                    pytrace=False)


@pytest.fixture
def real_ksm() -> Iterator[dict[str, str]]:
    """The host's real KSM, with every writable setting put back afterwards (merges undone)."""
    require_root("drives the real /sys/kernel/mm/ksm")
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


@pytest.fixture(scope="module")
def libvirt_conn() -> Iterator[Any]:
    """A connection to the real ``qemu:///system`` (libvirtd started if needed), after removing
    test guests left by runs that were killed before their cleanup."""
    from testkit import guests, libvirtd

    try:
        import libvirt  # type: ignore[import-untyped]  # here: missing must fail the test

        libvirtd.ensure_libvirtd()
        guests.guest_image()
    except ImportError:
        pytest.fail(f"libvirt-python is not installed in this virtualenv: "
                    f"{libvirtd.INSTALL_HINT}", pytrace=False)
    except (libvirtd.LibvirtdError, guests.GuestError) as exc:
        pytest.fail(str(exc), pytrace=False)
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    connection = libvirt.open(libvirtd.URI)
    for dom in connection.listAllDomains(0):
        match = re.fullmatch(r"oc-[a-z]+-(\d+)-\w+", dom.name())
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            guests.destroy_guest(dom)
    yield connection
    with contextlib.suppress(libvirt.libvirtError):  # dead after a libvirtd restart
        connection.close()
