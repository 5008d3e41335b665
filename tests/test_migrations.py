"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, text
from sqlmodel import SQLModel

from bot.db import make_engine, normalise_url
from bot.errors import DatabaseUnavailable, SchemaTooNew
from bot.migrate import alembic_config, current_revision, ensure_current, head_revision, upgrade
from tests.conftest import PG_ONLY, PG_URL


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, SQLModel.metadata) == []


def test_upgrade_is_idempotent(engine: Engine) -> None:
    upgrade(engine)
    upgrade(engine)
    assert current_revision(engine) == head_revision()


def test_sqlite_runs_in_wal_mode(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite pragma")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_a_database_migrated_by_a_later_release_gets_one_clear_message(
    engine: Engine, db_url: str
) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0042_from_the_future'"))
    with pytest.raises(SchemaTooNew, match="newer than this release knows"):
        upgrade(engine)
    with pytest.raises(SchemaTooNew, match="a later release migrated it"):
        ensure_current(engine, auto_upgrade=True)
    cli = subprocess.run(
        [sys.executable, "-m", "bot", "db", "upgrade"],
        env={**os.environ, "DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 2
    assert cli.stderr.startswith("error: the database schema is at 0042_from_the_future")
    assert "Traceback" not in cli.stderr and "Can't locate revision" not in cli.stderr
    with engine.begin() as conn:  # leave the shared test schema as it was
        conn.execute(
            text("UPDATE alembic_version SET version_num = :head"), {"head": head_revision()}
        )


@pytest.mark.parametrize("db_url", PG_ONLY, indirect=True)
def test_a_migration_waits_for_a_lock_no_longer_than_its_timeout(db_url: str) -> None:
    """Beside a replica's open transaction on a table the release alters, the migration gives
    up after its lock_timeout with one clear message, instead of queueing every later query
    on that table behind it."""
    assert PG_URL is not None
    schema = f"rollback_bot_migration_{os.getpid()}"
    admin = create_engine(normalise_url(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    engine = make_engine(url)
    replica = engine.connect()
    try:
        upgrade(engine)
        previous = ScriptDirectory.from_config(alembic_config()).get_revision(head_revision())
        command_downgrade(engine, previous.down_revision)
        busy = replica.begin()
        for table in SQLModel.metadata.sorted_tables:  # ACCESS SHARE on every table
            replica.execute(text(f"SELECT count(*) FROM {table.name}"))
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="waited 1 s for a table lock"):
            upgrade(engine, lock_timeout_s=1)
        waited = time.monotonic() - started
        busy.rollback()
        assert waited < 5, waited
        assert current_revision(engine) == previous.down_revision  # all or nothing
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        replica.close()  # whatever failed, no transaction is left holding the schema
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text("SET lock_timeout = '10s'"))
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


def command_downgrade(engine: Engine, revision: str | None) -> None:
    from alembic import command

    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision or "base")


def test_who_acknowledged_before_0014_becomes_the_first_responder(engine: Engine) -> None:
    """The data step of 0014: an incident's investigator is its first responder."""
    from alembic import command

    from tests.conftest import make_prompt

    make_prompt(engine, versions=("v1",))
    command_downgrade(engine, "0013")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO incident (prompt_id, version_id, prompt, version, status, severity,"
                " action, summary, decision, breaches, opened_at, updated_at, last_breach_at,"
                " investigator, pages) VALUES (1, 1, 'customer-support', 'v1', 'open', 'high',"
                " 'page', 's', '{}', 1, '2026-12-03', '2026-12-03', '2026-12-03', 'U7', 0)"
            )
        )
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    with engine.connect() as conn:
        listed = conn.execute(text("SELECT responders FROM incident")).scalar_one()
    assert (listed if isinstance(listed, list) else json.loads(listed)) == ["U7"]
