"""The built-in metrics source: sums the per-minute buckets that POST /api/events fills."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, Interval, func, literal, select
from sqlmodel import col

from bot.db import read_session
from bot.errors import DatabaseUnavailable
from bot.metrics.base import Baseline, MetricsUnavailable, Target, VersionMetrics, WindowStats
from bot.metrics.histogram import percentiles
from bot.metrics.ingest import minute_of
from bot.models import HISTOGRAM_COLUMNS, Routing, metric_bucket

CHUNK = 900  # ids per IN (...) list, well inside SQLite's bound-parameter limit


def _sum_columns() -> list[ColumnElement[Any]]:
    return [func.sum(metric_bucket.c[name]).label(name) for name in SUM_NAMES]


SUM_NAMES = ("requests", "errors", "quality_sum", "quality_count", *HISTOGRAM_COLUMNS)


def _stats(sums: Sequence[Any]) -> WindowStats:
    """A window's figures from its sums, in SUM_NAMES order (a row read as a tuple)."""
    counts = sums[4:]
    if None in counts:
        counts = [count or 0 for count in counts]
    quality_count = int(sums[3] or 0)
    p50, p99 = percentiles(counts, (0.50, 0.99))
    return WindowStats(
        requests=int(sums[0] or 0),
        errors=int(sums[1] or 0),
        latency_p50_ms=p50,
        latency_p99_ms=p99,
        quality=float(sums[2]) / quality_count if quality_count else None,
        quality_count=quality_count,
    )


def _without(sums: Sequence[Any], before: Mapping[str, float]) -> WindowStats:
    """The sums less what `before` counted (never below zero)."""
    less = [
        max(0.0, float(s or 0) - before.get(n, 0.0)) for n, s in zip(SUM_NAMES, sums, strict=True)
    ]
    return _stats([*less[:4], *map(int, less[4:])])  # histogram counts are whole numbers


def start_minute(target: Target, now: datetime) -> datetime:
    """The first minute bucket a target's window reads."""
    return minute_of(now - target.current_window(now))


