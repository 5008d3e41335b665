"""Database engines and sessions: SQLite (WAL) by default, PostgreSQL for teams and replicas."""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Session

from bot.errors import DatabaseUnavailable

# Execution option that asks SQLite for `BEGIN IMMEDIATE`: the write lock is taken up front,
# so two writers queue on busy_timeout instead of failing when one upgrades a read lock.
WRITE_INTENT = "rollback_bot_write"
SQLITE_BUSY_TIMEOUT_MS = 5_000
BUSY_MS = "rollback_bot_busy_ms"  # execution option: this transaction's busy timeout


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain postgresql:// URLs."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    """Create an engine tuned for the registry's short write transactions."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=pool_size,
            max_overflow=max_overflow,
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_timeout=10,
        connect_args={"connect_timeout": 5},
    )


def _ensure_sqlite_dir(url: str) -> None:
    path = url.split("///", 1)[-1].split("?", 1)[0]
    if path and path != ":memory:":
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_on_connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
    # Take transaction control from the driver so the begin hook below decides how to BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    options = conn.get_execution_options()
    immediate = options.get(WRITE_INTENT, False)
    # A writer that already queued in this process waits on SQLite only for what is left of
    # the busy timeout, so a write is refused after SQLITE_BUSY_TIMEOUT_MS in all.
    busy_ms = options.get(BUSY_MS, SQLITE_BUSY_TIMEOUT_MS)
    conn.exec_driver_sql(f"PRAGMA busy_timeout={int(busy_ms)}")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A session for reads; database failures surface as DatabaseUnavailable."""
    with translate_db_errors(), Session(engine, expire_on_commit=False) as session:
        yield session


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session whose transaction holds the write lock from its first statement, then commits."""
    with (
        _sqlite_writer(engine) as busy_ms,
        translate_db_errors(),
        Session(engine, expire_on_commit=False) as session,
    ):
        session.connection(execution_options={WRITE_INTENT: True, BUSY_MS: busy_ms})
        yield session
        session.commit()


# SQLite has one writer at a time. Threads of this process queue for it on a lock, woken the
# moment it is free; left to SQLite's busy handler they would sleep and poll (up to 100 ms a
# nap), which gave ingestion a p99 over a second with four concurrent writers. Other processes
# (the CLI, a second server) still wait on busy_timeout.
_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
_SQLITE_WRITERS_LOCK = threading.Lock()


@contextmanager
def _sqlite_writer(engine: Engine) -> Iterator[float]:
    """Queue for this process's turn to write; yields the busy timeout left (ms)."""
    if engine.dialect.name != "sqlite":
        yield SQLITE_BUSY_TIMEOUT_MS
        return
    with _SQLITE_WRITERS_LOCK:
        lock = _SQLITE_WRITERS.setdefault(engine, threading.RLock())
    started = time.monotonic()
    if not lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
        raise DatabaseUnavailable("database unavailable: database is locked")
    try:
        waited_ms = (time.monotonic() - started) * 1000
        yield max(1.0, SQLITE_BUSY_TIMEOUT_MS - waited_ms)
    finally:
        lock.release()


@contextmanager
def translate_db_errors() -> Iterator[None]:
    """Turn a down, unreachable or locked database into DatabaseUnavailable."""
    try:
        yield
    except OperationalError as exc:
        raise DatabaseUnavailable(_describe(exc)) from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise DatabaseUnavailable(_describe(exc)) from exc
        raise


def _describe(exc: DBAPIError) -> str:
    original: Any = exc.orig
    first_line = str(original).strip().splitlines()[0] if original else exc.__class__.__name__
    return f"database unavailable: {first_line}"


def ping(engine: Engine) -> None:
    """Run a trivial query, raising DatabaseUnavailable when the database does not answer."""
    with translate_db_errors(), engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def upsert_insert(bind: Engine | Connection | Session) -> Any:
    """The dialect's INSERT construct, which has ON CONFLICT (DO NOTHING / DO UPDATE)."""
    engine_or_conn = bind.get_bind() if isinstance(bind, Session) else bind
    return upsert_insert_for(engine_or_conn.dialect.name)


def upsert_insert_for(dialect: str) -> Any:
    """The INSERT construct with ON CONFLICT of the dialect named `dialect`."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert
