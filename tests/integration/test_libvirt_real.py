"""LibvirtEndpoint against the real libvirtd (qemu:///system) and real TCG guests.

Four guests boot in parallel: two with a balloon and its driver, one whose guest does not load
virtio_balloon, one without a balloon device. All use ``<nosharepages/>`` so they stay out of
KSM measurements another job may be running. The last test stops and restarts libvirtd: the
guests survive it, and the same endpoint object must see them again. Needs root; missing parts
FAIL with a message naming scripts/install-libvirt.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any, TypedDict, cast

import pytest

from overcommit.virt.libvirt_source import LibvirtEndpoint
from overcommit.virt.model import GuestObservation
from testkit import guests, libvirtd
from testkit.waiting import wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

MAX_MIB = 512
PERIOD = 2  # define_guest's default statistics period
PREFIX = "oc-lvsrc-"
NAMES = ("a", "b", "nodriver", "nodevice")


class BalloonOptions(TypedDict, total=False):
    """define_guest()'s balloon keywords a guest of the fleet sets."""

    with_balloon: bool
    balloon_driver: bool
    autodeflate: bool


def fail(message: str) -> None:
    pytest.fail(message, pytrace=False)


def full_name(suffix: str) -> str:
    return f"{PREFIX}{os.getpid()}-{suffix}"


@pytest.fixture(scope="module")
def conn(libvirt_conn: Any) -> Any:
    return libvirt_conn


@pytest.fixture(scope="module")
def fleet(conn: Any) -> Iterator[dict[str, Any]]:
    options: dict[str, BalloonOptions] = {"b": {"autodeflate": True},
                                          "nodriver": {"balloon_driver": False},
                                          "nodevice": {"with_balloon": False}}
    doms: dict[str, Any] = {}
    try:
        for suffix in NAMES:
            doms[suffix] = guests.define_guest(
                conn, full_name(suffix), memory_mib=MAX_MIB, max_memory_mib=MAX_MIB,
                stats_period=PERIOD, share_pages=False, **options.get(suffix, {}))
        for dom in doms.values():
            guests.wait_booted(dom, timeout=180)
    except guests.GuestError as e:
        fail(str(e))
    yield doms
    for dom in doms.values():
        guests.destroy_guest(dom)


@pytest.fixture
def endpoint() -> Iterator[LibvirtEndpoint]:
    ep = LibvirtEndpoint(libvirtd.URI)
    yield ep
    ep.close()


def ours(ep: LibvirtEndpoint) -> dict[str, GuestObservation]:
    reading = ep.observe(time.monotonic())
    assert reading.ok, reading.error
    return {g.domain.rsplit("-", 1)[1]: g for g in reading.guests
            if g.domain.startswith(f"{PREFIX}{os.getpid()}-")}


def settled(ep: LibvirtEndpoint, *names: str,
            max_age_s: float | None = None) -> dict[str, GuestObservation]:
    """Observe until the named guests report usable statistics (the driver is up), no
    older than ``max_age_s`` if given (TCG guests on a busy host report late now and then)."""
    def fresh(g: GuestObservation) -> bool:
        return max_age_s is None or (g.stats_age_s is not None and g.stats_age_s <= max_age_s)

    def probe() -> dict[str, GuestObservation] | None:
        seen = ours(ep)
        return seen if all(seen[n].problem is None and fresh(seen[n]) for n in names) else None
    return cast(dict[str, GuestObservation],
                wait_for(probe, 60, f"statistics from {names}", interval=0.5))


@pytest.mark.usefixtures("fleet")
def test_running_guests_are_observed_with_fresh_statistics(endpoint: LibvirtEndpoint) -> None:
    seen = settled(endpoint, "a", "b", max_age_s=3 * PERIOD)  # refreshed every PERIOD
    assert set(seen) == set(NAMES)
    for name in ("a", "b"):
        g = seen[name]
        assert g.has_balloon and g.max_kib == g.current_kib == MAX_MIB * 1024
        assert 0 < g.stats["usable"] <= g.stats["available"] <= MAX_MIB * 1024
        assert g.stats_period_s == PERIOD and g.uuid
    # Deflate-on-OOM as the real libvirtd reports the domain (b alone asked for it).
    assert (seen["a"].autodeflate, seen["b"].autodeflate, seen["nodevice"].autodeflate) == \
        (False, True, None)


@pytest.mark.usefixtures("fleet")
def test_guests_that_cannot_balloon_are_reported_with_a_problem(
        endpoint: LibvirtEndpoint) -> None:
    time.sleep(3 * PERIOD)  # a loaded driver would have reported by now
    seen = ours(endpoint)
    nodriver, nodevice = seen["nodriver"], seen["nodevice"]
    print(f"\nno driver: stats {dict(nodriver.stats)}: {nodriver.problem}"
          f"\nno device: stats {dict(nodevice.stats)}: {nodevice.problem}")
    assert nodriver.has_balloon and nodriver.stats.get("last_update") == 0
    assert nodriver.problem is not None and "has not reported statistics" in nodriver.problem
    assert not nodevice.has_balloon and nodevice.current_kib == MAX_MIB * 1024
    assert nodevice.problem is not None and "no balloon device" in nodevice.problem
    for error in (endpoint.set_target(nodevice.domain, 256 * 1024),
                  endpoint.ensure_stats_period(nodevice.domain, 5)):
        assert error is not None and "no balloon device" in error


@pytest.mark.usefixtures("fleet")
def test_set_target_moves_the_balloon(endpoint: LibvirtEndpoint) -> None:
    a = settled(endpoint, "a")["a"]
    started = time.monotonic()
    try:
        assert endpoint.set_target(a.domain, 384 * 1024) is None
        wait_for(lambda: ours(endpoint)["a"].current_kib == 384 * 1024, 60,
                 "current_kib to follow the target", interval=0.2)
        print(f"\nballoon 512 -> 384 MiB seen after {time.monotonic() - started:.1f}s")
        error = endpoint.set_target(a.domain, MAX_MIB * 1024 + 1)
        assert error is not None and "above the domain's maximum memory" in error
    finally:
        assert endpoint.set_target(a.domain, MAX_MIB * 1024) is None


def test_stats_period_changes_live(endpoint: LibvirtEndpoint, fleet: dict[str, Any]) -> None:
    name = fleet["b"].name()
    try:
        assert endpoint.ensure_stats_period(name, 3) is None
        assert "<stats period='3'/>" in fleet["b"].XMLDesc(0)
        assert ours(endpoint)["b"].stats_period_s == 3
    finally:
        assert endpoint.ensure_stats_period(name, PERIOD) is None
    assert f"<stats period='{PERIOD}'/>" in fleet["b"].XMLDesc(0)


def test_libvirtd_down_and_back_through_the_same_endpoint(endpoint: LibvirtEndpoint,
                                                          fleet: dict[str, Any]) -> None:
    settled(endpoint, "a", "b")
    try:
        libvirtd.stop_libvirtd()
        down = endpoint.observe(time.monotonic())
        error = endpoint.set_target(fleet["a"].name(), 384 * 1024)
        print(f"\nlibvirtd stopped: observe -> {down.error}\nset_target -> {error}")
        assert not down.ok and down.guests == [] and not endpoint.connected
        assert down.error is not None and down.error.startswith(f"endpoint {libvirtd.URI} is down")
        assert error is not None and "is down" in error
    finally:
        libvirtd.ensure_libvirtd()
    back = settled(endpoint, "a", "b")  # the guests kept running meanwhile
    assert set(back) == set(NAMES) and endpoint.connected
