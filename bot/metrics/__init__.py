"""Metrics sources: what each live prompt version is doing, and what it is compared with."""

from bot.metrics.base import (
    Baseline,
    MetricsSource,
    MetricsUnavailable,
    Target,
    VersionMetrics,
    WindowStats,
)

__all__ = [
    "Baseline",
    "MetricsSource",
    "MetricsUnavailable",
    "Target",
    "VersionMetrics",
    "WindowStats",
]