class BuiltinSource:
    """Reads every target's window in one grouped query per distinct window length."""

    name = "builtin"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # A predecessor's baseline window lies in the past, so it is computed once per switch.
        self._baselines: dict[tuple[int, datetime, timedelta], WindowStats] = {}
        # ... and so is the Baseline made of it, for the target that asked (its labels and
        # sample size decide what pick_baseline makes of the figures).
        self._picked: dict[tuple[int, datetime, timedelta], tuple[Any, Baseline | None]] = {}

    def collect(
        self, targets: Sequence[Target], now: datetime
    ) -> Mapping[int, VersionMetrics | MetricsUnavailable]:
        """Current and baseline figures for every target, or MetricsUnavailable for all."""
        try:
            return self._collect(targets, now)
        except DatabaseUnavailable as exc:
            failure = MetricsUnavailable(f"built-in metrics: {exc.message}")
            return {target.version_id: failure for target in targets}

    def _collect(
        self, targets: Sequence[Target], now: datetime
    ) -> dict[int, VersionMetrics | MetricsUnavailable]:
        # Targets without `since` share a first minute per window length: worked out once.
        by_window: dict[timedelta, datetime] = {}
        first: list[datetime] = []
        for target in targets:
            if target.since is not None:
                first.append(start_minute(target, now))
            elif (start := by_window.get(target.window)) is not None:
                first.append(start)
            else:
                first.append(by_window.setdefault(target.window, start_minute(target, now)))
        # Each distinct first minute is one grouped query; a target judged only from `since`
        # (a verification) has the counts from before `since` in that minute taken off.
        # Rows are read as plain tuples: version id, then the sums in SUM_NAMES order.
        rows_from: dict[datetime, dict[int, Sequence[Any]]] = {}
        with read_session(self.engine) as session:
            connection = session.connection()
            for start in set(first):
                rows = connection.execute(
                    select(metric_bucket.c.version_id, *_sum_columns())
                    .where(metric_bucket.c.minute >= start)
                    .group_by(metric_bucket.c.version_id)
                )
                rows_from[start] = {int(row[0]): row[1:] for row in rows}
            predecessors = [t for t in targets if t.baseline_until is not None]
            self._load_baselines(session, predecessors)
        # Figures are worked out once per version and window, and only for versions asked for.
        empty = WindowStats(requests=0, errors=0)
        current: dict[tuple[datetime, int], WindowStats] = {}

        def stats_of(start: datetime, version_id: int) -> WindowStats:
            stats = current.get((start, version_id))
            if stats is None:
                sums = rows_from[start].get(version_id)
                stats = empty if sums is None else _stats(sums)
                current[(start, version_id)] = stats
            return stats

        # Forget switches no longer live, so the cache stays as large as the set of targets.
        live_keys = {_key(t) for t in predecessors}
        self._baselines = {k: v for k, v in self._baselines.items() if k in live_keys}
        self._picked = {k: v for k, v in self._picked.items() if k in live_keys}
        result: dict[int, VersionMetrics | MetricsUnavailable] = {}
        for target, start in zip(targets, first, strict=True):
            own = stats_of(start, target.version_id)
            cut = target.since is not None and minute_of(target.since) == start
            if cut and target.pre_since and target.version_id in rows_from[start]:
                own = _without(rows_from[start][target.version_id], target.pre_since)
            if target.baseline_version_id is None:
                baseline = target.pick_baseline(None)
            elif target.baseline_until is None:
                baseline = target.pick_baseline(stats_of(start, target.baseline_version_id))
            else:
                baseline = self._predecessor_baseline(target, empty)
            result[target.version_id] = VersionMetrics(current=own, baseline=baseline)
        return result

    def _predecessor_baseline(self, target: Target, empty: WindowStats) -> Baseline | None:
        """pick_baseline over the cached figures of the version before the switch; the
        result is kept for the next pass while the target asks the same question."""
        key = _key(target)
        question = (
            target.version,
            target.baseline_version,
            target.min_requests,
            target.stored_baselines,
        )
        known = self._picked.get(key)
        if known is not None and known[0] == question:
            return known[1]
        baseline = target.pick_baseline(self._baselines.get(key, empty))
        self._picked[key] = (question, baseline)
        return baseline

    def _load_baselines(self, session: Any, targets: list[Target]) -> None:
        missing: dict[timedelta, list[int]] = defaultdict(list)
        for target in targets:
            if _key(target) not in self._baselines:
                missing[target.baseline_window].append(target.prompt_id)
        dialect = session.get_bind().dialect.name
        for window, prompt_ids in missing.items():
            for start in range(0, len(prompt_ids), CHUNK):
                chunk = prompt_ids[start : start + CHUNK]
                since = _minus(col(Routing.activated_at), window, dialect)
                rows = session.execute(
                    select(
                        col(Routing.previous_version_id),
                        col(Routing.activated_at),
                        *_sum_columns(),
                    )
                    .join(
                        metric_bucket,
                        metric_bucket.c.version_id == col(Routing.previous_version_id),
                    )
                    .where(
                        col(Routing.prompt_id).in_(chunk),
                        metric_bucket.c.minute >= since,
                        metric_bucket.c.minute < col(Routing.activated_at),
                    )
                    .group_by(col(Routing.previous_version_id), col(Routing.activated_at))
                )
                for row in rows:
                    key = (int(row[0]), row[1], window)
                    self._baselines[key] = _stats(row[2:])
        # Versions with no traffic in their window are remembered as such, too.
        for target in targets:
            self._baselines.setdefault(_key(target), WindowStats(requests=0, errors=0))

    def close(self) -> None:
        """Nothing to release; the engine belongs to the caller."""


def _key(target: Target) -> tuple[int, datetime, timedelta]:
    assert target.baseline_version_id is not None
    assert target.baseline_until is not None
    return (target.baseline_version_id, target.baseline_until, target.baseline_window)


def _minus(column: Any, delta: timedelta, dialect: str) -> ColumnElement[Any]:
    """`column - delta` in the dialect's own date arithmetic."""
    if dialect == "sqlite":
        # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff'; strftime keeps the same shape for comparison.
        return func.strftime("%Y-%m-%d %H:%M:%f", column, f"-{delta.total_seconds():.0f} seconds")
    return column - literal(delta, type_=Interval())  # type: ignore[no-any-return]
