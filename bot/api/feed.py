"""The routing change feed behind GET /api/stream, /resolve's cache and OFREP.

Changes are pushed, not polled for:

- a change committed in this process (an API route, the checker, a rollout, verification,
  Slack) reaches the feed at commit through a session event (bot/registry/events.py), from
  whatever thread committed it, with the state it committed: it is cached before the commit
  returns (so /resolve answers it at once) and published without reading it back;
- on PostgreSQL a change committed by another process (a replica, the CLI) arrives by
  LISTEN/NOTIFY on one dedicated connection (bot/api/notify_pg.py);
- a poll reads one value, the routing fingerprint (row count and sum of revisions), and only
  when it moved reads which prompts changed. It is the safety net on PostgreSQL (every
  STREAM_SAFETY_POLL_SECONDS while LISTEN works, every STREAM_POLL_SECONDS while it is down)
  and how a SQLite server sees the CLI's changes (every STREAM_POLL_SECONDS).

Each prompt announced by another process is read from the database. Every state, pushed or
read, is cached and fanned out to the connected streams in the order it was cached, and only if
its revision is newer than the one cached (revisions only grow): a read that began before a
pushed change and answers after it never puts the older state back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import suppress
from typing import TYPE_CHECKING

from anyio import to_thread
from sqlalchemy import URL, Engine
from sqlmodel import Session

from bot import registry
from bot.api.data_version import DataVersion
from bot.db import read_session
from bot.errors import BotError
from bot.liveness import Loop
from bot.models import RoutingState
from bot.registry import events

if TYPE_CHECKING:
    from bot.api.notify_pg import PgListener

log = logging.getLogger(__name__)

QUEUE_SIZE = 1_000  # a subscriber this far behind is dropped; its client reconnects
SAFETY_POLL_SECONDS = 2.0


class ChangeFeed:
    """Publishes every routing change to subscribers (asyncio queues)."""

    def __init__(
        self,
        engine: Engine,
        poll_seconds: float,
        safety_poll_seconds: float = SAFETY_POLL_SECONDS,
        *,
        listen: bool = True,
    ) -> None:
        self.engine, self.poll_seconds = engine, poll_seconds
        self.safety_poll_seconds = max(safety_poll_seconds, poll_seconds)
        self.loop = Loop("change-feed", self.safety_poll_seconds)
        self._subscribers: set[asyncio.Queue[RoutingState | None]] = set()
        self._states: dict[str, RoutingState] = {}  # every prompt's routing as last cached
        self._fingerprint: tuple[int, int] | None = None
        # SQLite: the file's change counter as of the last poll that read (None: unknown).
        self._data_version = DataVersion(engine)
        self._polled_version: int | None = None
        # Prompts to read at once: {name: revision announced, or None if not known}.
        self._pending: dict[str, int | None] = {}
        self._poll_now = False
        # States cached and not yet handed to the streams, in the order they were cached.
        self._outgoing: list[RoutingState] = []
        self._lock = threading.Lock()  # changes are announced from worker threads
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.listener: PgListener | None = None
        if listen and engine.dialect.name == "postgresql":
            from bot.api.notify_pg import PgListener  # psycopg: loaded only on PostgreSQL

            self.listener = PgListener(
                engine, self._notified, self._listening, on_state=self._state_notified
            )

    def current(self, prompt: str) -> RoutingState | None:
        """The prompt's routing as last cached (None if unknown)."""
        return self._states.get(prompt)

    def subscribe(self) -> asyncio.Queue[RoutingState | None]:
        """A queue that receives every change from now on."""
        queue: asyncio.Queue[RoutingState | None] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[RoutingState | None]) -> None:
        """Stop delivering to `queue`."""
        self._subscribers.discard(queue)

    def start(self) -> None:
        """Start following changes (inside the running event loop)."""
        self._aloop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        events.add_listener(self._committed)
        self._task = self._aloop.create_task(self._run())
        if self.listener is not None:
            self.listener.start()

    async def stop(self) -> None:
        """Stop following changes and end every stream."""
        events.remove_listener(self._committed)
        if self.listener is not None:
            await self.listener.stop()
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        self._data_version.close()
        for queue in list(self._subscribers):
            with suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    # --- what wakes the feed (any thread) --------------------------------------------------

    def _committed(self, url: URL, changed: dict[str, RoutingState]) -> None:
        """A commit in this process changed routing to `changed` (called in the committing
        thread, before the commit returns to whoever made it)."""
        if url != self.engine.url:
            return
        with self._lock:
            for state in changed.values():
                self._install(state)
        aloop = self._aloop
        if aloop is not None:  # fanned out now, even while the feed's task waits on a read
            with suppress(RuntimeError):  # the event loop has closed (shutting down)
                aloop.call_soon_threadsafe(self._flush)

    def _install(self, state: RoutingState, *, publish: bool = True) -> None:
        """Cache `state` if it is newer than the one cached (call with the lock held)."""
        if self._revision(state.prompt) >= state.revision:
            return
        self._states[state.prompt] = state
        if publish:
            self._outgoing.append(state)

    def _revision(self, prompt: str) -> int:
        """The revision of the prompt's cached state (-1 if none: revisions start at 0)."""
        state = self._states.get(prompt)
        return -1 if state is None else state.revision

    def _notified(self, payload: str) -> None:
        """NOTIFY from PostgreSQL: a change committed by any process, this one included."""
        prompt, revision = events.parse_payload(payload)
        with self._lock:
            if revision is None or self._revision(prompt) < revision:
                self._pending[prompt] = revision
        self._poke()

    def _state_notified(self, payload: str) -> None:
        """NOTIFY with a committed state (on the event loop): cached and published as it is;
        the short payload that follows it then finds nothing to read."""
        try:
            state = RoutingState.model_validate_json(payload)
        except ValueError:  # not ours: the short payload has the change read instead
            log.warning("change feed: ignored a state payload that is not a routing state")
            return
        with self._lock:
            self._install(state)
        self._flush()

    def _listening(self, listening: bool) -> None:
        """The LISTEN connection came up (poll once: catch what it missed) or went down."""
        with self._lock:
            self._poll_now = True
        self._poke()

    def _poke(self) -> None:
        aloop, wake = self._aloop, self._wake
        if aloop is None or wake is None:
            return  # not started: the first read covers everything
        with suppress(RuntimeError):  # the event loop has closed (shutting down)
            aloop.call_soon_threadsafe(wake.set)

    # --- the feed's own task ---------------------------------------------------------------

    def _poll_interval(self) -> float:
        """Slow while NOTIFY brings other processes' changes; fast when nothing does."""
        listening = self.listener is not None and self.listener.listening
        return self.safety_poll_seconds if listening else self.poll_seconds

    async def _run(self) -> None:
        assert self._wake is not None
        with suppress(BotError):
            self._fingerprint, states = await to_thread.run_sync(self._everything)
            with self._lock:
                for state in states:
                    self._install(state, publish=False)
        next_poll = time.monotonic() + self._poll_interval()
        if self._pending:
            self._wake.set()  # announced before the feed started
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that lands as the wait ends, and stop() would then wait for ever.
            with suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_poll - time.monotonic())):
                    await self._wake.wait()
            self._wake.clear()
            self._flush()  # states pushed at commit
            with self._lock:
                pending, self._pending = self._pending, {}
                poll = self._poll_now or time.monotonic() >= next_poll
                self._poll_now = False
            version, quiet = None, False
            if poll:
                next_poll = time.monotonic() + self._poll_interval()
                version = self._data_version.read()
                # Nothing committed to the file since the last poll that read: nothing to read.
                quiet = version is not None and version == self._polled_version
                poll = not quiet
            names = [
                name
                for name, revision in pending.items()
                if revision is None or self._revision(name) < revision
            ]
            if not names and not poll:
                if quiet:
                    self.loop.ok()
                continue
            try:
                changed, fingerprint = await to_thread.run_sync(self._read, names, poll)
            except BotError as exc:  # the database is unreachable: keep the streams open
                log.warning("change feed: %s", exc.message)
                continue
            except Exception as exc:  # never let the feed die: /resolve would go stale
                await asyncio.sleep(self.loop.failed(exc))
                continue
            self.loop.ok()
            self._publish(changed)
            if fingerprint is not None:
                self._fingerprint = fingerprint
            if poll:
                self._polled_version = version  # read before the poll: it is at least as new

    def _publish(self, changed: list[RoutingState]) -> None:
        """Cache and fan out the states a read found (those not already cached)."""
        with self._lock:
            for state in changed:
                self._install(state)
        self._flush()

    def _flush(self) -> None:
        """Hand the states cached since the last flush to every stream, in order."""
        with self._lock:
            outgoing, self._outgoing = self._outgoing, []
        for state in outgoing:
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

    # --- reads (worker threads) ------------------------------------------------------------

    def _everything(self) -> tuple[tuple[int, int], list[RoutingState]]:
        with read_session(self.engine) as session:
            fingerprint = registry.routing_fingerprint(session=session)  # read first: see _read
            return fingerprint, registry.routing_states(session=session)

    def _read(
        self, names: list[str], poll: bool
    ) -> tuple[list[RoutingState], tuple[int, int] | None]:
        """The states of `names`, and on a poll of every prompt whose revision moved.

        Returns the states read and the new fingerprint if it moved. The fingerprint is read
        before anything else, so the states read are at least as new as it: a later poll
        finding it unchanged knows they are current."""
        wanted = set(names)
        fingerprint: tuple[int, int] | None = None
        with read_session(self.engine) as session:
            if poll:
                found = registry.routing_fingerprint(session=session)
                if found != self._fingerprint:
                    fingerprint = found
                    wanted |= set(self._changes(session))
            states = (
                registry.routing_states(session=session, names=sorted(wanted)) if wanted else []
            )
        return states, fingerprint

    def _changes(self, session: Session) -> list[str]:
        """The prompts whose revision differs from the one last read."""
        current = registry.revisions(session=session)
        return [name for name, rev in current.items() if self._revision(name) != rev]
