"""Loaded (via PYTHONPATH) into an agent process by the kill-mid-change test only.

It makes the write of one chosen setting hang, after announcing it in a marker file, so the test
can SIGKILL the agent exactly between two writes of one cycle. Product code has no such hook.
"""

import os
import time

BLOCK = os.environ.get("OVERCOMMIT_TEST_BLOCK_WRITE", "")
MARKER = os.environ.get("OVERCOMMIT_TEST_BLOCK_MARKER", "")

if BLOCK and MARKER:
    from overcommit.host import base

    _write = base.HostFS.write

    def _blocking_write(self: base.HostFS, rel: str, value: str) -> None:
        if rel.endswith(BLOCK):
            with open(MARKER, "w") as marker:
                marker.write(f"{rel}={value}\n")
            while True:
                time.sleep(3600)
        _write(self, rel, value)

    base.HostFS.write = _blocking_write  # type: ignore[method-assign]
