"""Units as people and the API read them: byte counts (the summaries in ``kubectl get`` and
the CLI's text) and times as Kubernetes writes them (RFC 3339, seconds, UTC)."""

from __future__ import annotations

import datetime
from typing import overload


def human_bytes(count: int) -> str:
    """``1536`` -> ``1.5Ki``: binary units, one decimal (whole bytes below 1 KiB)."""
    value = float(count)
    for unit in ("B", "Ki", "Mi", "Gi", "Ti"):
        if abs(value) < 1024 or unit == "Ti":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


@overload
def rfc3339(epoch: float) -> str: ...
@overload
def rfc3339(epoch: None) -> None: ...
def rfc3339(epoch: float | None) -> str | None:
    """Epoch seconds as a Kubernetes Time (RFC 3339, seconds, UTC)."""
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_of(stamp: str | None) -> float | None:
    """A Kubernetes Time as epoch seconds; None for none or one that does not parse."""
    if not stamp:
        return None
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
