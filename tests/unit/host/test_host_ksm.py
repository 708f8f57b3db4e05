from __future__ import annotations

import errno
from pathlib import Path

import pytest

from overcommit.host.base import Change
from overcommit.host.ksm import (
    OOM_NOTE,
    KsmSource,
    find_ksmd_pid,
    ksm_saved_bytes,
    ksmd_cpu_seconds,
)
from testkit.fakes.kernel import CLOCK_TICKS, KSMD_PID, FakeKernel, stat_line


def ksm(name: str) -> str:
    return f"sys/kernel/mm/ksm/{name}"


def names(paths: list[str]) -> list[str]:
    return [path.rpartition("/")[2] for path in paths]


# --- reading ---


def test_read_canonicalises_advisor_mode(kernel: FakeKernel) -> None:
    assert kernel.get(ksm("advisor_mode")) == "[none] scan-time"
    assert KsmSource(kernel).read().settings[ksm("advisor_mode")] == "none"
    kernel.set_advisor("scan-time")
    assert kernel.get(ksm("advisor_mode")) == "none [scan-time]"
    assert KsmSource(kernel).read().settings[ksm("advisor_mode")] == "scan-time"


def test_read_reports_settings_and_signed_counters(kernel: FakeKernel) -> None:
    kernel.merge(shared=10, sharing=90)
    kernel.set(ksm("general_profit"), "-4096")
    reading = KsmSource(kernel).read()
    assert reading.present
    assert reading.settings[ksm("pages_to_scan")] == "100"
    assert reading.counters["pages_sharing"] == 90
    assert reading.counters["general_profit"] == -4096


def test_only_existing_files_are_read(host_root: Path) -> None:
    old = FakeKernel(host_root, missing=[ksm("smart_scan"), ksm("advisor_mode"),
                                        ksm("pages_skipped")])
    reading = KsmSource(old).read()
    assert ksm("smart_scan") not in reading.settings
    assert ksm("advisor_mode") not in reading.settings
    assert "pages_skipped" not in reading.counters


def test_absent_ksm_reads_as_not_present(uksm_kernel: FakeKernel) -> None:
    assert KsmSource(uksm_kernel).read().present is False


def test_owns_only_its_setting_files(kernel: FakeKernel) -> None:
    source = KsmSource(kernel)
    assert source.owns(ksm("run"))
    assert source.owns("/" + ksm("run"))
    assert not source.owns(ksm("pages_shared"))  # a counter, not a setting
    assert not source.owns("sys/kernel/mm/uksm/run")


# --- only differences, recorded as changes ---


def test_nothing_written_when_everything_matches(kernel: FakeKernel) -> None:
    result = KsmSource(kernel).apply({ksm("run"): "0", ksm("pages_to_scan"): "100",
                                      ksm("advisor_mode"): "none"})
    assert result.ok and result.changes == []
    assert kernel.writes == []


def test_changes_carry_before_and_after(kernel: FakeKernel) -> None:
    result = KsmSource(kernel).apply({ksm("pages_to_scan"): "1250",
                                      ksm("sleep_millisecs"): " 0040 "})
    assert result.ok
    assert result.changes == [Change(ksm("pages_to_scan"), "100", "1250"),
                              Change(ksm("sleep_millisecs"), "20", "40")]
    assert kernel.get(ksm("sleep_millisecs")) == "40"


def test_run_is_written_last(kernel: FakeKernel) -> None:
    KsmSource(kernel).apply({ksm("run"): "1", ksm("pages_to_scan"): "300",
                             ksm("sleep_millisecs"): "50", ksm("use_zero_pages"): "1"})
    assert names(kernel.written()) == ["pages_to_scan", "sleep_millisecs", "use_zero_pages",
                                       "run"]


def test_foreign_paths_are_ignored(kernel: FakeKernel) -> None:
    result = KsmSource(kernel).apply({"proc/sys/vm/swappiness": "10"})
    assert result.ok and result.changes == [] and kernel.writes == []


# --- advisor and pages_to_scan ---


