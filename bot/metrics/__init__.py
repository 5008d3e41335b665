"""Metrics sources: what each live prompt version is doing, and what it is compared with."""

from bot.metrics.base import (
    Baseline,
    MetricsSource,
    MetricsUnavailable,
    Target,
    VersionMetrics,
    WindowStats,
    collect_safely,
)

__all__ = [
    "Baseline",
    "MetricsSource",
    "MetricsUnavailable",
    "Target",
    "VersionMetrics",
    "WindowStats",
    "collect_safely",
]
