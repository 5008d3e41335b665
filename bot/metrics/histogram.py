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


def percentiles(counts: Sequence[int], qs: Sequence[float]) -> list[float | None]:
    """`percentile` for each of `qs` (ascending), in one walk over the buckets."""
    total = sum(counts)
    if total == 0:
        return [None] * len(qs)
    found: list[float | None] = []
    index, seen, size = 0, 0, len(counts)
    for q in qs:
        rank = q * total
        # Buckets passed for a smaller q cannot hold a larger one: go on from there.
        while index < size:
            count = counts[index]
            if count and seen + count >= rank:
                break
            seen += count
            index += 1
        if index == size:
            found.append(LATENCY_BOUNDS_MS[-2])
            continue
        lower = LATENCY_BOUNDS_MS[index - 1] if index else 0.0
        upper = LATENCY_BOUNDS_MS[index]
        if upper == float("inf"):
            found.append(lower)
        else:
            found.append(lower + (upper - lower) * (rank - seen) / counts[index])
    return found
