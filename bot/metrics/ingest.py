"""Built-in event ingestion: a batch is validated whole, then folded into per-minute buckets."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BindParameter, Connection, bindparam, case, delete, select
from sqlmodel import Session, col

from bot.db import upsert_insert_for
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
    return store(session=session, folded=fold(batch, now=now, retention=retention))


@dataclass(frozen=True, slots=True)
class Folded:
    """A batch summed per (prompt, version, minute), ready to store: `fold`'s work needs no
    database, so it runs before the write transaction, not while holding the write lock."""

    batch: EventBatch
    now: datetime
    offset: timedelta
    oldest: datetime  # events before this are past the retention
    rows: dict[tuple[str, str, datetime], list[float]]  # sums in the order of SUMMED
    latest: dict[tuple[str, str], datetime]  # the newest outcome per version
    refused: bool  # some event's time is unusable: store explains which and refuses the batch


def fold(batch: EventBatch, *, now: datetime, retention: timedelta) -> Folded:
    """Sum a batch's outcomes per version and minute (sent_at without a timezone: refused)."""
    offset = timedelta(0)
    if batch.sent_at is not None:
        if batch.sent_at.tzinfo is None:
            raise InvalidEvents([{"field": "sent_at", "message": "must include a timezone"}])
        if abs(now - batch.sent_at) > SKEW_TOLERANCE:
            offset = now - batch.sent_at  # the sender's clock is this far behind ours
    oldest, newest = now - retention, now + MAX_FUTURE
    rows: dict[tuple[str, str, datetime], list[float]] = {}
    latest: dict[tuple[str, str], datetime] = {}
    # Each distinct `ts` of the batch (serving apps send whole seconds, so many repeat) is
    # checked, corrected and cut to its minute once; what is kept is in UTC, so comparing
    # two times needs no timezone arithmetic.
    times: dict[datetime | None, tuple[datetime, datetime]] = {None: (now, minute_of(now))}
    width = len(SUMMED)
    for event in batch.events:
        checked = times.get(event.ts)
        if checked is None:
            raw = event.ts
            assert raw is not None  # None is in `times` from the start
            if raw.tzinfo is None:
                return Folded(batch, now, offset, oldest, {}, {}, refused=True)
            ts = (raw + offset).astimezone(UTC)
            if ts > newest or ts < oldest:
                return Folded(batch, now, offset, oldest, {}, {}, refused=True)
            checked = times[raw] = (ts, minute_of(ts))
        ts, minute = checked
        name = (event.prompt, event.version)
        seen = latest.get(name)
        if seen is None or (ts is not seen and ts > seen):
            latest[name] = ts
        key = (event.prompt, event.version, minute)
        row = rows.get(key)
        if row is None:
            row = rows[key] = [0] * width
        row[_REQUESTS] += 1
        if event.error:
            row[_ERRORS] += 1
        latency = event.latency_ms
        row[_LATENCY] += latency
        row[_HISTOGRAM + bucket_index(latency)] += 1
        quality = event.quality
        if quality is not None:
            row[_QUALITY_SUM] += quality
            row[_QUALITY_COUNT] += 1
    return Folded(batch, now, offset, oldest, rows, latest, refused=False)


def store(*, session: Session, folded: Folded) -> IngestResult:
    """Write a folded batch in the session's transaction (a batch_id already stored: nothing),
    or raise InvalidEvents naming every bad index."""
    # Core statements on the session's connection: no ORM objects on this path, and each
    # statement is built once per process (see the cached builders below).
    conn = session.connection()
    batch, now = folded.batch, folded.now
    known = _version_ids(conn, {prompt for prompt, _ in folded.latest})
    if folded.refused or not known.keys() >= folded.latest.keys():
        raise InvalidEvents(_problems(conn, folded))
    skew = round(folded.offset.total_seconds(), 3)
    accepted = len(batch.events)
    if batch.batch_id is not None and not _first_time(conn, batch.batch_id, now):
        return IngestResult(accepted=accepted, buckets=0, duplicate=True, clock_offset_s=skew)
    # Rows in key order: two batches touching the same buckets lock them in the same order,
    # so concurrent ingestion on PostgreSQL never deadlocks.
    buckets = sorted((known[(p, v)], minute, row) for (p, v, minute), row in folded.rows.items())
    if buckets:
        conn.execute(
            _bucket_upsert(conn.dialect.name),
            [
                {"version_id": v, "minute": m, **dict(zip(SUMMED, row, strict=True))}
                for v, m, row in buckets
            ],
        )
    # The newest outcome per version, to see who still serves it (never moved backwards).
    seen = sorted((known[name], ts) for name, ts in folded.latest.items())
    if seen:
        conn.execute(
            _seen_upsert(conn.dialect.name),
            [{"version_id": v, "last_event_at": ts} for v, ts in seen],
        )
    return IngestResult(accepted=accepted, buckets=len(buckets), clock_offset_s=skew)


