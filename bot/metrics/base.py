"""The metrics source interface and the figures it returns."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from bot.errors import BotError
from bot.telemetry import SOURCE_ERRORS

log = logging.getLogger(__name__)


class MetricsUnavailable(BotError):
    """The metrics source failed or timed out; never a reason to roll back."""

    code = "metrics_unavailable"


@dataclass(frozen=True)
class WindowStats:
    """A version's traffic over one window."""

    requests: int
    errors: int
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    quality: float | None = None  # mean score, 0..1
    quality_count: int = 0

    @property
    def error_rate_pct(self) -> float | None:
        """Errors as a percentage of requests (None without requests)."""
        return 100.0 * self.errors / self.requests if self.requests else None


@dataclass(frozen=True)
class Baseline:
    """The figures a version is judged against, and where they came from."""

    source: str  # e.g. "v1.9.0 over the 60 min before v2.0.0 took over"
    requests: int | None  # None for figures stored from an offline eval
    error_rate_pct: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    quality: float | None = None

    @classmethod
    def from_stats(cls, stats: WindowStats, source: str) -> Baseline:
        """A baseline read from live traffic."""
        return cls(
            source=source,
            requests=stats.requests,
            error_rate_pct=stats.error_rate_pct,
            latency_p50_ms=stats.latency_p50_ms,
            latency_p99_ms=stats.latency_p99_ms,
            quality=stats.quality,
        )


STORED_BASELINE_KEYS = ("error_rate_pct", "latency_p50_ms", "latency_p99_ms", "quality")


@dataclass(frozen=True)
class Target:
    """A live prompt version to judge, with where its baseline comes from."""

    prompt: str
    version: str
    version_id: int
    prompt_id: int
    share_pct: int
    serving_since: datetime | None
    window: timedelta
    baseline_window: timedelta
    # The version this one is compared with, and the end of its baseline window:
    # None means "over the same current window" (the stable side of a split).
    baseline_version: str | None = None
    baseline_version_id: int | None = None
    baseline_until: datetime | None = None
    # Offline figures stored on the baseline version, then on this version (fallbacks).
    stored_baselines: tuple[tuple[str, Mapping[str, float]], ...] = field(default_factory=tuple)
    # Fewer live baseline requests than this and the stored figures are used instead.
    min_requests: int = 50
    # Judge only traffic from `since` on (a verification: the restored version after the
    # switch); `pre_since` holds the version's counts in since's minute from before `since`,
    # which minute buckets cannot tell apart, to subtract.
    since: datetime | None = None
    pre_since: Mapping[str, float] | None = None

    def current_window(self, now: datetime) -> timedelta:
        """The window to read: `window`, cut at `since` when that is later."""
        if self.since is None:
            return self.window
        return max(timedelta(0), min(self.window, now - self.since))

    def live_baseline_source(self) -> str:
        """Words for where the live baseline comes from."""
        if self.baseline_until is None:
            return f"{self.baseline_version} over the same window"
        seconds = self.baseline_window.total_seconds()
        span = f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"
        return f"{self.baseline_version} over the {span} before {self.version} took over"

    def pick_baseline(self, live: WindowStats | None) -> Baseline | None:
        """Live baseline traffic when there is enough of it, else the first stored figures."""
        if live is not None and live.requests >= self.min_requests:
            return Baseline.from_stats(live, self.live_baseline_source())
        for owner, figures in self.stored_baselines:
            known = {k: float(figures[k]) for k in STORED_BASELINE_KEYS if k in figures}
            if known:
                return Baseline(source=f"figures stored on {owner}", requests=None, **known)
        return None


@dataclass(frozen=True)
class VersionMetrics:
    """Current figures for a version and the baseline they are judged against."""

    current: WindowStats
    baseline: Baseline | None


class MetricsSource(Protocol):
    """Reads current and baseline figures for many versions at once."""

    name: str

    def collect(
        self, targets: Sequence[Target], now: datetime
    ) -> Mapping[int, VersionMetrics | MetricsUnavailable]:
        """Figures per target `version_id`; a failure for one target is returned, not raised."""
        ...


def collect_safely(
    sources: Mapping[str, MetricsSource], name: str, targets: Sequence[Target], now: datetime
) -> dict[int, VersionMetrics | MetricsUnavailable]:
    """Ask source `name` for every target; a missing, failing or silent source yields
    MetricsUnavailable for each target instead of an exception (it must never act on us)."""
    source = sources.get(name)
    try:
        if source is None:
            raise MetricsUnavailable(f"metrics source {name!r} is not configured")
        found = source.collect(targets, now)
    except Exception as exc:  # the one place a source's failure is contained
        log.warning("metrics source %s failed: %s", name, exc)
        SOURCE_ERRORS.labels(name).inc()
        failure = (
            exc
            if isinstance(exc, MetricsUnavailable)
            else MetricsUnavailable(
                f"metrics source {name!r} failed: {exc.__class__.__name__}: {exc}"
            )
        )
        return dict.fromkeys([t.version_id for t in targets], failure)
    result: dict[int, VersionMetrics | MetricsUnavailable] = {}
    for t in targets:
        figures = found.get(t.version_id)
        result[t.version_id] = (
            MetricsUnavailable(f"{name} returned nothing") if figures is None else figures
        )
    return result
