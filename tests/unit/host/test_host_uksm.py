from __future__ import annotations

import errno

import pytest

from overcommit.host.base import Change
from overcommit.host.uksm import EVAL_INTERVALS_NOTE, UksmSource
from testkit.fakes.kernel import FakeKernel


def uksm(name: str) -> str:
    return f"sys/kernel/mm/uksm/{name}"


def names(paths: list[str]) -> list[str]:
    return [path.rpartition("/")[2] for path in paths]


def test_read_canonicalises_governor_and_ladders(uksm_kernel: FakeKernel) -> None:
    assert uksm_kernel.get(uksm("cpu_governor")) == "[full] medium low quiet "
    settings = UksmSource(uksm_kernel).read().settings
    assert settings[uksm("cpu_governor")] == "full"
    assert settings[uksm("cpu_ratios")] == "20 40 MAX/4 MAX/1"
    assert settings[uksm("eval_intervals")] == "1000 500 200 50"


def test_counters_parse_the_shifted_form(uksm_kernel: FakeKernel) -> None:
    uksm_kernel.set(uksm("full_scans"), "7 * 2^3")
    counters = UksmSource(uksm_kernel).read().counters
    assert counters["pages_scanned"] == 3 << 20
    assert counters["full_scans"] == 56
    assert counters["hash_strength"] == 64


def test_absent_on_a_ksm_kernel(kernel: FakeKernel) -> None:
    assert UksmSource(kernel).read().present is False
    result = UksmSource(kernel).apply({uksm("run"): "1"})
    assert [e.errno for e in result.errors] == [errno.ENOENT]
    assert "UKSM is not present" in result.errors[0].reason


def test_governor_first_then_compare_against_its_preset(uksm_kernel: FakeKernel) -> None:
    result = UksmSource(uksm_kernel).apply({
        uksm("cpu_ratios"): "10 20 40 75",  # quiet's preset: nothing left to write
        uksm("eval_intervals"): "2000 1000 1000 1000",
        uksm("cpu_governor"): "quiet",
    })
    assert result.ok
    assert uksm_kernel.writes == [(uksm("cpu_governor"), "quiet")]
    assert result.changes == [Change(uksm("cpu_governor"), "full", "quiet")]
    assert result.notes == []


def test_settings_after_the_governor_override_its_preset(uksm_kernel: FakeKernel) -> None:
    result = UksmSource(uksm_kernel).apply({uksm("max_cpu_percentage"): "30",
                                            uksm("cpu_governor"): "low", uksm("run"): "0"})
    assert result.ok
    assert names(uksm_kernel.written()) == ["cpu_governor", "max_cpu_percentage", "run"]
    assert result.changes[1] == Change(uksm("max_cpu_percentage"), "20", "30")  # low's preset


def test_cpu_ratios_only_written_when_they_differ(uksm_kernel: FakeKernel) -> None:
    source = UksmSource(uksm_kernel)
    assert source.apply({uksm("cpu_ratios"): " 20  40 MAX/4   MAX/1 "}).changes == []
    assert uksm_kernel.writes == []
    assert source.apply({uksm("cpu_ratios"): "20 40 MAX/3 MAX/1"}).ok
    assert uksm_kernel.writes == [(uksm("cpu_ratios"), "20 40 MAX/3 MAX/1")]
    assert source.apply({uksm("cpu_ratios"): "20 40 MAX/3 MAX/1"}).changes == []


def test_cpu_ratios_max_divisor_rounding_is_not_a_difference(uksm_kernel: FakeKernel) -> None:
    source = UksmSource(uksm_kernel)
    assert source.apply({uksm("cpu_ratios"): "20 40 MAX/9999 MAX/1"}).ok
    assert uksm_kernel.get(uksm("cpu_ratios")) == "20 40 MAX/10000 MAX/1 "
    assert source.apply({uksm("cpu_ratios"): "20 40 MAX/9999 MAX/1"}).changes == []
    assert len(uksm_kernel.writes) == 1


def test_eval_intervals_write_is_warned_about(uksm_kernel: FakeKernel) -> None:
    source = UksmSource(uksm_kernel)
    assert source.apply({uksm("eval_intervals"): "1000 500 200 50"}).notes == []
    result = source.apply({uksm("eval_intervals"): "900 500 200 50"})
    assert result.notes == [EVAL_INTERVALS_NOTE]
    assert uksm_kernel.get(uksm("eval_intervals")) == "900 500 200 50 "


def test_max_cpu_100_is_stored_as_99_and_then_left_alone(uksm_kernel: FakeKernel) -> None:
    source = UksmSource(uksm_kernel)
    first = source.apply({uksm("max_cpu_percentage"): "100"})
    assert first.changes == [Change(uksm("max_cpu_percentage"), "95", "99")]
    assert source.apply({uksm("max_cpu_percentage"): "100"}).changes == []
    assert source.apply({uksm("max_cpu_percentage"): "5"}).changes[0].after == "10"


def test_sleep_rounded_to_a_jiffy_is_not_rewritten(uksm_kernel: FakeKernel) -> None:
    source = UksmSource(uksm_kernel)
    assert source.apply({uksm("sleep_millisecs"): "30"}).changes != []
    assert uksm_kernel.get(uksm("sleep_millisecs")) == "32"  # HZ=250
    assert source.apply({uksm("sleep_millisecs"): "30"}).changes == []
    assert source.apply({uksm("sleep_millisecs"): "50"}).changes != []


def test_run_is_written_last(uksm_kernel: FakeKernel) -> None:
    UksmSource(uksm_kernel).apply({uksm("run"): "0", uksm("thrash_threshold"): "0",
                                   uksm("abundant_threshold"): "20"})
    assert names(uksm_kernel.written()) == ["abundant_threshold", "thrash_threshold", "run"]


@pytest.mark.parametrize(("name", "value"), [
    ("run", "2"), ("sleep_millisecs", "1001"), ("max_cpu_percentage", "101"),
    ("thrash_threshold", "100"), ("abundant_threshold", "100"), ("cpu_governor", "turbo"),
    ("cpu_ratios", "20 40 MAX/4"), ("cpu_ratios", "0 40 MAX/4 MAX/1"),
    ("cpu_ratios", "20 40 max/4 MAX/1"), ("cpu_ratios", "20 40 MAX/0 MAX/1"),
    ("eval_intervals", "1000 500 -1 50"),
])
def test_values_the_patch_rejects_are_never_written(uksm_kernel: FakeKernel, name: str,
                                                    value: str) -> None:
    result = UksmSource(uksm_kernel).apply({uksm(name): value})
    assert [(e.path, e.errno) for e in result.errors] == [(uksm(name), errno.EINVAL)]
    assert uksm_kernel.writes == []


def test_failed_governor_write_still_applies_the_rest(uksm_kernel: FakeKernel) -> None:
    uksm_kernel.fail_next(uksm("cpu_governor"), errno.EIO)
    result = UksmSource(uksm_kernel).apply({uksm("cpu_governor"): "low",
                                            uksm("thrash_threshold"): "30"})
    assert [(e.path, e.errno) for e in result.errors] == [(uksm("cpu_governor"), errno.EIO)]
    assert uksm_kernel.get(uksm("thrash_threshold")) == "30"
