"""The agent's heap trim returns the pages a worker thread freed (glibc)."""

from __future__ import annotations

import threading

from overcommit.agent.heap import release_free_heap


def resident_mib() -> int:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) // 1024


def test_the_pages_a_worker_thread_freed_go_back_to_the_kernel() -> None:
    kept: list[bytes] = []

    def cycle() -> None:  # like a cycle's worker: 80 MB of C-heap objects, 1 in 16 kept
        objects = [bytes(4000) for _ in range(20_000)]
        kept.extend(objects[::16])

    worker = threading.Thread(target=cycle)
    worker.start()
    worker.join()
    before = resident_mib()
    assert release_free_heap() is True
    # The kept objects pin pages all over the thread's arena, so only a trim, not the
    # heap's own top-of-heap release, can give the free ones back.
    assert resident_mib() <= before - 40
    assert len(kept) == 1250
