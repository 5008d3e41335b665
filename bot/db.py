"""Database engines and sessions: SQLite (WAL) by default, PostgreSQL for teams and replicas."""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, ExceptionContext
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Session

from bot.errors import DatabaseUnavailable

T = TypeVar("T")

# Execution option that asks SQLite for `BEGIN IMMEDIATE`: the write lock is taken up front,
# so two writers queue on busy_timeout instead of failing when one upgrades a read lock.
WRITE_INTENT = "rollback_bot_write"
SQLITE_BUSY_TIMEOUT_MS = 5_000
BUSY_MS = "rollback_bot_busy_ms"  # execution option: this transaction's busy timeout


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain postgresql:// URLs."""
    if url.startswith("postgres://"):  # Heroku's and others' spelling
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    """Create an engine tuned for the registry's short write transactions."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=pool_size,
            max_overflow=max_overflow,
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    else:
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=True,
            pool_timeout=10,
            connect_args={"connect_timeout": 5},
        )
    event.listen(engine, "handle_error", _drop_stale_connections)
    return engine


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


# Checked inside every write transaction just before it commits, when set for this thread:
# the leader's rounds set it to verify that they still hold the lease (bot/runtime/lease.py),
# so a paused ex-leader's stale step is refused in the very transaction that would apply it.
COMMIT_GUARD: ContextVar[Callable[[Session], None] | None] = ContextVar(
    "rollback_bot_commit_guard", default=None
)


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session whose transaction holds the write lock from its first statement, then commits
    (after the thread's COMMIT_GUARD, if any, has approved it)."""
    with (
        _sqlite_writer(engine) as busy_ms,
        translate_db_errors(),
        Session(engine, expire_on_commit=False) as session,
    ):
        session.connection(execution_options={WRITE_INTENT: True, BUSY_MS: busy_ms})
        yield session
        guard = COMMIT_GUARD.get()
        if guard is not None:
            guard(session)  # raises to roll the whole transaction back
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


# PostgreSQL faults that are the database's state, not the request's: retry later (503).
# 08 connection, 53 insufficient resources (disk full), 57 operator intervention (admin
# shutdown, cannot connect now, statement or lock timeout), 58 system error; and singly:
# a read-only transaction (a failover, a standby), serialization failure, deadlock, a lock
# not available (lock_timeout / NOWAIT), an object in use.
_TRANSIENT_CLASSES = ("08", "53", "57", "58")
_TRANSIENT_STATES = frozenset({"25006", "40001", "40P01", "40003", "55P03", "55006"})
# Faults after which a pooled connection stays unusable though the database recovers: a
# PostgreSQL session opened read-only (during a failover) stays read-only; a SQLite
# connection opened while its file was read-only stays so. Such connections are dropped.
_STALE_CONNECTION_STATES = frozenset({"25006"})
_STALE_SQLITE = ("readonly database", "disk i/o error")


def is_transient(exc: DBAPIError) -> bool:
    """Whether `exc` is the database being down, read-only, full or busy (a 503, not a bug)."""
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        return True
    state = str(getattr(exc.orig, "sqlstate", None) or "")
    return state.startswith(_TRANSIENT_CLASSES) or state in _TRANSIENT_STATES


@contextmanager
def translate_db_errors() -> Iterator[None]:
    """Turn a down, unreachable, read-only, full or locked database into DatabaseUnavailable."""
    try:
        yield
    except DBAPIError as exc:
        if is_transient(exc):
            raise DatabaseUnavailable(describe(exc)) from exc
        raise


CONFLICT_STATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock


def retry_conflicts(work: Callable[[], T], attempts: int = 4) -> T:
    """Run `work` (a whole transaction) again when PostgreSQL aborted it as a deadlock victim or
    a serialization failure: such a transaction changed nothing and succeeds when run again,
    so the caller never sees it (a 503 would only make every client retry)."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except DatabaseUnavailable as exc:
            cause = exc.__cause__
            state = str(getattr(getattr(cause, "orig", None), "sqlstate", None) or "")
            if state not in CONFLICT_STATES or attempt == attempts:
                raise
            time.sleep(random.uniform(0.002, 0.02) * attempt)
    raise AssertionError("unreachable")


def describe(exc: DBAPIError) -> str:
    """One line for a database fault: what the database said."""
    original: Any = exc.orig
    state = str(getattr(original, "sqlstate", None) or "")
    if state == "25006":
        return "database unavailable: it is read-only (a failover or a standby?); retry shortly"
    first_line = str(original).strip().splitlines()[0] if original else exc.__class__.__name__
    return f"database unavailable: {first_line}"


def _drop_stale_connections(context: ExceptionContext) -> None:
    """Treat a fault that leaves a connection unusable as a disconnect: SQLAlchemy then
    discards the pool's connections and the next use opens fresh ones."""
    original = context.original_exception
    state = str(getattr(original, "sqlstate", None) or "")
    message = str(original).lower()
    if state in _STALE_CONNECTION_STATES or (
        isinstance(original, sqlite3.Error) and any(m in message for m in _STALE_SQLITE)
    ):
        context.is_disconnect = True


def ping(engine: Engine) -> bool:
    """Whether the database takes writes (it answers reads, or DatabaseUnavailable is
    raised): a PostgreSQL session that is read-only (failover, standby), a SQLite file or
    folder that cannot be written."""
    with translate_db_errors(), engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            setting = conn.execute(text("SELECT current_setting('transaction_read_only')"))
            return bool(setting.scalar_one() == "off")
        conn.execute(text("SELECT 1"))
    path = engine.url.database
    if not path or path == ":memory:":
        return True
    file = Path(path).expanduser()
    return os.access(file, os.W_OK) and os.access(file.parent, os.W_OK)


def upsert_insert(bind: Engine | Connection | Session) -> Any:
    """The dialect's INSERT construct, which has ON CONFLICT (DO NOTHING / DO UPDATE)."""
    engine_or_conn = bind.get_bind() if isinstance(bind, Session) else bind
    return upsert_insert_for(engine_or_conn.dialect.name)


def upsert_insert_for(dialect: str) -> Any:
    """The INSERT construct with ON CONFLICT of the dialect named `dialect`."""
    # Imported here: the PostgreSQL dialect alone is ~35 ms of a CLI command's start-up.
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert
    from sqlalchemy.dialects import sqlite

    return sqlite.insert
