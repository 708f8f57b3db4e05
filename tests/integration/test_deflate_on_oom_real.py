"""Deflate-on-OOM with a real TCG guest under the real libvirtd (root).

The guest's domain XML goes through the shipped KubeVirt hook
(deploy/kubevirt/autodeflate-hook/onDefineDomain.py, run as KubeVirt's sidecar-shim runs it:
``--vmi <JSON> --domain <XML>``, the output is what libvirt defines), so its balloon deflates on
OOM (libvirt ``autodeflate='on'``), which the guest's driver must negotiate. The engine shrinks
it; the guest then asks for more than the balloon left it, all at once -- faster than any host
rule can react. Its kernel takes pages back from the balloon instead of OOM-killing, and the
next cycle names it: the guest is under pressure because it "took N MiB back from its
balloon", it grows, and it is not shrunk again.

What this does not show: KubeVirt itself running the hook (no KubeVirt on this machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overcommit.api.model import policy_from_object
from overcommit.reconcile.guests import VirtSettings
from overcommit.reconcile.node import NodeReconciler
from overcommit.virt.domainxml import parse_domain_xml
from overcommit.virt.model import GuestDecision
from testkit import guests
from testkit.cases import policy_document
from testkit.waiting import wait_for
from tests.integration.test_balloon_real import URI, current_mib

pytestmark = [pytest.mark.root, pytest.mark.slow]

MAX_MIB = 512
NAME = f"oc-deflate-{os.getpid()}"


HOOK = Path(__file__).resolve().parents[2] / "deploy/kubevirt/autodeflate-hook/onDefineDomain.py"


def through_the_hook(domain_xml: str) -> str:
    vmi = json.dumps({"metadata": {"name": NAME, "namespace": "default"}})
    done = subprocess.run([str(HOOK), "--vmi", vmi, "--domain", domain_xml],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def guest(libvirt_conn: Any) -> Iterator[Any]:
    dom = guests.define_guest(libvirt_conn, NAME, memory_mib=MAX_MIB, max_memory_mib=MAX_MIB,
                              stats_period=1, share_pages=False, transform=through_the_hook)
    try:
        guests.wait_booted(dom, timeout=180)
        assert parse_domain_xml(dom.XMLDesc(0)).autodeflate, "libvirt dropped autodeflate"
        assert guests.balloon_deflates_on_oom(dom), "the guest did not negotiate deflate-on-OOM"
        yield dom
    finally:
        guests.destroy_guest(dom)


def decision_for(engine: NodeReconciler, policy: Any) -> GuestDecision:
    report = engine.cycle([policy], {})
    assert report.guests is not None and report.guests.errors == []
    return next(d for d in report.guests.decisions if d.guest.domain == NAME)


def test_a_guest_that_deflates_on_oom_takes_pages_back_and_is_grown_not_shrunk(
        libvirt_conn: Any, guest: Any, tmp_path: Path) -> None:
    # Below 99 % MemAvailable the node counts as short (Soft): idle guests give, a step a cycle.
    spec = {"balloon": {"mode": "Auto", "vmSelector": {"domainNamePattern": NAME},
                        "statsPeriodSeconds": 1,
                        "auto": {"hostAvailableLowPercent": 99, "hostAvailableHighPercent": 100,
                                 "maxStepPercent": 25, "intervalSeconds": 1}}}
    policy = policy_from_object(policy_document("deflate", spec))
    engine = NodeReconciler(state_dir=tmp_path / "state", virt=VirtSettings(uris=(URI,)))
    try:
        def shrunk() -> bool:
            decision_for(engine, policy)
            return current_mib(libvirt_conn, guest) <= MAX_MIB // 2
        wait_for(shrunk, 90, "the idle guest to give half of its memory", interval=1.5)
        size = current_mib(libvirt_conn, guest)
        usable = guests.guest_meminfo(guest).get("MemAvailable", 0) // 1024
        before = guests.oom_kills(guest)
        # All at once, between two cycles: more than the balloon left it free.
        guests.eat(guest, usable + 192)
        eaten_at = int(time.time())
        assert guests.oom_kills(guest) == before, "the guest's kernel killed a process"
        grown_by_itself = current_mib(libvirt_conn, guest)
        assert grown_by_itself >= size + 128, "the guest took no pages back from its balloon"
        wait_for(lambda: guest.memoryStats().get("last_update", 0) > eaten_at, 10,
                 "a statistics sample taken after the guest ate")

        decision = decision_for(engine, policy)
        assert decision.pressured
        assert "back from its balloon" in decision.reason and "deflate-on-OOM" in decision.reason
        assert decision.target_kib is not None and \
            decision.target_kib > decision.guest.current_kib  # grown, not fought
        # Still short (Soft) and its use fell back: the next cycles do not take the pages again.
        guests.stop_eating(guest)
        for _ in range(3):
            time.sleep(1)  # one decision per auto.intervalSeconds
            after = decision_for(engine, policy)
            assert after.target_kib is None or after.target_kib >= grown_by_itself * 1024, \
                after.reason
    finally:
        with contextlib.suppress(guests.GuestError):
            guests.stop_eating(guest)
        engine.restore()
