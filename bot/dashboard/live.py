"""Live overview: the rows whose figures, verdict, incident or rollout changed, pushed to the
open dashboards every few seconds (one read of the overview per process, however many pages
are open; nothing is read while no page is open)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress

from anyio import to_thread
from sqlalchemy import Engine

from bot.dashboard import data
from bot.db import read_session
from bot.errors import BotError
from bot.models import utcnow
from bot.policy import PolicySet

log = logging.getLogger(__name__)

EVERY_SECONDS = 2.0
QUEUE_SIZE = 100  # a page this far behind is ended; its browser reconnects

Rows = list[dict[str, object]]


class OverviewFeed:
    """Reads the overview while someone watches it and pushes the rows that changed."""

    def __init__(
        self,
        engine: Engine,
        policies: Callable[[], PolicySet],
        every_seconds: float = EVERY_SECONDS,
    ) -> None:
        self.engine, self.policies, self.every_seconds = engine, policies, every_seconds
        self._subscribers: set[asyncio.Queue[Rows | None]] = set()
        self._last: dict[str, dict[str, object]] = {}
        self._fresh: set[asyncio.Queue[Rows | None]] = set()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self) -> asyncio.Queue[Rows | None]:
        """A queue that receives each batch of changed rows from now on."""
        queue: asyncio.Queue[Rows | None] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        self._fresh.add(queue)  # its first batch is every row: the page may be older than it
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Rows | None]) -> None:
        """Stop delivering to `queue` (the reading stops with the last page)."""
        self._subscribers.discard(queue)
        self._fresh.discard(queue)

    async def stop(self) -> None:
        """Stop reading and end every stream."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        for queue in list(self._subscribers):
            with suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    async def _run(self) -> None:
        first = True
        while self._subscribers:
            if not first:
                await asyncio.sleep(self.every_seconds)
            first = False
            try:
                rows = await to_thread.run_sync(self._read)
            except BotError as exc:  # the database is away: keep the pages, say nothing new
                log.warning("live overview: %s", exc.message)
                continue
            except Exception:  # never let a bug end the updates silently
                log.exception("live overview: reading the overview failed")
                continue
            changed = [row for row in rows if self._last.get(str(row["prompt"])) != row]
            self._last = {str(row["prompt"]): row for row in rows}
            fresh, self._fresh = self._fresh, set()
            for queue in list(self._subscribers):
                batch = rows if queue in fresh else changed
                if batch:
                    self._put(queue, batch)

    def _read(self) -> Rows:
        with read_session(self.engine) as session:
            return [row.public() for row in data.overview(session, self.policies(), utcnow())]

    def _put(self, queue: asyncio.Queue[Rows | None], rows: Rows) -> None:
        try:
            queue.put_nowait(rows)
        except asyncio.QueueFull:  # end the stream; the browser reconnects and catches up
            self.unsubscribe(queue)
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)
