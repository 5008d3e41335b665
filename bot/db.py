"""Database engines and sessions: SQLite (WAL) by default, PostgreSQL for teams and replicas."""

from __future__ import annotations

import sqlite3
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
    immediate = conn.get_execution_options().get(WRITE_INTENT, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A session for reads; database failures surface as DatabaseUnavailable."""
    with translate_db_errors(), Session(engine, expire_on_commit=False) as session:
        yield session


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session whose transaction holds the write lock from its first statement, then commits."""
    with translate_db_errors(), Session(engine, expire_on_commit=False) as session:
        session.connection(execution_options={WRITE_INTENT: True})
        yield session
        session.commit()


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
