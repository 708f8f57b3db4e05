"""The frontier plot of bench.ksm_efficiency: fixed scan rates against every strategy.
matplotlib is optional (the ``bench`` extra); without it nothing is drawn."""

from __future__ import annotations

import importlib
from typing import Any

GIB = float(1 << 30)


def frontier_png(grid: dict[str, dict[str, Any]], strategies: dict[str, dict[str, Any]],
                 title: str, window_s: float, path: str) -> str | None:
    """Two panels: t90 against ksmd CPU over the window, and saved GiB-seconds against ksmd
    CPU; grey points are the fixed rates (labelled pages/sleep), coloured ones the strategies.
    A t90 never reached is drawn at the window's length with an open marker."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return None
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    for name, r in grid.items():
        if r.get("not_run") or r.get("ksmd_cpu_s") is None:
            continue
        label = name.removeprefix("static-")
        reached = r["t90_s"] is not None
        y = r["t90_s"] if reached else window_s
        left.scatter(r["ksmd_cpu_s"], y, color="grey", marker="o" if reached else "^",
                     facecolors="grey" if reached else "none")
        left.annotate(label, (r["ksmd_cpu_s"], y), fontsize=7, color="grey",
                      xytext=(3, 3), textcoords="offset points")
        right.scatter(r["ksmd_cpu_s"], r["saved_byte_seconds"] / GIB, color="grey")
        right.annotate(label, (r["ksmd_cpu_s"], r["saved_byte_seconds"] / GIB), fontsize=7,
                       color="grey", xytext=(3, 3), textcoords="offset points")
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red"]
    for colour, (name, r) in zip(colours, strategies.items(), strict=False):
        if r.get("not_run") or r.get("ksmd_cpu_s") is None:
            continue
        reached = r["t90_s"] is not None
        y = r["t90_s"] if reached else window_s
        size = 120 if name == "adaptive" else 70
        marker = "*" if name == "adaptive" else "s"
        left.scatter(r["ksmd_cpu_s"], y, color=colour, s=size, marker=marker,
                     label=name + ("" if reached else " (no t90)"))
        right.scatter(r["ksmd_cpu_s"], r["saved_byte_seconds"] / GIB, color=colour, s=size,
                      marker=marker, label=name)
    left.set_xlabel(f"ksmd CPU over the {window_s:g} s window (s)")
    left.set_ylabel("t90 (s); triangles: not reached in the window")
    left.set_yscale("log")
    left.set_title("time to 90% merged vs CPU (lower left is better)")
    right.set_xlabel(f"ksmd CPU over the {window_s:g} s window (s)")
    right.set_ylabel("saved memory integrated over the window (GiB*s)")
    right.set_title("saved GiB*s vs CPU (upper left is better)")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle(title + "; grey: fixed pages_to_scan/sleep_millisecs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
