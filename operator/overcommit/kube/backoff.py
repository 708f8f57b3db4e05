"""How long to wait before trying the API server again.

Every agent of a cluster meets the same failures at the same moment: a policy change makes all
of them write at once and API Priority and Fairness rejects most with 429, or the API server
restarts and all their watches break together. A fixed retry delay keeps them in step, so each
retry is the same stampede again (bench.scale measured it: 5,000 agents, 12,914 rejections and
70 s until the last write went through). Exponential backoff with jitter spreads them out:
the ceiling doubles with each failure in a row up to a cap, and each caller waits a random
time between half the base and that ceiling ("full jitter" with a floor, so nobody retries
at once).
"""

from __future__ import annotations

import random
from collections.abc import Callable


def retry_delay(failures: int, base_s: float, cap_s: float,
                draw: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (0: none, no wait).

    Uniform in ``[base_s / 2, min(cap_s, base_s * 2 ** (failures - 1))]``; ``draw`` returns a
    number in [0, 1) (tests pass their own)."""
    if failures <= 0:
        return 0.0
    floor = base_s / 2
    ceiling = max(floor, min(cap_s, base_s * 2.0 ** min(failures - 1, 30)))
    return floor + draw() * (ceiling - floor)
