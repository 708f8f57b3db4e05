"""A subprocess's output, line by line as it comes (for tests that react to what it prints)."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from typing import IO

import pytest


class Lines:
    """The demo's output, line by line as it comes, read by a thread: ``select`` on a buffered
    pipe misses lines already in Python's buffer and would wait for the next write."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.seen: list[str] = []
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put("")  # the end

    def until(self, prefix: str, timeout: float) -> None:
        """Collect lines until one starts with ``prefix``; fail with all seen if none does."""
        deadline = time.monotonic() + timeout
        while not any(line.startswith(prefix) for line in self.seen):
            try:
                line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {prefix!r} within {timeout}s:\n" + "".join(self.seen))
            if not line:
                pytest.fail(f"the demo ended before {prefix!r}:\n" + "".join(self.seen))
            self.seen.append(line)

    def rest(self, timeout: float) -> str:
        """Everything, once the demo has closed its output (within ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"the demo still runs after {timeout}s:\n" + "".join(self.seen))
            if not line:
                return "".join(self.seen)
            self.seen.append(line)
