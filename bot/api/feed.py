"""The routing change feed behind GET /api/stream.

One poller per process notices routing changes by their revision (a cheap query every
STREAM_POLL_SECONDS) — so a change made by any replica, the CLI or the checker is seen — and
fans each new state out to the connected streams.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import suppress

from anyio import to_thread
from sqlalchemy import Engine

from bot import registry
from bot.db import read_session
from bot.errors import BotError
from bot.liveness import Loop
from bot.models import RoutingState

log = logging.getLogger(__name__)

QUEUE_SIZE = 1_000  # a subscriber this far behind is dropped; its client reconnects


class ChangeFeed:
    """Publishes every routing change to subscribers (asyncio queues)."""

    def __init__(self, engine: Engine, poll_seconds: float) -> None:
        self.loop = Loop("change-feed", poll_seconds)
        self.engine, self.poll_seconds = engine, poll_seconds
        self._subscribers: set[asyncio.Queue[RoutingState | None]] = set()
        self._seen: dict[str, int] = {}
        self._states: dict[str, RoutingState] = {}
        # Prompts changed here, each with the number of its latest mark: a poll settles only
        # the marks made before it read (a change committed during the read may be missed).
        self._dirty: dict[str, int] = {}
        self._marks = 0
        self._lock = threading.Lock()  # routes mark from worker threads
        self._task: asyncio.Task[None] | None = None

    def current(self, prompt: str) -> RoutingState | None:
        """The prompt's routing as last seen (None if unknown, or changed here since)."""
        return None if prompt in self._dirty else self._states.get(prompt)

    def mark_dirty(self, prompt: str) -> None:
        """This process just changed the prompt (committed): read it from the database until a
        poll that began after this call has finished."""
        with self._lock:
            self._marks += 1
            self._dirty[prompt] = self._marks

    def subscribe(self) -> asyncio.Queue[RoutingState | None]:
        """A queue that receives every change from now on."""
        queue: asyncio.Queue[RoutingState | None] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[RoutingState | None]) -> None:
        """Stop delivering to `queue`."""
        self._subscribers.discard(queue)

    def start(self) -> None:
        """Start polling (inside the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop polling and end every stream."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        for queue in list(self._subscribers):
            with suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    async def _run(self) -> None:
        with suppress(BotError):
            for state in await to_thread.run_sync(self._everything):
                self._states[state.prompt] = state
                self._seen[state.prompt] = state.revision
        while True:
            await asyncio.sleep(self.poll_seconds)
            # Marked before this poll began: it reads after their commits, so it settles them.
            settled = self._marks
            try:
                changed = await to_thread.run_sync(self._changes)
            except BotError as exc:  # the database is unreachable: keep the streams open
                log.warning("change feed: %s", exc.message)
                continue
            except Exception as exc:  # never let the feed die: /resolve would go stale
                await asyncio.sleep(self.loop.failed(exc))
                continue
            self.loop.ok()
            with self._lock:
                self._dirty = {name: mark for name, mark in self._dirty.items() if mark > settled}
            for state in changed:
                self._states[state.prompt] = state
                for queue in list(self._subscribers):
                    try:
                        queue.put_nowait(state)
                    except asyncio.QueueFull:
                        self._drop(queue)

    def _drop(self, queue: asyncio.Queue[RoutingState | None]) -> None:
        """End a stream that fell too far behind: its client reconnects and gets a snapshot."""
        self._subscribers.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)

    def _revisions(self) -> dict[str, int]:
        with read_session(self.engine) as session:
            return registry.revisions(session=session)

    def _everything(self) -> list[RoutingState]:
        with read_session(self.engine) as session:
            return registry.routing_states(session=session)

    def _changes(self) -> list[RoutingState]:
        current = self._revisions()
        names = [name for name, rev in current.items() if self._seen.get(name) != rev]
        self._seen = current
        if not names:
            return []
        with read_session(self.engine) as session:
            return registry.routing_states(session=session, names=names)
