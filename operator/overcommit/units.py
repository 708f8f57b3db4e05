"""Byte counts as people read them (the summaries in ``kubectl get`` and the CLI's text)."""

from __future__ import annotations


def human_bytes(count: int) -> str:
    """``1536`` -> ``1.5Ki``: binary units, one decimal (whole bytes below 1 KiB)."""
    value = float(count)
    for unit in ("B", "Ki", "Mi", "Gi", "Ti"):
        if abs(value) < 1024 or unit == "Ti":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")
