"""The fake kernel must refuse what the real one refuses, or the other tests prove nothing."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from testkit.fakes.kernel import FakeKernel

KSM = "sys/kernel/mm/ksm"
UKSM = "sys/kernel/mm/uksm"


def refused(kernel: FakeKernel, rel: str, value: str) -> int:
    with pytest.raises(OSError) as caught:
        kernel.write(rel, value)
    return caught.value.errno or 0


def test_ksm_rules(kernel: FakeKernel) -> None:
    assert refused(kernel, f"{KSM}/run", "3") == errno.EINVAL
    assert refused(kernel, f"{KSM}/max_page_sharing", "1") == errno.EINVAL
    assert refused(kernel, f"{KSM}/pages_shared", "0") == errno.EACCES
    kernel.write(f"{KSM}/advisor_mode", "scan-time")
    assert kernel.get(f"{KSM}/pages_to_scan") == "500"  # reset to advisor_min_pages_to_scan
    assert refused(kernel, f"{KSM}/pages_to_scan", "100") == errno.EINVAL
    kernel.write(f"{KSM}/advisor_mode", "none")
    assert kernel.get(f"{KSM}/pages_to_scan") == "100"


def test_ksm_busy_while_merged_and_unmerge(kernel: FakeKernel) -> None:
    kernel.merge(shared=1, sharing=2)
    assert refused(kernel, f"{KSM}/merge_across_nodes", "0") == errno.EBUSY
    assert refused(kernel, f"{KSM}/max_page_sharing", "10") == errno.EBUSY
    kernel.write(f"{KSM}/max_page_sharing", "256")  # the current value: a no-op
    kernel.write(f"{KSM}/run", "2")
    assert kernel.get(f"{KSM}/pages_shared") == "0"
    assert kernel.get(f"{KSM}/run") == "2"
    kernel.write(f"{KSM}/merge_across_nodes", "0")


def test_uksm_rules(uksm_kernel: FakeKernel) -> None:
    k = uksm_kernel
    assert refused(k, f"{UKSM}/run", "2") == errno.EINVAL
    assert refused(k, f"{UKSM}/sleep_millisecs", "1001") == errno.EINVAL
    assert refused(k, f"{UKSM}/max_cpu_percentage", "101") == errno.EINVAL
    assert refused(k, f"{UKSM}/thrash_threshold", "100") == errno.EINVAL
    assert refused(k, f"{UKSM}/cpu_ratios", "20  40 MAX/4 MAX/1") == errno.EINVAL
    k.write(f"{UKSM}/max_cpu_percentage", "3")
    assert k.get(f"{UKSM}/max_cpu_percentage") == "10"
    k.write(f"{UKSM}/cpu_governor", "medium\n")
    assert k.get(f"{UKSM}/cpu_governor") == "full [medium] low quiet "
    assert k.get(f"{UKSM}/max_cpu_percentage") == "50"
    assert k.get(f"{UKSM}/eval_intervals") == "1000 500 400 100 "
    assert not k.exists(KSM)


def test_zswap_and_injection(kernel: FakeKernel) -> None:
    comp = "sys/module/zswap/parameters/compressor"
    assert refused(kernel, comp, "brotli") == errno.ENOENT
    kernel.fail_next(comp, errno.EIO)
    assert refused(kernel, comp, "zstd") == errno.EIO
    kernel.write(comp, "zstd")
    kernel.fail_always(comp, errno.EPERM)
    assert refused(kernel, comp, "lz4") == errno.EPERM
    assert refused(kernel, comp, "lz4") == errno.EPERM
    assert kernel.written() == [comp]
    assert [code for _, _, code in kernel.failed] == [errno.ENOENT, errno.EIO, errno.EPERM,
                                                      errno.EPERM]


def test_missing_files(host_root: Path) -> None:
    old = FakeKernel(host_root, missing=[f"{KSM}/advisor_mode"])
    assert refused(old, f"{KSM}/advisor_mode", "none") == errno.ENOENT