def test_advisor_off_is_written_before_pages_to_scan(kernel: FakeKernel) -> None:
    kernel.set_advisor("scan-time")
    result = KsmSource(kernel).apply({ksm("advisor_mode"): "none", ksm("pages_to_scan"): "800"})
    assert result.ok, result.errors
    assert names(kernel.written()) == ["advisor_mode", "pages_to_scan"]
    assert kernel.get(ksm("pages_to_scan")) == "800"


def test_pages_to_scan_compared_after_the_advisor_reset(kernel: FakeKernel) -> None:
    kernel.set_advisor("scan-time")
    kernel.set(ksm("pages_to_scan"), "2345")  # the advisor's current rate
    result = KsmSource(kernel).apply({ksm("advisor_mode"): "none", ksm("pages_to_scan"): "100"})
    assert result.ok
    assert names(kernel.written()) == ["advisor_mode"]  # the switch already reset it to 100


def test_advisor_on_comes_after_pages_to_scan_and_its_tuning(kernel: FakeKernel) -> None:
    result = KsmSource(kernel).apply({
        ksm("advisor_mode"): "scan-time",
        ksm("pages_to_scan"): "300",
        ksm("advisor_min_pages_to_scan"): "1000",
        ksm("advisor_target_scan_time"): "60",
    })
    assert result.ok, result.errors
    assert names(kernel.written()) == ["advisor_min_pages_to_scan", "advisor_target_scan_time",
                                       "pages_to_scan", "advisor_mode"]
    # The advisor starts from the min we wrote before switching it on.
    assert kernel.get(ksm("pages_to_scan")) == "1000"


def test_pages_to_scan_refused_while_advisor_stays_on(kernel: FakeKernel) -> None:
    kernel.set_advisor("scan-time")
    result = KsmSource(kernel).apply({ksm("pages_to_scan"): "300",
                                      ksm("sleep_millisecs"): "10"})
    assert [(e.path, e.errno) for e in result.errors] == [(ksm("pages_to_scan"), errno.EINVAL)]
    assert "advisor" in result.errors[0].reason
    assert kernel.writes == [(ksm("sleep_millisecs"), "10")]  # never tried the refused one


def test_failed_advisor_switch_does_not_try_pages_to_scan(kernel: FakeKernel) -> None:
    kernel.set_advisor("scan-time")
    kernel.fail_next(ksm("advisor_mode"), errno.EIO)
    result = KsmSource(kernel).apply({ksm("advisor_mode"): "none", ksm("pages_to_scan"): "300"})
    assert {(e.path, e.errno) for e in result.errors} == {
        (ksm("advisor_mode"), errno.EIO), (ksm("pages_to_scan"), errno.EINVAL)}
    assert names([rel for rel, _ in kernel.writes]) == ["advisor_mode"]


# --- merge_across_nodes / max_page_sharing and EBUSY ---


def test_ebusy_without_allow_unmerge_is_reported(kernel: FakeKernel) -> None:
    kernel.set(ksm("run"), "1")
    kernel.merge(shared=100, sharing=900)
    result = KsmSource(kernel).apply({ksm("merge_across_nodes"): "0"})
    assert [(e.path, e.errno) for e in result.errors] == [(ksm("merge_across_nodes"),
                                                           errno.EBUSY)]
    assert "ksm.allowUnmerge: true" in result.errors[0].reason
    assert "merged" in result.errors[0].reason
    assert (ksm("run"), "2") not in kernel.writes
    assert kernel.get(ksm("pages_sharing")) == "900"


def test_ebusy_with_allow_unmerge_unmerges_then_restores_run(kernel: FakeKernel) -> None:
    kernel.set(ksm("run"), "1")
    kernel.merge(shared=100, sharing=900)
    result = KsmSource(kernel).apply(
        {ksm("merge_across_nodes"): "0", ksm("max_page_sharing"): "512"}, allow_unmerge=True)
    assert result.ok, result.errors
    assert kernel.writes == [
        (ksm("merge_across_nodes"), "0"),  # EBUSY
        (ksm("run"), "2"),
        (ksm("merge_across_nodes"), "0"),
        (ksm("max_page_sharing"), "512"),  # no second unmerge needed
        (ksm("run"), "1"),  # back to what it was
    ]
    assert result.changes == [
        Change(ksm("run"), "1", "2"),
        Change(ksm("merge_across_nodes"), "1", "0"),
        Change(ksm("max_page_sharing"), "256", "512"),
        Change(ksm("run"), "2", "1"),
    ]
    assert OOM_NOTE in result.notes


