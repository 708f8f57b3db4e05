"""The pure parts: domain XML facts, balloon numbers from either call, and their problems."""

from __future__ import annotations

import pytest

from overcommit.virt.balloonstats import (
    STALE_MIN_S,
    balloon_problem,
    from_bulk,
    from_memory_stats,
    stats_age,
)
from overcommit.virt.domainxml import DomainFacts, DomainXMLError, parse_domain_xml, split_vmi_name
from testkit.fakes.libvirt_xml import FakeDomain, domain_xml

FULL = {"usable": 400, "available": 500, "last_update": 1000}


def facts(model: str | None = "virtio", period: int = 10) -> DomainFacts:
    return DomainFacts(balloon_model=model, stats_period=period, kubevirt=False, vmi_uid=None)


@pytest.mark.parametrize(("domain", "expected"), [
    (FakeDomain("a", vmi_uid="u-1"), DomainFacts("virtio", 10, True, "u-1")),
    (FakeDomain("b", balloon="none"), DomainFacts("none", 0, False, None)),
    (FakeDomain("c", balloon=None), DomainFacts(None, 0, False, None)),
    (FakeDomain("d", stats_period=0), DomainFacts("virtio", 0, False, None)),
    (FakeDomain("e", balloon="virtio-non-transitional"),
     DomainFacts("virtio-non-transitional", 10, False, None)),
    (FakeDomain("f", autodeflate=True), DomainFacts("virtio", 10, False, None, autodeflate=True)),
    (FakeDomain("g", free_page_reporting=True),
     DomainFacts("virtio", 10, False, None, free_page_reporting=True)),
])
def test_domain_facts(domain: FakeDomain, expected: DomainFacts) -> None:
    parsed = parse_domain_xml(domain_xml(domain))
    assert parsed == expected
    assert parsed.has_balloon == (domain.balloon not in (None, "none"))


def test_kubevirt_metadata_with_a_prefixed_root_only() -> None:
    xml = ("<domain><metadata><kv:kubevirt xmlns:kv='http://kubevirt.io'><uid> u-2 </uid>"
           "</kv:kubevirt></metadata></domain>")
    assert parse_domain_xml(xml).vmi_uid == "u-2"


@pytest.mark.parametrize("text", ["<domain", "<node/>"])
def test_not_a_domain(text: str) -> None:
    with pytest.raises(DomainXMLError):
        parse_domain_xml(text)


@pytest.mark.parametrize(("name", "expected"), [
    ("ns_vm", ("ns", "vm")), ("ns_vm_with_underscores", ("ns", "vm_with_underscores")),
    ("lonely", ("default", "lonely")),
])
def test_split_vmi_name(name: str, expected: tuple[str, str]) -> None:
    assert split_vmi_name(name) == expected


def test_bulk_and_per_domain_records_give_the_same_reading() -> None:
    bulk = {"state.state": 1, "balloon.current": 300, "balloon.maximum": 512,
            "balloon.usable": 200, "balloon.last-update": 1000, "balloon.rss": 250,
            "balloon.hugetlb_pgalloc": 0}
    per_domain = {"actual": 300, "usable": 200, "last_update": 1000, "rss": 250,
                  "hugetlb_pgalloc": 0}
    assert from_bulk(bulk) == from_memory_stats(per_domain, [1, 512, 300, 1, 0])
    assert from_bulk({"state.state": 1}) is None  # the test driver's answer


def test_no_balloon_device_memory_stats_have_no_actual() -> None:
    reading = from_memory_stats({"rss": 250}, [1, 512, 512, 1, 0])
    assert (reading.max_kib, reading.current_kib, reading.stats) == (512, 512, {"rss": 250})


@pytest.mark.parametrize(("stats", "wall", "age"), [
    ({"last_update": 1000}, 1003.5, 3.5),
    ({"last_update": 1000}, 999.0, 0.0),  # clock stepped back: not negative
    ({"last_update": 0}, 1003.0, None),  # device, no driver
    ({}, 1003.0, None),
])
def test_stats_age(stats: dict[str, int], wall: float, age: float | None) -> None:
    assert stats_age(stats, wall) == age


@pytest.mark.parametrize(("f", "stats", "age", "expected"), [
    (facts(), FULL, 3.0, None),
    (facts("none"), {"rss": 1}, None, "no balloon device"),
    (facts(period=0), FULL, 3.0, "stats period 0"),
    (facts(), {"rss": 1, "last_update": 0}, None, "has not reported statistics"),
    (facts(), {"available": 500, "last_update": 1000}, 3.0, "does not report 'usable'"),
    (facts(), FULL, 51.0, "51s old (period 10s)"),
    (facts(period=2), FULL, STALE_MIN_S, None),  # short periods: 30 s of grace all the same
])
def test_balloon_problem(f: DomainFacts, stats: dict[str, int], age: float | None,
                         expected: str | None) -> None:
    problem = balloon_problem(f, stats, age)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem
