"""Database faults that are the database's state, not a bug: 503, then recovery by itself."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, InternalError

from bot import registry
from bot.db import is_transient, make_engine, ping, write_session
from bot.errors import DatabaseUnavailable
from bot.migrate import upgrade
from bot.models import utcnow


def test_a_sqlite_connection_opened_while_the_file_was_read_only_is_replaced(
    tmp_path: Path,
) -> None:
    """SQLite opens a file it cannot write read-only, and such a connection stays read-only
    after the file is writable again; the pool must drop it instead of answering 503 forever.
    (As root a file mode cannot stop writes, so the read-only open is made explicit.)"""
    path = tmp_path / "registry.db"
    upgrade(make_engine(f"sqlite:///{path}"))
    engine = make_engine(f"sqlite:///{path}", pool_size=1, max_overflow=0)
    opened: list[str] = []

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        mode = "ro" if not opened else "rw"  # read-only during the spell, then writable
        opened.append(mode)
        return sqlite3.connect(f"file:{path}?mode={mode}", uri=True, **cparams)

    def register(version: str) -> None:
        with write_session(engine) as session:
            registry.create_version(
                session=session,
                prompt="p",
                version=version,
                template="t",
                created_by="me",
                now=utcnow(),
            )

    with pytest.raises(DatabaseUnavailable, match="readonly"):
        register("v1")
    register("v1")  # no restart: the read-only connection was dropped, a new one opened
    assert opened == ["ro", "rw"]
    assert ping(engine) is True
    engine.dispose()


@pytest.mark.parametrize(
    ("sqlstate", "transient"),
    [
        ("25006", True),  # read-only transaction: failover, standby
        ("40001", True),  # serialization failure
        ("40P01", True),  # deadlock detected
        ("55P03", True),  # lock not available (lock_timeout)
        ("57P01", True),  # admin shutdown
        ("53100", True),  # disk full
        ("23505", False),  # unique violation: a bug here, not a fault
        ("42601", False),  # syntax error: a bug
    ],
)
def test_faults_that_are_the_databases_state_are_503s_and_bugs_are_not(
    sqlstate: str, transient: bool
) -> None:
    class Original(Exception):
        pass

    original = Original("boom")
    original.sqlstate = sqlstate  # type: ignore[attr-defined]
    error: DBAPIError = InternalError("SELECT 1", {}, original)
    assert is_transient(error) is transient


def test_a_full_disk_answers_503_and_writes_resume_when_space_is_freed(tmp_path: Path) -> None:
    """A tmpfs of 4 MiB filled up: the write is refused as the database's state (503), and the
    same engine writes again as soon as space is freed, with no restart."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        url = f"sqlite:///{mount / 'registry.db'}"
        upgrade(make_engine(url))
        engine = make_engine(url)
        filler = mount / "filler"
        with filler.open("wb") as out:  # fill what is left
            with contextlib.suppress(OSError):
                while True:
                    out.write(bytes(65536))
                    out.flush()
        refused = None
        for n in range(200):  # until the database needs a page the disk no longer has
            try:
                with write_session(engine) as session:
                    registry.create_version(
                        session=session,
                        prompt="p",
                        version=f"v{n}",
                        template="x" * 20_000,
                        created_by="me",
                        now=utcnow(),
                    )
            except DatabaseUnavailable as exc:
                refused = exc
                break
        assert refused is not None and "full" in refused.message, refused
        filler.unlink()
        with write_session(engine) as session:
            registry.create_version(
                session=session,
                prompt="p",
                version="after",
                template="t",
                created_by="me",
                now=utcnow(),
            )
        engine.dispose()
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