def test_unmerge_restores_the_desired_run(kernel: FakeKernel) -> None:
    kernel.merge(shared=5, sharing=5)
    result = KsmSource(kernel).apply({ksm("max_page_sharing"): "64", ksm("run"): "1"},
                                     allow_unmerge=True)
    assert result.ok
    assert kernel.written()[-1] == ksm("run") and kernel.get(ksm("run")) == "1"


def test_no_unmerge_when_nothing_is_merged(kernel: FakeKernel) -> None:
    result = KsmSource(kernel).apply({ksm("merge_across_nodes"): "0"}, allow_unmerge=True)
    assert result.ok and result.notes == []
    assert kernel.writes == [(ksm("merge_across_nodes"), "0")]


def test_same_max_page_sharing_is_not_written(kernel: FakeKernel) -> None:
    kernel.merge(shared=5, sharing=5)
    assert KsmSource(kernel).apply({ksm("max_page_sharing"): "256"}).ok
    assert kernel.writes == []


def test_failed_unmerge_reports_both_and_restores_run(kernel: FakeKernel) -> None:
    kernel.set(ksm("run"), "1")
    kernel.merge(shared=5, sharing=5)
    kernel.fail_next(ksm("run"), errno.ENOMEM)  # unmerging ran out of memory
    result = KsmSource(kernel).apply({ksm("merge_across_nodes"): "0"}, allow_unmerge=True)
    assert {(e.path, e.errno) for e in result.errors} == {
        (ksm("run"), errno.ENOMEM), (ksm("merge_across_nodes"), errno.EBUSY)}
    assert kernel.get(ksm("run")) == "1"
    assert kernel.get(ksm("merge_across_nodes")) == "1"


def test_failed_unmerge_is_not_retried_for_the_second_setting(kernel: FakeKernel) -> None:
    kernel.set(ksm("run"), "1")
    kernel.merge(shared=5, sharing=5)
    kernel.fail_next(ksm("run"), errno.EINTR)
    result = KsmSource(kernel).apply(
        {ksm("merge_across_nodes"): "0", ksm("max_page_sharing"): "512"}, allow_unmerge=True)
    assert sorted((e.path, e.errno) for e in result.errors) == sorted([
        (ksm("run"), errno.EINTR), (ksm("merge_across_nodes"), errno.EBUSY),
        (ksm("max_page_sharing"), errno.EBUSY)])
    assert kernel.writes.count((ksm("run"), "2")) == 1
    assert kernel.get(ksm("run")) == "1"


def test_desired_unmerge_also_unlocks_busy_settings(kernel: FakeKernel) -> None:
    kernel.set(ksm("run"), "1")
    kernel.merge(shared=5, sharing=5)
    result = KsmSource(kernel).apply({ksm("run"): "2", ksm("merge_across_nodes"): "0"})
    assert result.ok, result.errors
    assert kernel.get(ksm("merge_across_nodes")) == "0"
    assert kernel.get(ksm("run")) == "2"
    assert kernel.written().count(ksm("run")) == 1


# --- run ---


def test_run_unmerge_is_satisfied_once_done(kernel: FakeKernel) -> None:
    kernel.set(ksm("run"), "1")
    kernel.merge(shared=5, sharing=50)
    first = KsmSource(kernel).apply({ksm("run"): "2"})
    assert first.changes == [Change(ksm("run"), "1", "2")]
    assert OOM_NOTE in first.notes
    assert kernel.get(ksm("pages_sharing")) == "0"
    assert KsmSource(kernel).apply({ksm("run"): "2"}).changes == []
    kernel.set(ksm("run"), "0")  # stopped with nothing merged counts as unmerged too
    assert KsmSource(kernel).apply({ksm("run"): "2"}).changes == []


