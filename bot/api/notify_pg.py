"""One dedicated PostgreSQL connection per server that LISTENs for routing changes.

Every routing change sends NOTIFY in its own transaction (bot/registry/events.py), so this
connection hears each change made by any replica or the CLI the moment it commits: on one
channel the new state itself when it fits in a payload, then on another `<revision> <prompt>`.
When the connection drops, the listener says so, tells the feed (which then polls at its fast
interval) and reconnects with backoff; once listening again it asks the feed for one poll,
which catches whatever was committed while nobody listened.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable
from contextlib import suppress

import psycopg
from psycopg import sql
from sqlalchemy import Engine

from bot.registry.events import CHANNEL_SQL, STATE_CHANNEL_SQL

log = logging.getLogger(__name__)

CHECK_SECONDS = 15.0  # with no notification for this long, check that the connection answers
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 30.0
APPLICATION_NAME = "rollback-bot listen"  # + the server's pid, as pg_stat_activity shows it


class PgListener:
    """LISTEN on the routing channel of `engine`'s database and schema, forever."""

    def __init__(
        self,
        engine: Engine,
        on_notify: Callable[[str], None],
        on_listening: Callable[[bool], None],
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        self.conninfo = engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self.on_notify, self.on_listening, self.on_state = on_notify, on_listening, on_state
        self._state_channel = ""
        self.application_name = f"{APPLICATION_NAME} {os.getpid()}"
        self.listening = False
        self.connects = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start listening (inside the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST_S
        lost_logged = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo,
                    autocommit=True,
                    application_name=self.application_name,
                    connect_timeout=5,
                ) as conn:
                    channel = await self._listen(conn)
                    self.connects += 1
                    self._set_listening(True)
                    if lost_logged:
                        log.warning("change feed: LISTEN connection restored (%s)", channel)
                    else:
                        log.info("change feed: listening for routing changes on %s", channel)
                    lost_logged, backoff = False, BACKOFF_FIRST_S
                    await self._follow(conn)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                first_line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
                if self.listening or not lost_logged:
                    log.warning(
                        "change feed: LISTEN connection lost (%s); polling until it is back, "
                        "reconnecting in %.1f s",
                        first_line,
                        backoff,
                    )
                    lost_logged = True
                self._set_listening(False)
            await asyncio.sleep(backoff * (1 + random.random() / 4))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _listen(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> str:
        cursor = await conn.execute(f"SELECT {CHANNEL_SQL}, {STATE_CHANNEL_SQL}")
        row = await cursor.fetchone()
        assert row is not None
        channel, self._state_channel = str(row[0]), str(row[1])
        if self.on_state is not None:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._state_channel)))
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        return channel

    async def _follow(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        while True:
            async for notify in conn.notifies(timeout=CHECK_SECONDS):
                if notify.channel == self._state_channel and self.on_state is not None:
                    self.on_state(notify.payload)
                else:
                    self.on_notify(notify.payload)
            # Quiet for a while: a connection cut without a word (a NAT, a failover) would
            # otherwise wait forever.
            async with asyncio.timeout(10):
                await conn.execute("SELECT 1")

    def _set_listening(self, listening: bool) -> None:
        if listening != self.listening:
            self.listening = listening
            self.on_listening(listening)
