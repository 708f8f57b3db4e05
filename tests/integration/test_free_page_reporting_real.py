"""Free page reporting with real TCG guests under the real libvirtd (root).

KubeVirt gives a VM's balloon ``freePageReporting='on'`` by default: the guest tells the host
which pages it freed, and QEMU discards them. The planner counts on it (before Critical, a
guest that reports its free pages gives only beyond them), so this checks the premise on the
real thing -- what a guest frees goes back to the host without any balloon, and only there --
and that the agent reads the setting and the planner acts on it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overcommit.api.model import policy_from_object
from overcommit.reconcile.guests import VirtSettings
from overcommit.reconcile.node import NodeReconciler
from testkit import guests
from testkit.cases import policy_document
from testkit.waiting import wait_for
from tests.integration.test_balloon_real import URI

pytestmark = [pytest.mark.root, pytest.mark.slow]

MAX_MIB = 512
PREFIX = f"oc-fpr-{os.getpid()}-"


@pytest.fixture(scope="module")
def pair(libvirt_conn: Any) -> Iterator[dict[str, Any]]:
    doms = {name: guests.define_guest(libvirt_conn, PREFIX + name, memory_mib=MAX_MIB,
                                      max_memory_mib=MAX_MIB, stats_period=1, share_pages=False,
                                      free_page_reporting=name == "fpr")
            for name in ("fpr", "plain")}
    with guests.all_booted(doms) as booted:
        yield dict(booted)


def rss_mib(dom: Any) -> int:
    """What the guest's QEMU process holds on the host (libvirt's rss, KiB)."""
    return int(dom.memoryStats()["rss"]) // 1024


def test_what_a_reporting_guest_frees_goes_back_to_the_host_without_a_balloon(
        pair: dict[str, Any]) -> None:
    fpr, plain = pair["fpr"], pair["plain"]
    assert guests.balloon_reports_free_pages(fpr)
    assert not guests.balloon_reports_free_pages(plain)
    for dom in (fpr, plain):
        guests.eat(dom, 300)
    held = {name: rss_mib(dom) for name, dom in pair.items()}
    for dom in (fpr, plain):
        guests.stop_eating(dom)
    wait_for(lambda: rss_mib(fpr) <= held["fpr"] - 200, 60,
             "the reporting guest's freed memory to leave its QEMU process")
    assert rss_mib(plain) >= held["plain"] - 64, "the plain guest gave memory back by itself"


def test_before_critical_the_planner_leaves_a_reporting_guest_its_free_memory(
        pair: dict[str, Any], tmp_path: Path) -> None:
    # Below 99 % MemAvailable the node counts as short (Soft): idle guests give.
    spec = {"balloon": {"mode": "Auto", "vmSelector": {"domainNamePattern": PREFIX + "*"},
                        "statsPeriodSeconds": 1,
                        "auto": {"hostAvailableLowPercent": 99, "hostAvailableHighPercent": 100,
                                 "intervalSeconds": 1}}}
    policy = policy_from_object(policy_document("fpr", spec))
    engine = NodeReconciler(state_dir=tmp_path / "state", virt=VirtSettings(uris=(URI,)))
    try:
        def decided() -> dict[str, Any] | None:
            report = engine.cycle([policy], {})
            assert report.guests is not None and report.guests.errors == []
            seen = {d.guest.domain.removeprefix(PREFIX): d for d in report.guests.decisions
                    if d.guest.domain.startswith(PREFIX)}
            # The first sample of a guest only tells where it is, not where it is heading.
            known = all("first sample" not in d.reason for d in seen.values())
            return seen if known and len(seen) == 2 else None
        seen = wait_for(decided, 30, "decisions past each guest's first sample", interval=1.1)
        assert seen["fpr"].guest.free_page_reporting is True
        assert seen["plain"].guest.free_page_reporting is False
        assert seen["fpr"].target_kib in (None, seen["fpr"].guest.current_kib), \
            seen["fpr"].reason  # held
        assert "reports its free pages" in seen["fpr"].reason
        assert seen["plain"].target_kib is not None and \
            seen["plain"].target_kib < seen["plain"].guest.current_kib, seen["plain"].reason
    finally:
        with contextlib.suppress(Exception):
            engine.restore()
