from __future__ import annotations

import errno
from pathlib import Path

import pytest

from overcommit.host.base import Change
from overcommit.host.swap import SwapSource, parse_swaps
from overcommit.host.zswap import ZswapSource
from testkit.fakes.kernel import FakeKernel


def zswap(name: str) -> str:
    return f"sys/module/zswap/parameters/{name}"


SWAPPINESS = "proc/sys/vm/swappiness"


# --- zswap ---


def test_zswap_reads_parameters_and_pool_counters(kernel: FakeKernel) -> None:
    reading = ZswapSource(kernel).read()
    assert reading.present
    assert reading.settings[zswap("enabled")] == "N"
    assert reading.settings[zswap("compressor")] == "lzo"
    assert reading.counters == {"zswap_pool_bytes": 10240 * 1024,
                                "zswapped_bytes": 40960 * 1024,
                                "zswpin": 50, "zswpout": 200, "zswpwb": 3}


def test_zswap_compressor_written_before_enabled(kernel: FakeKernel) -> None:
    result = ZswapSource(kernel).apply({zswap("enabled"): "Y", zswap("compressor"): "zstd",
                                        zswap("max_pool_percent"): "25"})
    assert result.ok
    assert [rel for rel, _ in kernel.writes] == [zswap("compressor"), zswap("max_pool_percent"),
                                                 zswap("enabled")]
    assert result.changes[-1] == Change(zswap("enabled"), "N", "Y")


def test_zswap_unknown_compressor_is_explained(kernel: FakeKernel) -> None:
    result = ZswapSource(kernel).apply({zswap("compressor"): "brotli", zswap("enabled"): "Y"})
    assert [(e.path, e.errno) for e in result.errors] == [(zswap("compressor"), errno.ENOENT)]
    assert result.errors[0].reason == (
        "compressor brotli is not available in this kernel (crypto module missing)")
    assert kernel.get(zswap("enabled")) == "Y"  # the rest still applied


def test_zswap_bool_spellings_are_canonical(kernel: FakeKernel) -> None:
    source = ZswapSource(kernel)
    assert source.apply({zswap("enabled"): "n"}).changes == []
    assert source.apply({zswap("shrinker_enabled"): "1"}).changes == [
        Change(zswap("shrinker_enabled"), "N", "Y")]


def test_zswap_parameters_missing_on_newer_kernels(host_root: Path) -> None:
    newer = FakeKernel(host_root, missing=[zswap("zpool"), zswap("same_filled_pages_enabled")])
    source = ZswapSource(newer)
    assert zswap("zpool") not in source.read().settings
    result = source.apply({zswap("zpool"): "zbud", zswap("max_pool_percent"): "30"})
    assert [(e.path, e.errno) for e in result.errors] == [(zswap("zpool"), errno.ENOENT)]
    assert "not present on this kernel" in result.errors[0].reason
    assert newer.get(zswap("max_pool_percent")) == "30"


def test_zswap_absent(host_root: Path) -> None:
    no_zswap = FakeKernel(host_root, missing=["sys/module/zswap"])
    assert ZswapSource(no_zswap).read().present is False
    result = ZswapSource(no_zswap).apply({zswap("enabled"): "Y"})
    assert "zswap is not present on this kernel" in result.errors[0].reason


@pytest.mark.parametrize(("name", "value"), [
    ("accept_threshold_percent", "101"), ("enabled", "maybe"), ("compressor", "lz4 zstd"),
    ("max_pool_percent", "-5"),
])
def test_zswap_invalid_values_not_written(kernel: FakeKernel, name: str, value: str) -> None:
    result = ZswapSource(kernel).apply({zswap(name): value})
    assert [e.errno for e in result.errors] == [errno.EINVAL]
    assert kernel.writes == []


# --- swap ---


def test_swap_reads_swappiness_and_counters(kernel: FakeKernel) -> None:
    reading = SwapSource(kernel).read()
    assert reading.settings == {SWAPPINESS: "60"}
    assert reading.counters == {
        "swap_devices": 1,
        "swap_size_bytes": 4194300 * 1024,
        "swap_used_bytes": 94300 * 1024,
        "swap_total_bytes": 4194300 * 1024,
        "swap_free_bytes": 4100000 * 1024,
        "pswpin": 1200,
        "pswpout": 3400,
    }


def test_swap_applies_swappiness(kernel: FakeKernel) -> None:
    source = SwapSource(kernel)
    assert source.apply({SWAPPINESS: "10"}).changes == [Change(SWAPPINESS, "60", "10")]
    assert source.apply({SWAPPINESS: "10"}).changes == []
    result = source.apply({SWAPPINESS: "201"})
    assert [e.errno for e in result.errors] == [errno.EINVAL]


def test_parse_swaps_without_devices() -> None:
    header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority"
    assert parse_swaps(header) == {"swap_devices": 0, "swap_size_bytes": 0,
                                   "swap_used_bytes": 0}