# Where each sum sits in a row of `fold` (the order of SUMMED).
_REQUESTS, _ERRORS, _LATENCY, _QUALITY_SUM, _QUALITY_COUNT = range(5)
_HISTOGRAM = SUMMED.index(HISTOGRAM_COLUMNS[0])


def _problems(conn: Connection, folded: Folded) -> list[dict[str, str]]:
    """What is wrong with each event of a refused batch (one problem per event, in the order
    checked: timezone, prompt and version, then time)."""
    events = folded.batch.events
    prompts = {event.prompt for event in events}
    known = _version_ids(conn, prompts)
    existing = set(conn.execute(_PROMPTS, {"names": prompts}).scalars())
    problems: list[dict[str, str]] = []
    for index, event in enumerate(events):
        ts = event.ts or folded.now
        if ts.tzinfo is None:
            problems.append(_problem(index, "ts", "must include a timezone (e.g. ...Z)"))
            continue
        if event.ts is not None:
            ts += folded.offset
        if (event.prompt, event.version) not in known:
            field = "version" if event.prompt in existing else "prompt"
            name = event.version if field == "version" else event.prompt
            problems.append(_problem(index, field, f"unknown {field} {name!r}; register it first"))
        elif ts > folded.now + MAX_FUTURE:
            problems.append(_problem(index, "ts", "is more than 5 minutes in the future"))
        elif ts < folded.oldest:
            problems.append(_problem(index, "ts", "is older than the metrics retention"))
    return problems


def prune(*, session: Session, older_than: datetime) -> int:
    """Delete buckets (and batch ids) that fell out of the retention window; returns how many
    buckets."""
    session.execute(delete(IngestedBatch).where(col(IngestedBatch.created_at) < older_than))
    result = session.execute(delete(metric_bucket).where(metric_bucket.c.minute < older_than))
    return int(result.rowcount)  # type: ignore[attr-defined]


def _first_time(conn: Connection, batch_id: str, now: datetime) -> bool:
    """Record `batch_id`; False when it was stored before (a retry: store nothing again)."""
    inserted = conn.execute(
        _batch_insert(conn.dialect.name), {"batch_id": batch_id, "created_at": now}
    )
    return inserted.first() is not None


def _problem(index: int, field: str, message: str) -> dict[str, str]:
    return {"field": f"events.{index}.{field}", "message": message}


_prompt, _version = Prompt.__table__, PromptVersion.__table__  # type: ignore[attr-defined]
_batch, _seen = IngestedBatch.__table__, VersionSeen.__table__  # type: ignore[attr-defined]
_NAMES: BindParameter[str] = bindparam("names", expanding=True)
# Every version of the batch's prompts; which prompts exist is asked only for a refused batch.
_VERSIONS = (
    select(_prompt.c.name, _version.c.label, _version.c.id)
    .join(_version, _version.c.prompt_id == _prompt.c.id)
    .where(_prompt.c.name.in_(_NAMES))
)
_PROMPTS = select(_prompt.c.name).where(_prompt.c.name.in_(_NAMES))


def _version_ids(conn: Connection, prompts: set[str]) -> dict[tuple[str, str], int]:
    """The id of every version of the batch's prompts, by (prompt, version)."""
    return {(name, label): vid for name, label, vid in conn.execute(_VERSIONS, {"names": prompts})}


# One statement per dialect, built once: SQLAlchemy then finds its compiled form in its cache
# without building the statement and its cache key again for every batch. Buckets and
# last-seen rows go as a list of rows (executemany), where a multi-row VALUES of varying
# length would be compiled for every batch.
@functools.cache
def _batch_insert(dialect: str) -> Any:
    insert = upsert_insert_for(dialect)(_batch)
    return insert.on_conflict_do_nothing(index_elements=["batch_id"]).returning(_batch.c.batch_id)


@functools.cache
def _bucket_upsert(dialect: str) -> Any:
    insert = upsert_insert_for(dialect)(metric_bucket)
    return insert.on_conflict_do_update(
        index_elements=["version_id", "minute"],
        set_={name: metric_bucket.c[name] + insert.excluded[name] for name in SUMMED},
    )


@functools.cache
def _seen_upsert(dialect: str) -> Any:
    insert = upsert_insert_for(dialect)(_seen)
    newer = insert.excluded.last_event_at > _seen.c.last_event_at
    return insert.on_conflict_do_update(
        index_elements=["version_id"],
        set_={
            "last_event_at": case(
                (newer, insert.excluded.last_event_at), else_=_seen.c.last_event_at
            )
        },
    )
