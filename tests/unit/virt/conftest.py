"""Fixtures for the libvirt adapters on libvirt's in-process test driver (no daemon, no root)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt  # type: ignore[import-untyped]
import pytest

from overcommit.virt.libvirt_source import LibvirtEndpoint
from testkit.fakes.libvirt_xml import TEST_DRIVER_LAST_UPDATE, FakeDomain, write_node

# A wall clock 3 s after the test driver's constant last_update: its stats look fresh.
WALL = float(TEST_DRIVER_LAST_UPDATE + 3)
GiB = 1024 * 1024  # in KiB


class Opener:
    """Opens real test-driver connections and keeps them, so tests can reach behind the
    endpoint (each open of a config file is a private copy of it)."""

    def __init__(self, wrap: Callable[[Any], Any] | None = None) -> None:
        self.opened: list[Any] = []
        self.wrap = wrap

    def __call__(self, uri: str) -> Any:
        conn = libvirt.open(uri)
        self.opened.append(conn)
        return self.wrap(conn) if self.wrap else conn

    @property
    def conn(self) -> Any:
        return self.opened[-1]


@pytest.fixture(autouse=True)
def _quiet_libvirt() -> Iterator[None]:
    # Expected errors (bad URIs, vanished domains) would each print to stderr otherwise.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    yield


SMALL_NODE = [
    FakeDomain("ns1_vm-a", max_kib=2 * GiB, current_kib=GiB, vmi_uid="uid-a",
               free_page_reporting=True),
    FakeDomain("plain", max_kib=GiB, stats_period=5, autodeflate=True),
    FakeDomain("ns1_no-balloon", balloon="none", vmi_uid="uid-nb"),
    FakeDomain("no-element", balloon=None),
    FakeDomain("period-off", stats_period=0),
    FakeDomain("stopped", running=False),
]


@pytest.fixture
def node_uri(tmp_path: Path) -> str:
    return write_node(tmp_path, SMALL_NODE)


@pytest.fixture
def opener() -> Opener:
    return Opener()


@pytest.fixture
def endpoint(node_uri: str, opener: Opener) -> Iterator[LibvirtEndpoint]:
    ep = LibvirtEndpoint(node_uri, opener=opener, wall_clock=lambda: WALL)
    yield ep
    ep.close()
