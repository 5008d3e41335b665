"""The plain-Python reference for event ingestion: the same work as POST /api/events, no HTTP.

Each batch body is parsed with json.loads, folded into minute buckets per version (the same
sums and latency histogram) and last-seen times, then written with the SQL statements the
server runs for an accepted batch, on the same schema, in one write transaction: look up the
batch's versions, record the batch id, upsert the buckets and the last-seen rows in key order
(one executemany each), commit. (Before issue 17's change the server also read the batch's
prompts for every batch, and so did this reference; now both read them only for a refused
batch.) Straight on the driver: sqlite3 (writers queued on a lock, as the server queues them)
or psycopg. No validation beyond what the fold needs: this is the limit the server is
compared with.
"""

from __future__ import annotations

import bisect
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bot.models import HISTOGRAM_COLUMNS, LATENCY_BOUNDS_MS

COLUMNS = ("requests", "errors", "latency_sum_ms", "quality_sum", "quality_count")
COLUMNS += HISTOGRAM_COLUMNS
_H0 = len(COLUMNS) - len(HISTOGRAM_COLUMNS)


def _statements(mark: str) -> dict[str, str]:
    """The server's statements, in the driver's parameter style (`?` or `%s`)."""
    names = ", ".join(COLUMNS)
    sums = ", ".join(f"{c} = metric_bucket.{c} + excluded.{c}" for c in COLUMNS)
    values = ", ".join([mark] * (len(COLUMNS) + 2))
    return {
        "versions": "SELECT prompt.name, prompt_version.label, prompt_version.id FROM prompt "
        "JOIN prompt_version ON prompt_version.prompt_id = prompt.id WHERE prompt.name IN ({})",
        "batch": f"INSERT INTO ingested_batch (batch_id, created_at) VALUES ({mark}, {mark}) "
        "ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id",
        "buckets": f"INSERT INTO metric_bucket (version_id, minute, {names}) VALUES ({values}) "
        f"ON CONFLICT (version_id, minute) DO UPDATE SET {sums}",
        "seen": f"INSERT INTO version_seen (version_id, last_event_at) VALUES ({mark}, {mark}) "
        "ON CONFLICT (version_id) DO UPDATE SET last_event_at = CASE WHEN "
        "excluded.last_event_at > version_seen.last_event_at THEN excluded.last_event_at "
        "ELSE version_seen.last_event_at END",
    }


def _sqlite_time(ts: datetime) -> str:
    """A UTC time as SQLAlchemy stores it in SQLite (naive, microseconds always written)."""
    ts = ts.astimezone(UTC)
    return (
        f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d} "
        f"{ts.hour:02d}:{ts.minute:02d}:{ts.second:02d}.{ts.microsecond:06d}"
    )


def fold(body: bytes, now: datetime) -> tuple[dict[str, Any], dict[Any, list[float]], dict]:
    """Parse a batch and fold it: (the document, rows by (prompt, version, minute), last seen
    by (prompt, version))."""
    document = json.loads(body)
    rows: dict[Any, list[float]] = {}
    latest: dict[tuple[str, str], datetime] = {}
    for event in document["events"]:
        raw = event.get("ts")
        ts = datetime.fromisoformat(raw) if raw is not None else now
        key = (event["prompt"], event["version"])
        minute = ts.replace(second=0, microsecond=0)
        row = rows.get((key, minute))
        if row is None:
            row = rows[(key, minute)] = [0] * len(COLUMNS)
        row[0] += 1
        row[1] += event["error"]
        latency = event["latency_ms"]
        row[2] += latency
        row[_H0 + bisect.bisect_left(LATENCY_BOUNDS_MS, latency)] += 1
        quality = event.get("quality")
        if quality is not None:
            row[3] += quality
            row[4] += 1
        if key not in latest or ts > latest[key]:
            latest[key] = ts
    return document, rows, latest


class Reference:
    """Ingests batch bodies straight through a DB-API driver."""

    def __init__(self, connect: Callable[[], Any], dialect: str) -> None:
        self.connect = connect
        self.sqlite = dialect == "sqlite"
        self.sql = _statements("?" if self.sqlite else "%s")
        self.mark = "?" if self.sqlite else "%s"
        self.writer = threading.Lock()  # SQLite: one writer at a time, queued as in the server

    def ingest(self, conn: Any, body: bytes) -> None:
        """One batch, one transaction."""
        now = datetime.now(UTC)
        document, rows, latest = fold(body, now)
        names = sorted({prompt for (prompt, _), _ in rows})
        marks = ", ".join([self.mark] * len(names))
        stamp = _sqlite_time if self.sqlite else (lambda ts: ts)
        if self.sqlite:
            self.writer.acquire()
            conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.cursor()
            cur.execute(self.sql["versions"].format(marks), names)
            ids = {(name, label): vid for name, label, vid in cur.fetchall()}
            batch_id = document.get("batch_id")
            if batch_id is not None:
                cur.execute(self.sql["batch"], (batch_id, stamp(now)))
                if cur.fetchone() is None:
                    conn.rollback()
                    return
            buckets = sorted((ids[key], minute, row) for (key, minute), row in rows.items())
            cur.executemany(
                self.sql["buckets"], [(vid, stamp(minute), *row) for vid, minute, row in buckets]
            )
            seen = sorted((ids[key], ts) for key, ts in latest.items())
            cur.executemany(self.sql["seen"], [(vid, stamp(ts)) for vid, ts in seen])
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            if self.sqlite:
                self.writer.release()

    def run(
        self,
        bodies: list[bytes],
        clients: int,
        seconds: float,
        prepare: Callable[[bytes], bytes] = lambda body: body,
    ) -> tuple[int, float]:
        """Ingest `bodies` round-robin from `clients` threads for `seconds`, each through
        `prepare` (which gives it a fresh batch id, as the clients do): (events, elapsed)."""
        events_per_body = [len(json.loads(b)["events"]) for b in bodies]
        done, lock = [0], threading.Lock()
        stop = time.perf_counter() + seconds

        def worker(index: int) -> None:
            conn = self.connect()
            i, mine = index, 0
            while time.perf_counter() < stop:
                self.ingest(conn, prepare(bodies[i % len(bodies)]))
                mine += events_per_body[i % len(bodies)]
                i += 1
            conn.close()
            with lock:
                done[0] += mine

        began = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return done[0], time.perf_counter() - began


def sqlite_connect(path: str) -> Callable[[], sqlite3.Connection]:
    """Connections configured as the server configures its own (WAL, synchronous=FULL)."""

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    return connect


def psycopg_connect(url: str) -> Callable[[], Any]:
    """psycopg connections (the URL may carry a search_path in `options`)."""
    import psycopg

    return lambda: psycopg.connect(url)
