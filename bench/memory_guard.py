"""Stop a benchmark before the machine runs short of memory.

``bench.scale`` fills no memory on purpose, but what it measures can: with the naive designs at
5,000 nodes the API server grew to 17.7 GB while fanning one 1.5 MiB policy object out to 5,000
watches, and the kernel's OOM killer stopped it with the machine at 28 MiB of MemAvailable.
The guard reads MemAvailable twice a second; below its floor it SIGKILLs the largest process
this benchmark started (that API server, in practice), interrupts the main thread (the run's
clean-up then runs) and keeps the reason for the report.
"""

from __future__ import annotations

import _thread
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from testkit.memrig import mem_available, resident

FLOOR = 2 << 30


def descendants(root: int, proc: Path = Path("/proc")) -> list[int]:
    """Every process below ``root`` (children, their children, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rss_bytes(pid: int) -> int:
    """``memrig.resident``, 0 for a process that is gone (or has no memory of its own)."""
    try:
        return resident(pid)
    except (OSError, IndexError):
        return 0


def largest(pids: list[int], rss: Callable[[int], int] = rss_bytes) -> tuple[int, int] | None:
    """(pid, bytes) of the process holding the most memory, None when there is none."""
    sized = [(rss(pid), pid) for pid in pids]
    sized = [s for s in sized if s[0] > 0]
    if not sized:
        return None
    size, pid = max(sized)
    return pid, size


class MemoryGuard:
    """``with MemoryGuard():`` around a run (module doc); ``tripped`` says why it stopped one."""

    def __init__(self, floor: int = FLOOR, available: Callable[[], int] = mem_available,
                 interval_s: float = 0.5) -> None:
        self.floor, self.available, self.interval_s = floor, available, interval_s
        self.tripped: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="memory-guard", daemon=True)

    def __enter__(self) -> MemoryGuard:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> bool:
        """One look; True when it tripped (and acted)."""
        left = self.available()
        if left >= self.floor:
            return False
        victim = largest(descendants(os.getpid()))
        what = "no process of ours to stop"
        if victim is not None:
            pid, size = victim
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
            os.kill(pid, signal.SIGKILL)
            what = f"killed {name} (pid {pid}, {size >> 20} MiB)"
        self.tripped = (f"MemAvailable {left >> 20} MiB fell below the guard's floor "
                        f"{self.floor >> 20} MiB: {what}; the run was stopped")
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.check():
                _thread.interrupt_main()
                return
