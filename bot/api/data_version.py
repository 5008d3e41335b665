"""SQLite's `PRAGMA data_version` on one dedicated connection: a counter that moves whenever
any other connection (this process's pool, the CLI) commits to the database file. Reading it
costs microseconds, so an idle SQLite server's poll skips even the fingerprint query."""

from __future__ import annotations

import sqlite3

from sqlalchemy import Engine


class DataVersion:
    """The database file's change counter, or None when it cannot be had (then: read)."""

    def __init__(self, engine: Engine) -> None:
        path = engine.url.database
        self.path = (
            path if engine.dialect.name == "sqlite" and path and path != ":memory:" else None
        )
        self._conn: sqlite3.Connection | None = None

    def read(self) -> int | None:
        """The counter now; None if unknown (not a SQLite file, locked, unreadable)."""
        if self.path is None:
            return None
        try:
            if self._conn is None:
                # timeout 0: never wait on a lock (this runs in the event loop); a locked file
                # answers None and the caller reads the database as usual.
                self._conn = sqlite3.connect(self.path, timeout=0, check_same_thread=False)
                self._conn.isolation_level = None
            row = self._conn.execute("PRAGMA data_version").fetchone()
            return int(row[0])
        except sqlite3.Error:
            self.close()
            return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
