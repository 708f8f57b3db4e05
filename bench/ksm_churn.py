"""A churning merge workload: like ``overcommit.demo.workload.MergeWorkload`` (N workers, each
``size_mib`` of ``MADV_MERGEABLE`` memory, the first ``shared_fraction`` of pages identical
across workers), but once told to go, every worker rewrites ``churn_percent`` of its pages
every second, all workers the same pages in the same second:

* a rewritten page in the shared part gets new content that every worker writes too
  (``churn-<index>-<tick>``): the old merged page is broken by the write (copy-on-write) and a
  new set of duplicates appears, which ksmd must find again (two scans: checksum, then merge);
* a rewritten page in the unique part stays unique (it only keeps ksmd's checksum busy).

The pages come from a fixed permutation of the worker's pages (a stride coprime to the page
count), ``per_tick`` pages a second, so every page is rewritten once every
``pages / per_tick`` seconds and the rewrites are spread over the whole area, not one region.
The achievable saving is the same as the write-once workload's, ``(N - 1) x shared pages``;
how much of it a strategy keeps merged depends on how fast it re-finds the new duplicates.

The worker is this module run with ``python -m bench.ksm_churn``; the schedule is the pure
:func:`churn_pages` (unit-tested).
"""

from __future__ import annotations

import math
import mmap
import os
import select
import sys
import time
from dataclasses import dataclass
from typing import ClassVar, Self

from overcommit.demo.workload import MergeWorkload

STRIDE = 7919  # a prime: coprime to any power-of-two page count


def per_tick(pages: int, churn_percent: float) -> int:
    """Pages rewritten per second: ``churn_percent`` of ``pages``, at least one if any."""
    if churn_percent <= 0:
        return 0
    return max(1, round(pages * churn_percent / 100.0))


def churn_pages(tick: int, pages: int, count: int) -> list[int]:
    """The page indices rewritten in second ``tick`` (0, 1, ...): ``count`` consecutive
    entries of the permutation ``j -> j * STRIDE mod pages``; over ``pages / count`` ticks
    every page comes up exactly once (when ``count`` divides ``pages``)."""
    if pages <= 0 or count <= 0:
        return []
    stride = STRIDE if math.gcd(STRIDE, pages) == 1 else 1
    start = tick * count
    return [(j * stride) % pages for j in range(start, start + count)]


def page_content(index: int, tick: int | None, shared_pages: int, seed: int, unique: bytes,
                 page_size: int = mmap.PAGESIZE) -> bytes:
    """A page's bytes: identical across workers in the shared part (at the same ``tick``),
    unique to the worker (``seed`` and a random ``unique``) elsewhere; ``tick`` None is the
    initial fill, the same as the write-once workload's."""
    if index < shared_pages:
        stamp = (b"shared-page-%012d" % index if tick is None
                 else b"churn-%012d-%08d" % (index, tick))
    else:
        stamp = b"unique-%d-%s-%012d-%s" % (seed, unique.hex().encode(), index,
                                            b"init" if tick is None else b"%d" % tick)
    return (stamp * (page_size // len(stamp) + 1))[:page_size]


def worker(size: int, shared_pages: int, seed: int, churn_percent: float) -> None:
    """Fill, say "ready", wait for "go <epoch>" on stdin, then churn once a second until
    stdin closes."""
    page = mmap.PAGESIZE
    pages = size // page
    area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    area.madvise(mmap.MADV_MERGEABLE)
    unique = os.urandom(16)
    for index in range(pages):
        area[index * page:(index + 1) * page] = page_content(index, None, shared_pages, seed,
                                                             unique, page)
    print("ready", flush=True)
    line = sys.stdin.readline()
    if not line.startswith("go "):
        return  # stdin closed (or anything else): hold nothing more, leave
    t0 = float(line.split()[1])
    count = per_tick(pages, churn_percent)
    tick = 0
    while True:
        wait = max(0.0, t0 + tick + 1 - time.time())
        if select.select([sys.stdin], [], [], wait)[0] and not sys.stdin.readline():
            return  # EOF: the parent is done
        if time.time() < t0 + tick + 1:
            continue
        for index in churn_pages(tick, pages, count):
            area[index * page:(index + 1) * page] = page_content(index, tick, shared_pages,
                                                                 seed, unique, page)
        tick += 1


@dataclass
class ChurnWorkload(MergeWorkload):
    """``workers`` churning processes of ``size_mib`` each (see the module doc): the demo's
    merge workload with workers that rewrite a share of their pages every second."""

    churn_percent: float = 1.0
    kind: ClassVar[str] = "churn"

    def worker_argv(self, size: int, seed: int) -> list[str]:
        return [sys.executable, "-m", "bench.ksm_churn", str(size), str(self.shared_pages),
                str(seed), str(self.churn_percent)]

    def start(self, timeout: float = 120.0) -> Self:
        return super().start(timeout)

    def go(self, epoch: float) -> None:
        """Start churning, every worker on the same second boundaries from ``epoch``."""
        for proc in self.processes:
            assert proc.stdin is not None
            proc.stdin.write(f"go {epoch}\n")
            proc.stdin.flush()


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
