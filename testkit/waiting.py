"""Waiting for a condition and printing past pytest's capture: shared by the integration and
end-to-end tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_for(condition: Callable[[], object], timeout: float, what: str,
             interval: float = 0.2) -> Any:
    """Poll ``condition`` until it is truthy and return its value; fail naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)
        time.sleep(interval)


def say(config: pytest.Config, line: str) -> None:
    """Print past pytest's capture: timings belong in CI's log."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
