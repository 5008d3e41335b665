"""Schema migrations (Alembic): upgrade to head, and check that a database is current.

Checking is cheap: the revisions this release ships are read from the `revision = ...` lines of
the files in migrations/versions, and the database's from its `alembic_version` table, so the
commands that only read (and `/healthz`) never import Alembic; only an upgrade does.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

from bot.db import translate_db_errors
from bot.errors import DatabaseUnavailable, SchemaOutOfDate, SchemaTooNew

if TYPE_CHECKING:
    from alembic.config import Config

# A migration waits at most this long for a table lock (PostgreSQL). Beside serving replicas,
# an ALTER queued behind a long query would otherwise block every later query on that table.
LOCK_TIMEOUT_S = 5

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"  # Alembic's default, which migrations/env.py keeps

_REVISION_LINE = re.compile(
    r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(?:['\"]([^'\"]+)['\"]|None)\s*$", re.M
)


def alembic_config() -> Config:
    """An Alembic config pointing at the bundled migrations (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@cache
def shipped_revisions() -> dict[str, str | None]:
    """Each migration this release ships → the one it revises (None for the first), read
    from the `revision` and `down_revision` lines of migrations/versions/*.py (Alembic's
    own reading of the same files is what `upgrade` uses; a test keeps the two in step)."""
    revisions: dict[str, str | None] = {}
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        found = {name: value or None for name, value in _REVISION_LINE.findall(path.read_text())}
        revision = found.get("revision")
        if revision is None:
            raise RuntimeError(f"{path.name}: no `revision = '...'` line")
        revisions[revision] = found.get("down_revision")
    return revisions


def head_revision() -> str:
    """The newest migration this release ships (the one no other revises)."""
    revisions = shipped_revisions()
    heads = set(revisions) - {down for down in revisions.values() if down is not None}
    if len(heads) != 1:
        raise RuntimeError(f"the bundled migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at, or None for an empty database."""
    with translate_db_errors(), engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(rows) > 1:
        raise SchemaOutOfDate(
            f"the database records {len(rows)} schema revisions ({', '.join(sorted(rows))}); "
            "this release has one line of migrations and cannot use it safely"
        )
    return rows[0] if rows else None


def known(revision: str | None) -> bool:
    """Whether this release ships `revision` (None: an empty database)."""
    return revision is None or revision in shipped_revisions()


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
    from alembic import command

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
