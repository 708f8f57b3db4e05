"""bench.memory_guard: the largest process below us is stopped when MemAvailable runs short."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.memory_guard import MemoryGuard, descendants, largest


def test_descendants_include_grandchildren() -> None:
    child = subprocess.Popen([sys.executable, "-c",
                              "import subprocess, sys, time; "
                              "p = subprocess.Popen([sys.executable, '-c', 'import time; "
                              "time.sleep(30)']); print(p.pid, flush=True); time.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        found = descendants(os.getpid())
        assert child.pid in found and grandchild in found
    finally:
        child.kill()
        os.kill(grandchild, 9)
        child.wait()


def test_largest_picks_the_most_resident_and_skips_the_gone() -> None:
    sizes = {1: 10, 2: 300, 3: 0}
    assert largest([1, 2, 3], rss=sizes.__getitem__) == (2, 300)
    assert largest([3], rss=sizes.__getitem__) is None


def test_the_guard_kills_the_largest_child_below_the_floor(tmp_path: Path) -> None:
    hog = subprocess.Popen([sys.executable, "-c",
                            "b = bytearray(64 << 20); print('ready', flush=True); "
                            "import time; time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout is not None and hog.stdout.readline().strip() == "ready"  # touched
        guard = MemoryGuard(floor=1 << 40, available=lambda: 1 << 30)
        assert guard.check()
        assert hog.wait(timeout=10) == -9
        assert guard.tripped is not None and f"pid {hog.pid}" in guard.tripped
        assert not MemoryGuard(floor=1 << 20, available=lambda: 1 << 30).check()
    finally:
        hog.kill()
        hog.wait()
