"""The latency histogram: which bucket an observation falls in, and percentiles from counts."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from bot.models import LATENCY_BOUNDS_MS


def bucket_index(latency_ms: float) -> int:
    """The index of the bucket whose upper bound is the first >= latency_ms."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)


def percentile(counts: Sequence[int], q: float) -> float | None:
    """Estimate the q-quantile (0..1) by linear interpolation inside the bucket that holds it."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            lower = LATENCY_BOUNDS_MS[index - 1] if index else 0.0
            upper = LATENCY_BOUNDS_MS[index]
            if upper == float("inf"):
                return lower  # open-ended bucket: report its floor
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return LATENCY_BOUNDS_MS[-2]