def test_run_unmerge_written_when_stopped_but_still_merged(kernel: FakeKernel) -> None:
    kernel.merge(shared=5, sharing=50)
    result = KsmSource(kernel).apply({ksm("run"): "2"})
    assert result.changes == [Change(ksm("run"), "0", "2")]


@pytest.mark.parametrize(("name", "value"), [
    ("run", "3"), ("run", "-1"), ("max_page_sharing", "1"), ("merge_across_nodes", "2"),
    ("advisor_mode", "fast"), ("advisor_target_scan_time", "0"), ("pages_to_scan", "ten"),
])
def test_values_the_kernel_rejects_are_never_written(kernel: FakeKernel, name: str,
                                                     value: str) -> None:
    result = KsmSource(kernel).apply({ksm(name): value})
    assert [(e.path, e.errno) for e in result.errors] == [(ksm(name), errno.EINVAL)]
    assert kernel.writes == []


# --- errors never stop the rest ---


def test_missing_file_is_an_error_not_an_exception(host_root: Path) -> None:
    old = FakeKernel(host_root, missing=[ksm("smart_scan")])
    result = KsmSource(old).apply({ksm("smart_scan"): "0", ksm("pages_to_scan"): "200"})
    assert [(e.path, e.errno) for e in result.errors] == [(ksm("smart_scan"), errno.ENOENT)]
    assert "not present on this kernel" in result.errors[0].reason
    assert old.get(ksm("pages_to_scan")) == "200"


def test_ksm_absent_on_uksm_kernel(uksm_kernel: FakeKernel) -> None:
    result = KsmSource(uksm_kernel).apply({ksm("run"): "1"})
    assert [e.errno for e in result.errors] == [errno.ENOENT]
    assert "KSM is not present on this kernel" in result.errors[0].reason


def test_one_failed_write_does_not_stop_the_others(kernel: FakeKernel) -> None:
    kernel.fail_next(ksm("sleep_millisecs"), errno.EIO)
    result = KsmSource(kernel).apply({ksm("sleep_millisecs"): "50", ksm("use_zero_pages"): "1",
                                      ksm("run"): "1"})
    assert [(e.path, e.errno, e.errno_name) for e in result.errors] == [
        (ksm("sleep_millisecs"), errno.EIO, "EIO")]
    assert names(kernel.written()) == ["use_zero_pages", "run"]


# --- ksmd and savings ---


def test_find_ksmd_pid_skips_impostors(kernel: FakeKernel) -> None:
    assert find_ksmd_pid(kernel) == KSMD_PID


def test_find_uksmd_pid(uksm_kernel: FakeKernel) -> None:
    assert find_ksmd_pid(uksm_kernel) is None
    assert find_ksmd_pid(uksm_kernel, comm="uksmd") == KSMD_PID


def test_ksmd_cpu_seconds(kernel: FakeKernel) -> None:
    assert ksmd_cpu_seconds(kernel, KSMD_PID, CLOCK_TICKS) == pytest.approx((1234 + 566) / 100)


def test_ksmd_cpu_seconds_survives_odd_comm(kernel: FakeKernel) -> None:
    kernel.set(f"proc/{KSMD_PID}/stat", stat_line(KSMD_PID, "a) (b c", 2, 300, 200))
    assert ksmd_cpu_seconds(kernel, KSMD_PID, 100) == pytest.approx(5.0)


def test_ksmd_cpu_seconds_default_clock(kernel: FakeKernel) -> None:
    assert ksmd_cpu_seconds(kernel, KSMD_PID) > 0


def test_ksmd_cpu_seconds_of_gone_process(kernel: FakeKernel) -> None:
    with pytest.raises(ProcessLookupError):
        ksmd_cpu_seconds(kernel, 99999)


def test_ksm_saved_bytes() -> None:
    counters = {"pages_shared": 10, "pages_sharing": 90, "ksm_zero_pages": 6}
    assert ksm_saved_bytes(counters, 4096) == 96 * 4096
    assert ksm_saved_bytes({}, 4096) == 0
