"""A real merge workload: processes whose anonymous memory is marked MADV_MERGEABLE.

Each worker maps ``size_mib`` of anonymous memory, marks it mergeable and fills it page by page:
the first ``shared_fraction`` of its pages hold content every worker has (page ``i`` holds the
same bytes in every worker, like the same guest OS image in several VMs), the rest is unique
to the worker. With N workers the achievable saving is therefore
``(N - 1) x shared pages`` in ``pages_sharing``. Used by the tests, the benchmarks and the demo.
"""

from __future__ import annotations

import contextlib
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import ClassVar, Self

_WORKER = r"""
import mmap, os, sys
size, shared_pages, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
page = mmap.PAGESIZE
area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
area.madvise(mmap.MADV_MERGEABLE)
unique = os.urandom(16)
for index in range(size // page):
    if index < shared_pages:
        stamp = b"shared-page-%012d" % index
    else:
        stamp = b"unique-%d-%s-%012d" % (seed, unique.hex().encode(), index)
    block = (stamp * (page // len(stamp) + 1))[:page]
    area[index * page:(index + 1) * page] = block
print("ready", flush=True)
sys.stdin.read()  # hold the memory until the parent closes our stdin
"""


@dataclass
class MergeWorkload:
    """``workers`` processes of ``size_mib`` each; use as a context manager."""

    workers: int = 4
    size_mib: int = 64
    shared_fraction: float = 0.75
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    kind: ClassVar[str] = "merge"

    @property
    def pages_per_worker(self) -> int:
        import mmap

        return self.size_mib * 2**20 // mmap.PAGESIZE

    @property
    def shared_pages(self) -> int:
        return int(self.pages_per_worker * self.shared_fraction)

    @property
    def achievable_sharing(self) -> int:
        """pages_sharing once everything identical is merged."""
        return (self.workers - 1) * self.shared_pages

    def worker_argv(self, size: int, seed: int) -> list[str]:
        """The command of worker ``seed`` (a workload that behaves differently overrides it)."""
        return [sys.executable, "-c", _WORKER, str(size), str(self.shared_pages), str(seed)]

    def start(self, timeout: float = 60.0) -> Self:
        size = self.size_mib * 2**20
        for seed in range(self.workers):
            proc = subprocess.Popen(
                self.worker_argv(size, seed),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,  # a terminal's Ctrl-C is for the caller to handle
            )
            self.processes.append(proc)
        deadline = time.monotonic() + timeout
        for proc in self.processes:
            assert proc.stdout is not None
            # Nothing is buffered before the first line, so select() on the pipe is exact.
            if not select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                self.stop()
                raise RuntimeError(f"{self.kind} worker not ready within {timeout:.0f}s")
            line = proc.stdout.readline()
            if line.strip() != "ready":
                self.stop()
                raise RuntimeError(f"{self.kind} worker failed to start (said {line!r})")
        return self

    def stop(self) -> None:
        for proc in self.processes:
            if proc.stdin:
                with contextlib.suppress(BrokenPipeError):  # a worker that already died
                    proc.stdin.close()
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
