"""Schema migrations (Alembic): upgrade to head, and check that a database is current."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine, text

from bot.db import translate_db_errors
from bot.errors import DatabaseUnavailable, SchemaOutOfDate, SchemaTooNew

# A migration waits at most this long for a table lock (PostgreSQL). Beside serving replicas,
# an ALTER queued behind a long query would otherwise block every later query on that table.
LOCK_TIMEOUT_S = 5

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    """An Alembic config pointing at the bundled migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest migration this release ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at, or None for an empty database."""
    with translate_db_errors(), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def known(revision: str | None) -> bool:
    """Whether this release ships `revision` (None: an empty database)."""
    if revision is None:
        return True
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def refuse_newer(revision: str | None) -> None:
    """Raise SchemaTooNew when the database was migrated by a later release."""
    if not known(revision):
        raise SchemaTooNew(
            f"the database schema is at {revision}, newer than this release knows (its newest "
            f"is {head_revision()}): a later release migrated it. Run that release or a newer "
            "one; this one cannot use the database safely"
        )


def upgrade(
    engine: Engine, revision: str = "head", *, lock_timeout_s: float = LOCK_TIMEOUT_S
) -> None:
    """Bring the database's schema up to `revision`; all or nothing."""
    refuse_newer(current_revision(engine))
    config = alembic_config()
    try:
        with translate_db_errors(), engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'"))
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    except DatabaseUnavailable as exc:
        if "lock timeout" not in exc.message:
            raise
        raise DatabaseUnavailable(
            f"database unavailable: the migration waited {lock_timeout_s:g} s for a table lock "
            "held by running queries and changed nothing; run `rollback-bot db upgrade` again "
            "(at a quieter moment, or after stopping long-running clients)"
        ) from exc


def ensure_current(engine: Engine, *, auto_upgrade: bool) -> None:
    """Upgrade (SQLite) or refuse to run (PostgreSQL) when the schema is behind this release;
    refuse either way when it is ahead."""
    revision = current_revision(engine)
    if revision == head_revision():
        return
    refuse_newer(revision)
    if auto_upgrade:
        upgrade(engine)
        return
    raise SchemaOutOfDate(
        "the database schema is not up to date; run `rollback-bot db upgrade` first"
    )
