"""Ballooning end to end with real TCG guests under the real libvirtd (root).

Static mode through ``overcommit run --once`` (the guest's own /proc/meminfo agrees), release
through ``overcommit restore``; Auto mode through the engine under a host-pressure setting
(an idle guest gives, a guest that starts eating gets back, no OOM kill); KSM merging across
guests reported as saved bytes; libvirtd stopped mid-run and started again; a guest destroyed
between observe and act.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from overcommit.agent.status import node_status
from overcommit.api.model import policy_from_object
from overcommit.api.schema import to_json
from overcommit.reconcile.guests import VirtSettings
from overcommit.reconcile.node import NodeReconciler
from testkit import guests, libvirtd
from testkit.cases import policy_document
from testkit.waiting import wait_for
from tests.integration.conftest import ksm_value

pytestmark = [pytest.mark.root, pytest.mark.slow]

URI = "qemu:///system"
MAX_MIB = 512
PREFIX = f"oc-bal-{os.getpid()}-"


@pytest.fixture(scope="module")
def conn(libvirt_conn: Any) -> Any:
    return libvirt_conn


@pytest.fixture(scope="module")
def pair(conn: Any) -> Iterator[dict[str, Any]]:
    """Two 512 MiB guests that share pages (KSM can merge them), booted in parallel."""
    doms = {name: guests.define_guest(conn, PREFIX + name, memory_mib=MAX_MIB,
                                      max_memory_mib=MAX_MIB, stats_period=2, share_pages=True)
            for name in ("a", "b")}
    with guests.all_booted(doms) as booted:
        yield dict(booted)


def engine(tmp_path: Path) -> NodeReconciler:
    return NodeReconciler(state_dir=tmp_path / "state", virt=VirtSettings(uris=(URI,)))


def current_mib(conn: Any, dom: Any) -> int:
    """The balloon's size through a fresh connection (a test may have restarted libvirtd)."""
    del conn
    import libvirt  # type: ignore[import-untyped]

    fresh = libvirt.open(URI)
    try:
        return int(fresh.lookupByName(dom.name()).info()[2]) // 1024
    finally:
        fresh.close()


def balloon_at(conn: Any, dom: Any, mib: int) -> Callable[[], bool]:
    """A condition for wait_for(): ``dom``'s balloon is at ``mib``."""
    return lambda: current_mib(conn, dom) == mib


def meminfo_total_at_most(dom: Any, mib: int) -> Callable[[], bool]:
    """A condition for wait_for(): the guest's own MemTotal is at most ``mib``."""
    return lambda: guests.guest_meminfo(dom).get("MemTotal", 0) // 1024 <= mib


def write_policy(tmp_path: Path, spec: dict[str, Any]) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy_document("real-balloon", spec)))
    return str(path)


def overcommit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "overcommit.cli", *args], capture_output=True,
                          text=True, timeout=180)


def test_static_shrinks_guests_and_their_meminfo_agrees(conn: Any, pair: dict[str, Any],
                                                         tmp_path: Path) -> None:
    spec = {"balloon": {"mode": "Static", "vmSelector": {"domainNamePattern": PREFIX + "*"},
                        "static": {"targetPercent": 60}}}
    args = ["--libvirt-uri", URI, "--state-dir", str(tmp_path / "state"), "-o", "json"]
    wait_for(lambda: all("usable" in conn.lookupByName(d.name()).memoryStats()
                         for d in pair.values()), 60, "balloon statistics from both guests")
    planned = overcommit("plan", "-f", write_policy(tmp_path, spec), *args)
    balloons = json.loads(planned.stdout)["balloons"]
    assert {b["domain"] for b in balloons} == {d.name() for d in pair.values()}
    assert all(abs(b["to"] - 0.6 * MAX_MIB * 2**20) < 2**20 and b["reason"] for b in balloons)

    ran = overcommit("run", "--once", "-f", write_policy(tmp_path, spec), *args)
    assert ran.returncode == 0, ran.stderr + ran.stdout
    target = int(MAX_MIB * 0.6)
    for dom in pair.values():
        wait_for(balloon_at(conn, dom, target), 30, "libvirt to report the target")
        # the guest itself sees its memory shrink by what the balloon took
        wait_for(meminfo_total_at_most(dom, target), 30,
                 f"{dom.name()}'s own MemTotal to drop to {target} MiB")
    status = json.loads(overcommit("status", *args).stdout)
    mine = [g for g in status["guests"] if g["domain"].startswith(PREFIX)]
    assert all(abs(g["currentBytes"] - 0.6 * MAX_MIB * 2**20) < 2**20 for g in mine)
    assert status["balloonedBytes"] >= 2 * (MAX_MIB - target - 1) * 2**20

    restored = overcommit("restore", *args)
    assert restored.returncode == 0, restored.stderr
    for dom in pair.values():
        wait_for(balloon_at(conn, dom, MAX_MIB), 30, "release to the maximum")
    record = json.loads((tmp_path / "state/originals.json").read_text())
    assert record["guests"] == [] and record["statsPeriods"] == {}
    # The policy's default statistics period (10 s) was the agent's change: the guests' own 2 s
    # is back.
    assert all("period='2'" in conn.lookupByName(d.name()).XMLDesc(0) for d in pair.values())


