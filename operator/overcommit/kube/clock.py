"""Wall-clock time as the Kubernetes API writes it. The pure builders take it as an argument."""

from __future__ import annotations

import datetime


def now_rfc3339() -> str:
    """Now, as a Kubernetes Time (RFC 3339, seconds, UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
