"""Built-in event ingestion: a batch is validated whole, then folded into per-minute buckets."""

from __future__ import annotations

import functools
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete
from sqlmodel import Session, col, select

from bot.db import upsert_insert, upsert_insert_for
from bot.errors import InvalidEvents
from bot.metrics.histogram import bucket_index
from bot.models import (
    HISTOGRAM_COLUMNS,
    EventBatch,
    IngestedBatch,
    IngestResult,
    Prompt,
    PromptVersion,
    VersionSeen,
    metric_bucket,
)

# Events this far ahead of the server's clock are refused (clock skew is tolerated up to it).
MAX_FUTURE = timedelta(minutes=5)
# A sender's clock off by more than this (its `sent_at` against the server's receipt) has its
# events' times corrected; less is network latency and ordinary NTP error.
SKEW_TOLERANCE = timedelta(seconds=2)
SUMMED = (
    "requests",
    "errors",
    "latency_sum_ms",
    "quality_sum",
    "quality_count",
    *HISTOGRAM_COLUMNS,
)


def minute_of(ts: datetime) -> datetime:
    """The start of the minute `ts` falls in."""
    return ts.replace(second=0, microsecond=0)


def ingest(
    *, session: Session, batch: EventBatch, now: datetime, retention: timedelta
) -> IngestResult:
    """Store a batch of outcomes, or raise InvalidEvents naming every bad index; all or nothing."""
    prompts = {event.prompt for event in batch.events}
    known, known_prompts = _version_ids(session, prompts)
    problems: list[dict[str, str]] = []
    latest: dict[int, datetime] = {}  # the newest outcome per version, to see who still serves it
    rows: dict[tuple[int, datetime], dict[str, float]] = defaultdict(
        lambda: dict.fromkeys(SUMMED, 0)
    )
    offset = timedelta(0)
    if batch.sent_at is not None:
        if batch.sent_at.tzinfo is None:
            raise InvalidEvents([{"field": "sent_at", "message": "must include a timezone"}])
        if abs(now - batch.sent_at) > SKEW_TOLERANCE:
            offset = now - batch.sent_at  # the sender's clock is this far behind ours
    for index, event in enumerate(batch.events):
        ts = event.ts or now
        if ts.tzinfo is None:
            problems.append(_problem(index, "ts", "must include a timezone (e.g. ...Z)"))
            continue
        if event.ts is not None:
            ts += offset
        version_id = known.get((event.prompt, event.version))
        if version_id is None:
            field = "version" if event.prompt in known_prompts else "prompt"
            name = event.version if field == "version" else event.prompt
            problems.append(_problem(index, field, f"unknown {field} {name!r}; register it first"))
            continue
        if ts > now + MAX_FUTURE:
            problems.append(_problem(index, "ts", "is more than 5 minutes in the future"))
            continue
        if ts < now - retention:
            problems.append(_problem(index, "ts", "is older than the metrics retention"))
            continue
        if ts > latest.get(version_id, ts - timedelta(seconds=1)):
            latest[version_id] = ts
        row = rows[(version_id, minute_of(ts))]
        row["requests"] += 1
        row["errors"] += event.error
        row["latency_sum_ms"] += event.latency_ms
        row[HISTOGRAM_COLUMNS[bucket_index(event.latency_ms)]] += 1
        if event.quality is not None:
            row["quality_sum"] += event.quality
            row["quality_count"] += 1
    if problems:
        raise InvalidEvents(problems)
    skew = round(offset.total_seconds(), 3)
    if batch.batch_id is not None and not _first_time(session, batch.batch_id, now):
        return IngestResult(
            accepted=len(batch.events), buckets=0, duplicate=True, clock_offset_s=skew
        )
    # Rows in key order: two batches touching the same buckets lock them in the same order,
    # so concurrent ingestion on PostgreSQL never deadlocks.
    _upsert(session, [{"version_id": v, "minute": m, **rows[(v, m)]} for v, m in sorted(rows)])
    _mark_seen(session, latest)
    return IngestResult(accepted=len(batch.events), buckets=len(rows), clock_offset_s=skew)


def prune(*, session: Session, older_than: datetime) -> int:
    """Delete buckets (and batch ids) that fell out of the retention window; returns how many
    buckets."""
    session.execute(delete(IngestedBatch).where(col(IngestedBatch.created_at) < older_than))
    result = session.execute(delete(metric_bucket).where(metric_bucket.c.minute < older_than))
    return int(result.rowcount)  # type: ignore[attr-defined]


def _first_time(session: Session, batch_id: str, now: datetime) -> bool:
    """Record `batch_id`; False when it was stored before (a retry: store nothing again)."""
    insert = upsert_insert(session)
    inserted = session.execute(
        insert(IngestedBatch)
        .values(batch_id=batch_id, created_at=now)
        .on_conflict_do_nothing(index_elements=["batch_id"])
        .returning(col(IngestedBatch.batch_id))
    )
    return inserted.first() is not None


def _problem(index: int, field: str, message: str) -> dict[str, str]:
    return {"field": f"events.{index}.{field}", "message": message}


def _version_ids(
    session: Session, prompts: set[str]
) -> tuple[dict[tuple[str, str], int], set[str]]:
    """Version ids of every version of the batch's prompts, and which prompts exist."""
    rows = session.exec(
        select(Prompt.name, PromptVersion.label, PromptVersion.id)
        .join(PromptVersion, col(PromptVersion.prompt_id) == Prompt.id)
        .where(col(Prompt.name).in_(prompts))
    ).all()
    versions = {(name, label): vid for name, label, vid in rows if vid is not None}
    existing = set(session.exec(select(Prompt.name).where(col(Prompt.name).in_(prompts))).all())
    return versions, existing


def _upsert(session: Session, rows: list[dict[str, object]]) -> None:
    if rows:
        session.execute(_bucket_upsert(_dialect(session)), rows)


def _mark_seen(session: Session, latest: dict[int, datetime]) -> None:
    """Remember the newest outcome reported for each version (never moving it backwards)."""
    if latest:
        rows = [{"version_id": v, "last_event_at": latest[v]} for v in sorted(latest)]
        session.execute(_seen_upsert(_dialect(session)), rows)


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


# One statement per dialect, run with a list of rows (executemany): SQLAlchemy compiles it once
# and caches it, where a multi-row VALUES of varying length would be compiled for every batch.
@functools.cache
def _bucket_upsert(dialect: str) -> Any:
    insert = upsert_insert_for(dialect)(metric_bucket)
    return insert.on_conflict_do_update(
        index_elements=["version_id", "minute"],
        set_={name: metric_bucket.c[name] + insert.excluded[name] for name in SUMMED},
    )


@functools.cache
def _seen_upsert(dialect: str) -> Any:
    insert = upsert_insert_for(dialect)(VersionSeen)
    newer = insert.excluded.last_event_at > col(VersionSeen.last_event_at)
    return insert.on_conflict_do_update(
        index_elements=["version_id"],
        set_={
            "last_event_at": case(
                (newer, insert.excluded.last_event_at), else_=col(VersionSeen.last_event_at)
            )
        },
    )