def test_auto_takes_from_idle_and_gives_to_the_eater_without_oom(conn: Any,
                                                                  pair: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    # "Host pressure setting": below 99% MemAvailable counts as short, so idle guests give.
    spec = {"balloon": {"mode": "Auto", "vmSelector": {"domainNamePattern": PREFIX + "*"},
                        "statsPeriodSeconds": 2,
                        "floor": {"guestFreeMarginPercent": 20},
                        "auto": {"hostAvailableLowPercent": 99, "hostAvailableHighPercent": 100,
                                 "maxStepPercent": 20, "intervalSeconds": 2}}}
    policy = policy_from_object(policy_document("auto", spec))
    node = engine(tmp_path)
    eater, idle = pair["a"], pair["b"]
    stop = threading.Event()
    failures: list[str] = []

    def agent_loop() -> None:  # the agent's cycle, every auto.intervalSeconds
        while not stop.is_set():
            report = node.cycle([policy], {})
            failures.extend(report.guests.errors)
            stop.wait(2)

    loop = threading.Thread(target=agent_loop, daemon=True)
    loop.start()
    try:
        wait_for(lambda: current_mib(conn, eater) < MAX_MIB * 0.7 and
                 current_mib(conn, idle) < MAX_MIB * 0.7, 60, "idle guests to give memory")
        shrunk = current_mib(conn, eater)
        before = guests.oom_kills(eater)
        # A process that starts eating: 8 MiB a second, well past what the guest had free.
        eaten = 0
        while eaten < shrunk // 2 + 64:
            guests.eat(eater, 8)
            eaten += 8
            time.sleep(1)
        wait_for(lambda: current_mib(conn, eater) > shrunk + 32, 30,
                 "the eating guest to be given memory back")
        assert guests.oom_kills(eater) == before, "the guest's kernel killed a process"
        assert current_mib(conn, idle) < MAX_MIB  # the idle one still gives
        assert failures == []
    finally:
        stop.set()
        loop.join(timeout=30)
        with contextlib.suppress(guests.GuestError):
            guests.stop_eating(eater)
        node.restore()
    for dom in pair.values():
        wait_for(balloon_at(conn, dom, MAX_MIB), 30, "release to the maximum")


def test_a_guest_destroyed_between_observe_and_act_fails_alone(conn: Any, pair: dict[str, Any],
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    doomed = guests.define_guest(conn, PREFIX + "doomed", memory_mib=MAX_MIB,
                                 max_memory_mib=MAX_MIB, stats_period=2)
    try:
        guests.wait_booted(doomed, timeout=180)
        wait_for(lambda: "usable" in doomed.memoryStats(), 60, "the doomed guest's statistics")
        spec = {"balloon": {"mode": "Static", "vmSelector": {"domainNamePattern": PREFIX + "*"},
                            "static": {"targetPercent": 70}}}
        node = engine(tmp_path)
        assert node.guests is not None
        real_observe = node.guests.observe

        def observe_then_destroy(now: float, vmis: Any = None) -> Any:
            report = real_observe(now, vmis)
            doomed.destroy()  # gone after libvirt reported it, before the balloon moves
            return report

        monkeypatch.setattr(node.guests, "observe", observe_then_destroy)
        report = node.cycle([policy_from_object(policy_document("doomed", spec))], {})
        assert {t.domain for t in report.guests.applied} == {d.name() for d in pair.values()}
        assert len(report.guests.errors) == 1 and doomed.name() in report.guests.errors[0]
        assert report.errors == []
        monkeypatch.undo()
        node.restore()
    finally:
        guests.destroy_guest(doomed)
    for dom in pair.values():
        wait_for(balloon_at(conn, dom, MAX_MIB), 30, "release to the maximum")


def test_ksm_merges_across_guests_and_the_status_reports_it(conn: Any, pair: dict[str, Any],
                                                             real_ksm: dict[str, str],
                                                             tmp_path: Path) -> None:
    spec = {"ksm": {"enabled": True, "pagesToScan": 2000, "sleepMillisecs": 10}}
    policy = policy_from_object(policy_document("ksm-guests", spec))
    node = engine(tmp_path)
    node.cycle([policy], {})
    # Two identical guest kernels and initramfs: thousands of identical pages.
    wait_for(lambda: int(ksm_value("pages_sharing")) > 2000, 120, "KSM to merge guest pages")
    report = node.cycle([policy], {})
    status = to_json(node_status(report, now="2026-12-03T12:00:00Z"))
    sharing = report.observation.counter("ksm", "pages_sharing")
    zero = report.observation.counter("ksm", "ksm_zero_pages")
    assert status["saved"]["mergedBytes"] == (sharing + zero) * report.observation.page_size
    assert status["saved"]["mergedBytes"] > 2000 * 4096
    assert status["guestCount"] >= 2
    node.restore()


def test_libvirtd_down_mid_run_fails_only_guests(conn: Any, pair: dict[str, Any],
                                                 real_ksm: dict[str, str],
                                                 tmp_path: Path) -> None:
    spec = {"ksm": {"enabled": True, "pagesToScan": 1500},
            "balloon": {"mode": "Static", "vmSelector": {"domainNamePattern": PREFIX + "*"},
                        "static": {"targetPercent": 80}}}
    policy = policy_from_object(policy_document("fault", spec))
    node = engine(tmp_path)
    try:
        assert node.cycle([policy], {}).ok
        libvirtd.stop_libvirtd()
        report = node.cycle([policy], {})
        assert report.errors == []  # KSM is unaffected
        assert report.guests.endpoints_down, "the dead endpoint must be reported"
        assert ksm_value("pages_to_scan") == "1500"
    finally:
        libvirtd.ensure_libvirtd()
    report = node.cycle([policy], {})
    assert not report.guests.endpoints_down
    assert {g.domain for g in report.guests.guests} >= {d.name() for d in pair.values()}
    node.restore()
    for dom in pair.values():
        wait_for(balloon_at(conn, dom, MAX_MIB), 30, "release after restart")
