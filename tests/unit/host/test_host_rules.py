"""The kernel's rules, declared once per source (host.rules, host.catalog) and asked by the
planner, the engine and the sources alike."""

from __future__ import annotations

from pathlib import Path

from overcommit.host import catalog
from overcommit.host.ksm import KSM, KsmSource
from overcommit.host.rules import CounterLookup
from overcommit.host.uksm import UKSM
from overcommit.planning.restores import needs_no_restore, preview, to_record
from testkit.fakes.kernel import FakeKernel

RUN, PAGES, ADVISOR = KSM.path("run"), KSM.path("pages_to_scan"), KSM.path("advisor_mode")


def merged(pages: int) -> CounterLookup:
    return lambda source, name: pages if (source, name) == ("ksm", "pages_shared") else 0


def test_run_2_is_a_stopped_ksm_only_with_nothing_merged() -> None:
    assert KSM.same("run", "2", "2")
    assert KSM.same("run", "2", "0", merged(0))
    assert not KSM.same("run", "2", "0", merged(5))  # stopped, but pages are still merged
    assert not KSM.same("run", "0", "2")  # the other way round is a real change


def test_the_planner_sees_what_the_source_would_write() -> None:
    # Stopped with pages merged: the source writes run=2 (an unmerge), so the preview shows it
    # and its original is recorded first (both used to miss it).
    assert [(c.path, c.before, c.after) for c in preview({RUN: "2"}, {RUN: "0"}, merged(5))] \
        == [(RUN, "0", "2")]
    assert to_record({RUN: "2"}, {RUN: "0"}, {}, merged(5)) == [RUN]
    assert preview({RUN: "2"}, {RUN: "0"}, merged(0)) == []
    assert not needs_no_restore(RUN, {RUN: "0"}, "2", merged(5))
    assert needs_no_restore(RUN, {RUN: "0"}, "2", merged(0))


def test_the_source_asks_the_same_rule(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path / "host")
    source = KsmSource(kernel)
    kernel.set(RUN, "0")
    assert not source.differs("run", "2", {"run": "0"})  # nothing merged
    kernel.merge(shared=3, sharing=9)
    assert source.differs("run", "2", {"run": "0"})


def test_pages_to_scan_is_refused_while_the_advisor_runs() -> None:
    assert catalog.refusal(PAGES, {ADVISOR: "scan-time"}) is not None
    assert catalog.refusal(PAGES, {ADVISOR: "none"}) is None
    assert catalog.refusal(PAGES, {}) is None  # a kernel without the advisor
    assert catalog.refusal(ADVISOR, {ADVISOR: "scan-time"}) is None
    assert KSM.requirements({"pages_to_scan": "700"}) == {"advisor_mode": "none"}


def test_resets_are_looked_up_both_ways() -> None:
    assert catalog.resets_of(ADVISOR) == [PAGES]
    assert catalog.resetters_of(PAGES) == [ADVISOR]
    governor = UKSM.path("cpu_governor")
    assert set(catalog.resets_of(governor)) == {UKSM.path("max_cpu_percentage"),
                                                UKSM.path("cpu_ratios")}
    assert catalog.resetters_of(UKSM.path("eval_intervals")) == []  # left out on purpose


def test_uksm_sleep_reads_back_within_a_jiffy() -> None:
    assert UKSM.same("sleep_millisecs", "25", "30")
    assert not UKSM.same("sleep_millisecs", "25", "40")
    assert not UKSM.same("sleep_millisecs", "25", "20")


def test_paths_split_into_source_and_file() -> None:
    assert catalog.split(PAGES) == ("ksm", "pages_to_scan")
    assert catalog.split("proc/sys/vm/swappiness") == ("swap", "swappiness")
    assert catalog.split("some/other/file") == ("some/other", "file")
