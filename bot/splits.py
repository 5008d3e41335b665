"""Sticky traffic splits: the same key always lands on the same version while a split stands.

Pure and dependency-free, so the serving client and the server choose exactly alike.
"""

from __future__ import annotations

import hashlib
import random

BUCKETS = 10_000


def bucket_for(prompt: str, key: str) -> int:
    """A stable bucket in [0, 10000) for this prompt and key (SHA-256; same on every host)."""
    digest = hashlib.sha256(f"{prompt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def choose(prompt: str, split: dict[str, int], order: list[str], key: str | None) -> str:
    """Pick a label from the split; `order` lists labels oldest first.

    Older versions take the low buckets and the newest the top ones, so raising a canary's
    share only moves more keys onto it and no key that was on it leaves.
    """
    point = bucket_for(prompt, key) if key is not None else random.randrange(BUCKETS)
    edge = 0
    for label in order:
        edge += split.get(label, 0) * (BUCKETS // 100)
        if point < edge:
            return label
    return order[-1]
