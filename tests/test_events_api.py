"""POST /api/events: aggregated storage, all-or-nothing batches, retention."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, text

from bot.db import read_session, write_session
from bot.errors import InvalidEvents
from bot.metrics.ingest import fold, ingest, prune, store
from bot.models import Event, EventBatch, IngestedBatch, VersionSeen, metric_bucket, utcnow
from tests.conftest import PG_ONLY, make_prompt


def _buckets(engine: Engine) -> list[tuple[int, int, int]]:
    with read_session(engine) as session:
        rows = session.execute(
            select(
                metric_bucket.c.requests, metric_bucket.c.errors, metric_bucket.c.quality_count
            ).order_by(metric_bucket.c.minute)
        )
        return [tuple(r) for r in rows]


def test_events_fold_into_one_bucket_per_version_and_minute(
    client: TestClient, engine: Engine
) -> None:
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    ts = (datetime.now(UTC) - timedelta(minutes=2)).replace(second=5, microsecond=0)
    events = [
        {
            "prompt": "customer-support",
            "version": "v2.0.0",
            "error": i % 10 == 0,
            "latency_ms": 850,
            "quality": 0.82,
            "ts": ts.isoformat(),
        }
        for i in range(500)
    ]
    events.append(
        {"prompt": "customer-support", "version": "v2.0.0", "error": False, "latency_ms": 10}
    )
    r = client.post("/api/events", json={"events": events})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 501
    r = client.post("/api/events", json={"events": events[:100]})
    buckets = _buckets(engine)
    assert sum(b[0] for b in buckets) == 601
    # The 'ts' minute, summed over both batches; then the event without ts, stamped now.
    assert buckets == [(600, 60, 600), (1, 0, 0)]


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        ({"version": "v9"}, "events.1.version", "unknown version 'v9'"),
        ({"prompt": "nope"}, "events.1.prompt", "unknown prompt 'nope'"),
        ({"quality": 1.5}, "body.events.1.quality", "less than or equal to 1"),
        ({"latency_ms": -1}, "body.events.1.latency_ms", "greater than or equal to 0"),
        ({"error": "sometimes"}, "body.events.1.error", "valid boolean"),
        ({"ts": "yesterday"}, "body.events.1.ts", "valid datetime"),
        ({"ts": "2020-01-01T00:00:00Z"}, "events.1.ts", "older than the metrics retention"),
        ({"ts": "2999-01-01T00:00:00Z"}, "events.1.ts", "in the future"),
        ({"extra": 1}, "body.events.1.extra", "Extra inputs"),
    ],
)
def test_one_bad_event_rejects_the_whole_batch(
    client: TestClient, engine: Engine, bad: dict, field: str, message: str
) -> None:
    make_prompt(engine, versions=("v2.0.0",))
    good = {"prompt": "customer-support", "version": "v2.0.0", "error": False, "latency_ms": 5}
    r = client.post("/api/events", json={"events": [good, {**good, **bad}, good]})
    assert r.status_code == 422
    body = r.json()
    assert field in [p["field"] for p in body["problems"]]
    assert message in body["detail"]
    assert _buckets(engine) == []


def test_every_bad_index_is_named(client: TestClient, engine: Engine) -> None:
    make_prompt(engine, versions=("v2.0.0",))
    good = {"prompt": "customer-support", "version": "v2.0.0", "error": False, "latency_ms": 5}
    r = client.post(
        "/api/events", json={"events": [{**good, "version": "x"}, good, {**good, "version": "y"}]}
    )
    assert [p["field"] for p in r.json()["problems"]] == ["events.0.version", "events.2.version"]


@pytest.mark.parametrize("body", [{"events": []}, {}, {"events": "x"}])
def test_empty_or_malformed_batches_are_422(client: TestClient, body: dict) -> None:
    assert client.post("/api/events", json=body).status_code == 422


def test_events_need_the_token(client: TestClient) -> None:
    client.headers.pop("Authorization")
    assert client.post("/api/events", json={"events": []}).status_code == 401


def test_prune_drops_only_old_buckets(client: TestClient, engine: Engine) -> None:
    make_prompt(engine, versions=("v2.0.0",))
    now = datetime.now(UTC)
    for age in (timedelta(hours=47), timedelta(minutes=1)):
        client.post(
            "/api/events",
            json={
                "events": [
                    {
                        "prompt": "customer-support",
                        "version": "v2.0.0",
                        "error": False,
                        "latency_ms": 5,
                        "ts": (now - age).isoformat(),
                    }
                ]
            },
        )
    with write_session(engine) as session:
        assert prune(session=session, older_than=now - timedelta(hours=24)) == 1
    with read_session(engine) as session:
        assert session.execute(select(func.count()).select_from(metric_bucket)).scalar() == 1


def test_a_batch_sent_again_with_its_batch_id_is_stored_once(
    client: TestClient, engine: Engine
) -> None:
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    event = {"prompt": "customer-support", "version": "v2.0.0", "error": True, "latency_ms": 5}
    body = {"batch_id": "3f2b8c1e-retry", "events": [event] * 10}
    first = client.post("/api/events", json=body)
    again = client.post("/api/events", json=body)
    other = client.post("/api/events", json={**body, "batch_id": "another"})
    assert first.json() == {
        "accepted": 10,
        "buckets": 1,
        "duplicate": False,
        "clock_offset_s": 0.0,
    }
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert other.json()["duplicate"] is False
    assert _buckets(engine) == [(20, 20, 0)]
    with write_session(engine) as session:  # batch ids age out with the metrics
        prune(session=session, older_than=datetime.now(UTC) + timedelta(minutes=1))
    assert client.post("/api/events", json=body).json()["duplicate"] is False


@pytest.mark.parametrize("batch_id", ["", "has space", "x" * 101, 42])
def test_a_malformed_batch_id_is_refused_and_nothing_stored(
    client: TestClient, engine: Engine, batch_id: object
) -> None:
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    event = {"prompt": "customer-support", "version": "v2.0.0", "error": False, "latency_ms": 5}
    answer = client.post("/api/events", json={"batch_id": batch_id, "events": [event]})
    assert answer.status_code == 422
    assert "batch_id" in answer.text
    assert _buckets(engine) == []


def test_a_sender_whose_clock_is_off_has_its_times_corrected(
    client: TestClient, engine: Engine
) -> None:
    """The sender's clock is an hour behind: its `ts` and `sent_at` are both an hour in the
    past; the outcomes land in the minute they really happened, and the answer says by how much
    they were corrected."""
    make_prompt(engine)
    off = datetime.now(UTC) - timedelta(hours=1)
    event = {"prompt": "customer-support", "version": "v2.0.0", "error": False, "latency_ms": 5}
    body = {"events": [{**event, "ts": off.isoformat()}] * 5, "sent_at": off.isoformat()}
    answer = client.post("/api/events", json=body)
    assert answer.status_code == 200, answer.text
    assert 3590 < answer.json()["clock_offset_s"] < 3610
    with read_session(engine) as session:
        minute = session.execute(select(metric_bucket.c.minute)).scalar_one()
    assert abs((minute - datetime.now(UTC)).total_seconds()) < 120  # now, not an hour ago
    naive = client.post("/api/events", json={**body, "sent_at": "2026-12-02T10:00:00"})
    assert naive.status_code == 422 and "sent_at" in naive.text


@pytest.mark.parametrize("db_url", PG_ONLY, indirect=True)
def test_concurrent_batches_never_deadlock_on_postgresql(engine: Engine) -> None:
    """Batches whose events name the versions in opposite orders, from 8 threads at once: the
    buckets are locked in key order, so PostgreSQL records no deadlock and none is refused."""
    versions = [f"v{i}" for i in range(6)]
    make_prompt(engine, name="cs", versions=tuple(versions))

    def deadlocks() -> int:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            return int(
                conn.execute(
                    text(
                        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
                    )
                ).scalar_one()
            )

    before, failures = deadlocks(), []

    def client(index: int) -> None:
        order = versions if index % 2 else versions[::-1]
        for _ in range(25):
            events = [Event(prompt="cs", version=v, error=False, latency_ms=100) for v in order * 5]
            try:
                with write_session(engine) as session:
                    ingest(
                        session=session,
                        batch=EventBatch(events=events),
                        now=utcnow(),
                        retention=timedelta(hours=1),
                    )
            except Exception as exc:
                failures.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(1.0)  # statistics reach pg_stat_database at transaction end, give them a moment
    assert failures == []
    assert deadlocks() == before


def _seen(engine: Engine) -> dict[int, datetime]:
    with read_session(engine) as session:
        rows = session.execute(select(VersionSeen.version_id, VersionSeen.last_event_at)).all()
        return {row[0]: row[1] for row in rows}


def test_one_instant_written_in_different_offsets_is_one_minute(
    client: TestClient, engine: Engine
) -> None:
    """Times are folded by instant, whatever offset they are written in: 10:07:30Z, 11:07:30+01
    and 05:07:30-05 are the same minute; the last-seen time is the newest instant, and never
    moves backwards when an older batch arrives later."""
    make_prompt(engine, versions=("v2.0.0",))
    at = (datetime.now(UTC) - timedelta(minutes=3)).replace(second=30, microsecond=0)
    event = {"prompt": "customer-support", "version": "v2.0.0", "error": False, "latency_ms": 7}
    written = [
        at.isoformat(),
        at.astimezone(timezone(timedelta(hours=1))).isoformat(),
        at.astimezone(timezone(timedelta(hours=-5))).isoformat(),
        (at + timedelta(seconds=20)).astimezone(timezone(timedelta(hours=2))).isoformat(),
    ]
    r = client.post("/api/events", json={"events": [{**event, "ts": ts} for ts in written * 3]})
    assert r.status_code == 200 and r.json()["buckets"] == 1, r.text
    with read_session(engine) as session:
        minute, requests = session.execute(
            select(metric_bucket.c.minute, metric_bucket.c.requests)
        ).one()
    assert (minute, requests) == (at.replace(second=0), 12)
    assert list(_seen(engine).values()) == [at + timedelta(seconds=20)]
    older = {**event, "ts": (at - timedelta(minutes=1)).isoformat()}
    assert client.post("/api/events", json={"events": [older]}).status_code == 200
    assert list(_seen(engine).values()) == [at + timedelta(seconds=20)]


def test_each_refused_event_is_named_once_by_its_first_problem(engine: Engine) -> None:
    """The checks run in one order (timezone, then prompt and version, then time), whichever
    event of the batch comes first; nothing of a refused batch is stored."""
    make_prompt(engine, versions=("v2.0.0",))
    now = utcnow()
    good = {"prompt": "customer-support", "version": "v2.0.0", "error": False, "latency_ms": 5.0}
    naive, future = datetime(2026, 12, 3, 10), now + timedelta(hours=1)
    events = [
        Event(**good, ts=now),
        Event(**{**good, "version": "v9"}, ts=future),  # unknown version wins over the time
        Event(**{**good, "prompt": "nope"}, ts=naive),  # the timezone is checked first
        Event(**good, ts=future),
        Event(**good, ts=now - timedelta(days=30)),
        Event(**good),
    ]
    with pytest.raises(InvalidEvents) as refused, write_session(engine) as session:
        ingest(
            session=session,
            batch=EventBatch(events=events, batch_id="refused-1"),
            now=now,
            retention=timedelta(hours=48),
        )
    assert refused.value.problems == [
        {"field": "events.1.version", "message": "unknown version 'v9'; register it first"},
        {"field": "events.2.ts", "message": "must include a timezone (e.g. ...Z)"},
        {"field": "events.3.ts", "message": "is more than 5 minutes in the future"},
        {"field": "events.4.ts", "message": "is older than the metrics retention"},
    ]
    assert _buckets(engine) == [] and _seen(engine) == {}
    with read_session(engine) as session:  # the batch id is free: the sender may fix and resend
        assert session.execute(select(func.count()).select_from(IngestedBatch)).scalar() == 0


def test_fold_needs_no_database_and_store_writes_what_it_summed(engine: Engine) -> None:
    """fold (run before the write transaction, outside the write lock) sums per version and
    minute; store writes those sums as they are."""
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    now = utcnow()
    minute = now.replace(second=0, microsecond=0)
    events = [
        Event(prompt="customer-support", version=v, error=e, latency_ms=ms, quality=q, ts=now)
        for v, e, ms, q in [
            ("v2.0.0", True, 4.0, None),
            ("v2.0.0", False, 700.0, 0.5),
            ("v1.9.0", False, 90_000.0, 1.0),
        ]
    ]
    folded = fold(EventBatch(events=events), now=now, retention=timedelta(hours=1))
    new = folded.rows[("customer-support", "v2.0.0", minute)]
    assert new[:5] == [2, 1, 704.0, 0.5, 1]  # requests, errors, latency sum, quality sum, count
    assert sum(new[5:]) == 2 and new[5] == 1  # 4 ms falls in the first histogram bucket
    with write_session(engine) as session:
        assert store(session=session, folded=folded).buckets == 2
    assert sorted(_buckets(engine)) == [(1, 0, 1), (2, 1, 1)]
