"""LibvirtEndpoint on libvirt's test driver: observe, act, and every way a call can fail."""

from __future__ import annotations

from typing import Any

import libvirt  # type: ignore[import-untyped]
import pytest

from overcommit.virt.libvirt_source import LibvirtEndpoint
from overcommit.virt.model import GuestObservation
from testkit.fakes.libvirt_xml import TEST_DRIVER_LAST_UPDATE
from tests.unit.virt.conftest import WALL, GiB, Opener


def by_name(guests: list[GuestObservation]) -> dict[str, GuestObservation]:
    return {g.domain: g for g in guests}


def observe(endpoint: LibvirtEndpoint) -> dict[str, GuestObservation]:
    reading = endpoint.observe(now=100.0)
    assert reading.ok, reading.error
    return by_name(reading.guests)


class Proxy:
    """Delegates to a real libvirt object; subclasses override single calls."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class FakeLibvirtError(libvirt.libvirtError):  # type: ignore[misc]
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code

    def get_error_code(self) -> int:
        return self.code


# --------------------------------------------------------------------------- observe


def test_observe_reports_running_guests_with_their_balloons(endpoint: LibvirtEndpoint) -> None:
    reading = endpoint.observe(now=100.0)
    assert reading.ok and reading.error is None and reading.uri == endpoint.uri
    guests = by_name(reading.guests)
    assert sorted(guests) == ["no-element", "ns1_no-balloon", "ns1_vm-a", "period-off", "plain"]
    a = guests["ns1_vm-a"]
    assert (a.max_kib, a.current_kib, a.has_balloon, a.time) == (2 * GiB, GiB, True, 100.0)
    assert a.stats["usable"] == GiB // 2 and a.stats["available"] == GiB
    assert a.stats["last_update"] == TEST_DRIVER_LAST_UPDATE and "actual" not in a.stats
    assert (a.vmi_namespace, a.vmi_name, a.vmi_uid) == ("ns1", "vm-a", "uid-a")
    assert a.stats_age_s == 3.0 and a.stats_period_s == 10 and a.problem is None
    plain = guests["plain"]
    assert (plain.vmi_namespace, plain.vmi_name, plain.vmi_uid) == (None, None, None)
    assert plain.stats_period_s == 5 and plain.problem is None
    # The balloon's deflate-on-OOM, as libvirt's own XML says it (autodeflate='on').
    assert (plain.autodeflate, a.autodeflate, guests["ns1_no-balloon"].autodeflate) == \
        (True, False, None)
    # Free page reporting (freePageReporting='on', KubeVirt's default) the same way.
    assert (a.free_page_reporting, plain.free_page_reporting,
            guests["ns1_no-balloon"].free_page_reporting) == (True, False, None)


def test_guests_without_a_balloon_or_statistics_are_reported_with_a_problem(
        endpoint: LibvirtEndpoint) -> None:
    guests = observe(endpoint)
    for name in ("ns1_no-balloon", "no-element"):
        g = guests[name]
        assert not g.has_balloon and g.stats == {} and g.stats_period_s is None
        assert g.current_kib == g.max_kib == GiB  # from info(): memoryStats() has no "actual"
        assert g.problem is not None and "no balloon device" in g.problem
    assert guests["ns1_no-balloon"].vmi_uid == "uid-nb"
    problem = guests["period-off"].problem
    assert problem is not None and "stats period 0" in problem


def test_stale_statistics_are_a_problem(node_uri: str, opener: Opener) -> None:
    # The test driver's last_update never moves: against the real clock it is decades old.
    endpoint = LibvirtEndpoint(node_uri, opener=opener)
    a = observe(endpoint)["ns1_vm-a"]
    assert a.stats_age_s is not None and a.stats_age_s > 10 * 365 * 86400
    assert a.problem is not None and "old (period 10s)" in a.problem


def test_a_paused_guest_is_reported_not_dropped(endpoint: LibvirtEndpoint,
                                               opener: Opener) -> None:
    observe(endpoint)
    opener.conn.lookupByName("plain").suspend()
    problem = observe(endpoint)["plain"].problem
    assert problem is not None and "paused" in problem


def test_the_bulk_call_is_used_when_it_carries_the_balloon_group(node_uri: str) -> None:
    """QEMU fills balloon.* in getAllDomainStats: then no per-domain calls are made."""
    calls: list[str] = []

    class Domain(Proxy):
        def memoryStats(self) -> dict[str, int]:
            calls.append(self.real.name())
            return dict(self.real.memoryStats())

    class Connection(Proxy):
        def getAllDomainStats(self, groups: int, flags: int) -> list[tuple[Any, dict[str, Any]]]:
            out = []
            for dom, record in self.real.getAllDomainStats(groups, flags):
                stats, info = dom.memoryStats(), dom.info()
                record = {**record, "balloon.current": info[2], "balloon.maximum": info[1],
                          **{f"balloon.{k.replace('_', '-') if k == 'last_update' else k}": v
                             for k, v in stats.items() if k != "actual"}}
                out.append((Domain(dom), record))
            return out

    endpoint = LibvirtEndpoint(node_uri, opener=Opener(Connection), wall_clock=lambda: WALL)
    a = observe(endpoint)["ns1_vm-a"]
    assert calls == []
    assert (a.max_kib, a.current_kib, a.stats_age_s, a.problem) == (2 * GiB, GiB, 3.0, None)
    assert a.stats["usable"] == GiB // 2 and "hugetlb_pgalloc" not in a.stats


def test_drivers_without_the_bulk_call_are_asked_domain_by_domain(node_uri: str) -> None:
    class Connection(Proxy):
        def getAllDomainStats(self, groups: int, flags: int) -> Any:
            raise FakeLibvirtError("this function is not supported", libvirt.VIR_ERR_NO_SUPPORT)

    endpoint = LibvirtEndpoint(node_uri, opener=Opener(Connection), wall_clock=lambda: WALL)
    guests = observe(endpoint)
    assert len(guests) == 5 and guests["ns1_vm-a"].current_kib == GiB


def test_a_domain_that_stops_during_observe_is_left_out(node_uri: str) -> None:
    class Connection(Proxy):
        def getAllDomainStats(self, groups: int, flags: int) -> Any:
            records = self.real.getAllDomainStats(groups, flags)
            self.real.lookupByName("plain").destroy()  # after listing, before memoryStats()
            return records

    endpoint = LibvirtEndpoint(node_uri, opener=Opener(Connection), wall_clock=lambda: WALL)
    guests = observe(endpoint)
    assert "plain" not in guests and "ns1_vm-a" in guests


def test_xml_is_parsed_once_per_domain_run(endpoint: LibvirtEndpoint, opener: Opener) -> None:
    observe(endpoint)
    dom = opener.conn.lookupByName("plain")
    # Changed behind the endpoint's back: the cached facts win while the domain runs.
    dom.setMemoryStatsPeriod(7, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert observe(endpoint)["plain"].stats_period_s == 5
    assert endpoint.ensure_stats_period("plain", 3) is None
    assert observe(endpoint)["plain"].stats_period_s == 3
    dom.destroy()
    dom.create()  # a new run (new domain id) starts from the config's period again
    assert observe(endpoint)["plain"].stats_period_s == 5


# --------------------------------------------------------------------------- connection


def test_a_closed_connection_is_replaced_within_the_same_call(endpoint: LibvirtEndpoint,
                                                              opener: Opener) -> None:
    observe(endpoint)
    opener.conn.close()  # what a libvirtd restart leaves behind: a dead handle
    reading = endpoint.observe(now=101.0)
    assert reading.ok, reading.error
    assert len(opener.opened) == 2 and len(reading.guests) == 5
    assert endpoint.set_target("plain", GiB // 2) is None


@pytest.mark.parametrize(("uri", "expected"), [
    # An unknown scheme would fall through to libvirtd's socket (and its answer depends on
    # whether a daemon runs); an unknown transport fails the same way everywhere.
    ("qemu+bogus:///system", "transport in URL not recognised"),
    ("test:///does/not/exist.xml", "failed to parse xml document"),
    ("qemu+unix:///session?socket=/nonexistent/sock", "Failed to connect socket"),
])
def test_an_unreachable_endpoint_is_reported_down_without_raising(uri: str,
                                                                  expected: str) -> None:
    endpoint = LibvirtEndpoint(uri)
    reading = endpoint.observe(now=1.0)
    assert not reading.ok and reading.guests == []
    assert reading.error is not None and expected in reading.error
    assert reading.error.startswith(f"endpoint {uri} is down: ")
    for error in (endpoint.set_target("vm", GiB), endpoint.ensure_stats_period("vm", 5)):
        assert error is not None and expected in error
    assert not endpoint.connected


# --------------------------------------------------------------------------- set_target


def test_set_target_moves_the_balloon(endpoint: LibvirtEndpoint, opener: Opener) -> None:
    observe(endpoint)
    assert endpoint.set_target("ns1_vm-a", 1536 * 1024) is None
    assert opener.conn.lookupByName("ns1_vm-a").info()[2] == 1536 * 1024
    assert observe(endpoint)["ns1_vm-a"].current_kib == 1536 * 1024


def test_set_target_works_before_any_observe(endpoint: LibvirtEndpoint) -> None:
    assert endpoint.set_target("plain", GiB // 2) is None
    error = endpoint.set_target("plain", 2 * GiB)
    assert error is not None and "above the domain's maximum memory" in error


@pytest.mark.parametrize(("kib", "expected"), [
    (0, "must be a positive KiB count"),
    (-5, "must be a positive KiB count"),
    (True, "must be a positive KiB count"),
    (2 * GiB + 1, f"above the domain's maximum memory {2 * GiB} KiB"),
])
def test_set_target_refuses_impossible_targets_before_asking_libvirt(
        endpoint: LibvirtEndpoint, opener: Opener, kib: int, expected: str) -> None:
    observe(endpoint)
    error = endpoint.set_target("ns1_vm-a", kib)
    assert error is not None and error.startswith("ns1_vm-a: refusing") and expected in error
    assert opener.conn.lookupByName("ns1_vm-a").info()[2] == GiB


def test_set_target_refuses_a_guest_without_a_balloon_device(endpoint: LibvirtEndpoint,
                                                             opener: Opener) -> None:
    # The test driver would accept it (QEMU raises VIR_ERR_OPERATION_INVALID): checked first.
    observe(endpoint)
    error = endpoint.set_target("ns1_no-balloon", GiB // 2)
    assert error is not None and "no balloon device" in error
    assert opener.conn.lookupByName("ns1_no-balloon").info()[2] == GiB


def test_a_domain_gone_between_observe_and_set_target_fails_only_that_guest(
        endpoint: LibvirtEndpoint, opener: Opener) -> None:
    observe(endpoint)
    gone = opener.conn.lookupByName("plain")
    gone.destroy()
    gone.undefine()
    stopped = opener.conn.lookupByName("period-off")
    stopped.destroy()
    error = endpoint.set_target("plain", GiB // 2)
    assert error is not None and error.startswith("plain: gone (destroyed or undefined")
    assert "VIR_ERR_NO_DOMAIN" in error
    error = endpoint.set_target("period-off", GiB // 2)
    assert error is not None and "not running" in error and "VIR_ERR_OPERATION_INVALID" in error
    assert endpoint.set_target("ns1_vm-a", GiB // 2) is None
    assert endpoint.connected and len(opener.opened) == 1


def test_libvirt_refusals_are_reported_not_raised(endpoint: LibvirtEndpoint) -> None:
    # Not observed, so not validated here: libvirt's own refusal comes back as text.
    error = endpoint.set_target("unknown-domain", GiB)
    assert error is not None and "gone" in error


# --------------------------------------------------------------------------- stats period


def test_ensure_stats_period_changes_it_only_when_it_differs(node_uri: str) -> None:
    calls: list[tuple[str, int]] = []

    class Domain(Proxy):
        def setMemoryStatsPeriod(self, seconds: int, flags: int) -> int:
            calls.append((self.real.name(), seconds))
            return int(self.real.setMemoryStatsPeriod(seconds, flags))

    class Connection(Proxy):
        def lookupByName(self, name: str) -> Domain:
            return Domain(self.real.lookupByName(name))

    endpoint = LibvirtEndpoint(node_uri, opener=Opener(Connection), wall_clock=lambda: WALL)
    assert endpoint.ensure_stats_period("plain", 5) is None  # already 5
    assert endpoint.ensure_stats_period("plain", 2) is None
    assert endpoint.ensure_stats_period("plain", 2) is None
    assert calls == [("plain", 2)]
    assert observe(endpoint)["plain"].stats_period_s == 2
    assert endpoint.ensure_stats_period("period-off", 10) is None
    assert observe(endpoint)["period-off"].problem is None


def test_ensure_stats_period_repairs_a_period_someone_else_changed(
        endpoint: LibvirtEndpoint, opener: Opener) -> None:
    assert endpoint.ensure_stats_period("plain", 2) is None
    assert observe(endpoint)["plain"].stats_period_s == 2
    # An admin's `virsh dommemstat --period 10` behind the endpoint's back (the same handle:
    # the file-backed test driver keeps one private node per connection).
    dom = opener.conn.lookupByName("plain")
    dom.setMemoryStatsPeriod(10, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert "period='10'" in dom.XMLDesc(0)
    assert endpoint.ensure_stats_period("plain", 2) is None
    assert "period='2'" in dom.XMLDesc(0)
    assert observe(endpoint)["plain"].stats_period_s == 2


def test_ensure_stats_period_on_a_guest_without_balloon_reports(endpoint: LibvirtEndpoint) -> None:
    for name in ("ns1_no-balloon", "no-element"):
        error = endpoint.ensure_stats_period(name, 5)
        assert error is not None and error.startswith(f"{name}: no balloon device")
    error = endpoint.ensure_stats_period("plain", -1)
    assert error is not None and "refusing stats period -1" in error
