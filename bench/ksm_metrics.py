"""The pure arithmetic of the KSM benchmark: saved memory integrated over a window, medians and
spreads, and the PASS/MISS/TIE verdict of one figure against one baseline. No I/O."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Verdict = Literal["PASS", "MISS", "TIE"]


def integrate(samples: Sequence[tuple[float, float]], window_s: float) -> float:
    """The integral over [0, window_s] of a quantity sampled at ``(t, value)`` points
    (t from the start of the window, ascending): trapezoids between samples, the first
    value held back to t=0 and the last one held to the end of the window; samples outside
    the window are clipped. With values in bytes the result is byte-seconds."""
    points = [(t, v) for t, v in samples if 0.0 <= t <= window_s]
    if not points or window_s <= 0:
        return 0.0
    total = points[0][0] * points[0][1]
    for (t0, v0), (t1, v1) in itertools.pairwise(points):
        total += (t1 - t0) * (v0 + v1) / 2.0
    total += (window_s - points[-1][0]) * points[-1][1]
    return total


def per_cpu(byte_seconds: float, cpu_s: float) -> float | None:
    """Saved byte-seconds per CPU second; None when no CPU was spent (nothing to divide by)."""
    return byte_seconds / cpu_s if cpu_s > 0 else None


def median_or_none(values: Iterable[float | None], none_is_inf: bool = False) -> float | None:
    """Median; with ``none_is_inf`` a missing value (never reached) counts as infinitely slow."""
    if none_is_inf:
        finite = [math.inf if v is None else v for v in values]
        result = statistics.median(finite) if finite else math.inf
        return None if math.isinf(result) else result
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def spread(values: Iterable[float | None]) -> list[float | None] | None:
    """[min, max] over the runs (None stands for "never reached" and sorts last)."""
    seen = list(values)
    if not seen:
        return None
    present = sorted(v for v in seen if v is not None)
    low = present[0] if present else None
    high = None if (None in seen or not present) else present[-1]
    return [low, high]


@dataclass(frozen=True)
class Figure:
    """How one figure is compared: which way is better and what difference is a tie."""

    key: str
    higher_is_better: bool
    rel_tol: float = 0.05
    abs_tol: float = 0.0


# t90 is sampled every poll (0.25 s), so half a second either way is a tie.
FIGURES = (
    Figure("t90_s", higher_is_better=False, abs_tol=0.5),
    Figure("ksmd_cpu_s", higher_is_better=False, abs_tol=0.02),
    Figure("total_cpu_s", higher_is_better=False, abs_tol=0.02),
    Figure("saved_byte_seconds", higher_is_better=True),
    Figure("saved_byte_seconds_per_cpu_s", higher_is_better=True),
)


def verdict(ours: float | None, theirs: float | None, figure: Figure) -> Verdict:
    """PASS when ours is better by more than the tolerance, TIE within it, MISS otherwise.
    None means "never reached" (t90) or "nothing to divide by": for a lower-is-better figure
    it is infinitely bad, for a higher-is-better one it cannot be judged (TIE only if both
    are None, else the present one wins)."""
    if ours is None and theirs is None:
        return "TIE"
    if ours is None:
        return "MISS"
    if theirs is None:
        return "PASS"
    tolerance = max(figure.abs_tol, figure.rel_tol * max(abs(ours), abs(theirs)))
    if abs(ours - theirs) <= tolerance:
        return "TIE"
    better = ours > theirs if figure.higher_is_better else ours < theirs
    return "PASS" if better else "MISS"


def compare_all(results: dict[str, dict[str, Any]], ours: str,
                baselines: Sequence[str]) -> dict[str, Any]:
    """``ours`` against every baseline present, figure by figure (see FIGURES)."""
    if ours not in results or results[ours].get("not_run"):
        return {"skipped": f"{ours} was not run"}
    out: dict[str, Any] = {}
    tally = {"PASS": 0, "MISS": 0, "TIE": 0}
    for name in baselines:
        theirs = results.get(name)
        if theirs is None or theirs.get("not_run") or theirs.get("disturbed_only"):
            continue
        row: dict[str, Any] = {}
        for fig in FIGURES:
            a, b = results[ours].get(fig.key), theirs.get(fig.key)
            v = verdict(a, b, fig)
            tally[v] += 1
            row[fig.key] = {"verdict": v, ours: a, name: b,
                            "ratio": round(a / b, 3) if a is not None and b else None}
        out[name] = row
    if not out:
        return {"skipped": "no baseline was run"}
    out["tally"] = tally
    return out
