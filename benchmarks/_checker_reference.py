"""The raw reference for `checker_tick.py`: the checker's reads in raw SQL on the DB-API cursor
and its judgement as plain Python loops, with no project code on the path.

It reads what a steady pass reads (every live version with its routing and previous version,
the grouped bucket sums of the current window, the active incidents) and judges what the
checker judges (the minimum sample, the Wilson bound, latency percentiles from the histogram,
the quality drop and latency increase against the previous version's last hour before the
switch, the policy's rules and its first-hour limits). Like the checker it keeps the previous
versions' baselines between passes (they lie in the past), so a steady pass reads them once.
The benchmark's data has no splits; a split is refused rather than judged differently.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any

from sqlalchemy import Engine

from bot.metrics.histogram import percentile
from bot.models import HISTOGRAM_COLUMNS
from bot.policy import PolicySet

SEVERITY_RANK = {"none": 0, "medium": 1, "high": 2, "critical": 3}
ACTION_RANK = {"observe": 1, "alert": 2, "page": 3, "rollback": 4}
SUMS = ", ".join(
    f"sum({name})" for name in ("requests", "errors", "quality_sum", "quality_count")
) + "".join(f", sum({name})" for name in HISTOGRAM_COLUMNS)
LIVE = (
    "SELECT p.id, p.name, r.split, r.activated_at, r.revision, a.id, a.label, a.health, "
    "a.baseline, pv.id, pv.label, pv.baseline, pv.health "
    "FROM prompt p JOIN routing r ON r.prompt_id = p.id "
    "JOIN prompt_version a ON a.id = r.active_version_id "
    "LEFT JOIN prompt_version pv ON pv.id = r.previous_version_id"
)
STORED_KEYS = ("error_rate_pct", "latency_p50_ms", "latency_p99_ms", "quality")


def _stats(row: tuple[Any, ...]) -> tuple[int, int, float | None, float | None, int]:
    """(requests, errors, p99, quality, quality count) from a row of sums after its key(s)."""
    requests, errors, q_sum, q_count = (int(v or 0) for v in row[:4])
    counts = [int(v or 0) for v in row[4:]]
    p99 = percentile(counts, 0.99)
    return requests, errors, p99, (float(q_sum) / q_count if q_count else None), q_count


class Reference:
    """Judges every live version as the checker would, from raw rows."""

    def __init__(self, engine: Engine, policies: PolicySet) -> None:
        if policies.prompts:
            raise SystemExit("the reference judges the default policy only")
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        settings = policies.defaults
        self.window = settings.window
        self.baseline_window = settings.baseline_window
        self.min_requests = settings.min_requests
        self.min_quality = settings.min_quality_samples
        self.min_latency = settings.min_latency_samples
        self.auto_rollback = settings.auto_rollback
        self.z = NormalDist().inv_cdf(settings.confidence)
        self.rules = [
            (r.metric.value, r.limit, r.severity.value, r.action.value)
            for r in policies.rules
            if r.enabled
        ]
        nv = policies.new_version
        self.first_hour = (
            None
            if nv is None
            else (
                nv.duration,
                nv.severity.value,
                nv.action.value,
                (
                    ("error_rate_pct", nv.error_rate_pct),
                    ("latency_increase_pct", nv.latency_increase_pct),
                    ("quality_drop_pct", nv.quality_drop_pct),
                ),
            )
        )
        self.baselines: dict[tuple[int, Any], tuple[int, int, float | None, float | None, int]] = {}

    def _bind(self, when: datetime) -> Any:
        if self.sqlite:
            return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return when

    def _time(self, value: Any) -> datetime:
        if isinstance(value, str):
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        return value if value.tzinfo else value.replace(tzinfo=UTC)  # type: ignore[no-any-return]

    def _load_baselines(self, cursor: Any, keys: set[tuple[int, Any]]) -> None:
        missing = {key for key in keys if key not in self.baselines}
        if not missing:
            return
        seconds = int(self.baseline_window.total_seconds())
        since = (
            f"strftime('%Y-%m-%d %H:%M:%f', r.activated_at, '-{seconds} seconds')"
            if self.sqlite
            else f"r.activated_at - interval '{seconds} seconds'"
        )
        cursor.execute(
            f"SELECT r.previous_version_id, r.activated_at, {SUMS} FROM routing r "
            "JOIN metric_bucket b ON b.version_id = r.previous_version_id "
            f"WHERE b.minute >= {since} AND b.minute < r.activated_at "
            "GROUP BY r.previous_version_id, r.activated_at"
        )
        for row in cursor.fetchall():
            self.baselines[(row[0], row[1])] = _stats(row[2:])
        for key in missing:
            self.baselines.setdefault(key, (0, 0, None, None, 0))

    def judge(self, now: datetime) -> dict[tuple[str, str], str]:
        """Every live version's action, by (prompt, version label)."""
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute(LIVE)
            live = cursor.fetchall()
            start = (now - self.window).replace(second=0, microsecond=0)
            placeholder = "?" if self.sqlite else "%s"
            cursor.execute(
                f"SELECT version_id, {SUMS} FROM metric_bucket WHERE minute >= {placeholder} "
                "GROUP BY version_id",
                (self._bind(start),),
            )
            current = {row[0]: row for row in cursor.fetchall()}
            cursor.execute(
                "SELECT id, version_id, status FROM incident WHERE status IN ('open', 'observing')"
            )
            cursor.fetchall()
            self._load_baselines(
                cursor,
                {(row[9], row[3]) for row in live if row[9] is not None and row[12] != "bad"},
            )
            connection.commit()
        finally:
            connection.close()
        return {(row[1], row[6]): self._decide(row, current, now) for row in live}

    def _decide(self, row: tuple[Any, ...], current: dict[int, Any], now: datetime) -> str:
        (_, _, split, activated_at, _, a_id, _, a_health, a_base, p_id, _, p_base, p_health) = row
        if split and split != "null":  # SQLite keeps a JSON null as the text 'null'
            raise SystemExit("the reference does not judge splits")
        sums = current.get(a_id)
        if sums is None:
            requests, errors, p99, quality, q_count = 0, 0, None, None, 0
        else:
            requests, errors, p99, quality, q_count = _stats(sums[1:])
        p_bad = p_health == "bad"
        # The baseline: the previous version's hour before the switch, else stored figures.
        b_p99 = b_quality = None
        have_baseline = False
        if p_id is not None and not p_bad:
            b_requests, _, live_p99, live_quality, _ = self.baselines[(p_id, activated_at)]
            if b_requests >= self.min_requests:
                b_p99, b_quality, have_baseline = live_p99, live_quality, True
        if not have_baseline:
            for stored in (None if p_bad else p_base, a_base):
                figures = json.loads(stored) if isinstance(stored, str) else stored
                if figures and any(k in figures for k in STORED_KEYS):
                    b_p99, b_quality = figures.get("latency_p99_ms"), figures.get("quality")
                    have_baseline = True
                    break
        if requests < self.min_requests:
            return "insufficient_data"
        p = errors / requests
        z = self.z
        denominator = 1 + z * z / requests
        centre = (p + z * z / (2 * requests)) / denominator
        half = z * ((p * (1 - p) / requests + z * z / (4 * requests * requests)) ** 0.5)
        low = round(max(0.0, centre - half / denominator) * 100, 3)
        values: dict[str, float | None] = {
            "error_rate_pct": round(100.0 * errors / requests, 6),
            "latency_p99_ms": p99,
            "quality": quality if q_count >= self.min_quality else None,
            "quality_drop_pct": None,
            "latency_increase_pct": None,
        }
        if have_baseline:
            if q_count >= self.min_quality and quality is not None and b_quality:
                values["quality_drop_pct"] = round((b_quality - quality) / b_quality * 100, 6)
            if requests >= self.min_latency and p99 is not None and b_p99:
                values["latency_increase_pct"] = round((p99 - b_p99) / b_p99 * 100, 6)
        best: tuple[int, int, str] | None = None
        covered = set()
        for metric, limit, severity, action in self.rules:
            value = values[metric]
            if value is None or not (value < limit if metric == "quality" else value > limit):
                continue
            covered.add(metric)
            if action == "rollback":
                if not self.auto_rollback:
                    action = "page"
                elif metric == "error_rate_pct" and low <= limit:
                    severity, action = "high", "page"
            fired = (SEVERITY_RANK[severity], ACTION_RANK[action], action)
            best = fired if best is None or fired[:2] > best[:2] else best
        age = None if a_health == "good" else now - self._time(activated_at)
        if self.first_hour is not None and age is not None and age < self.first_hour[0]:
            _, severity, action, limits = self.first_hour
            for metric, limit in limits:
                value = values[metric]
                if limit is None or value is None or metric in covered or not value > limit:
                    continue
                if metric == "error_rate_pct" and low <= limit:
                    continue
                fired = (SEVERITY_RANK[severity], ACTION_RANK[action], action)
                best = fired if best is None or fired[:2] > best[:2] else best
        return "none" if best is None else best[2]
