"""The routing change feed: a change made in this process is never hidden by a stale cache."""

from __future__ import annotations

import asyncio
import threading

from sqlalchemy import Engine

from bot.api.feed import ChangeFeed
from bot.models import RoutingState
from tests.conftest import make_prompt, roll_back


class PausedFeed(ChangeFeed):
    """A feed whose change query waits, after reading, until the test lets it answer."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, poll_seconds=0.4)
        self.read = threading.Event()
        self.answer = threading.Event()

    def _changes(self) -> list[RoutingState]:
        found = super()._changes()
        if not self.answer.is_set():
            self.read.set()
            self.answer.wait(5)
        return found


def test_a_change_committed_while_a_poll_reads_stays_uncached_until_the_next_poll(
    engine: Engine,
) -> None:
    make_prompt(engine)  # v2.0.0 live

    async def scenario() -> tuple[RoutingState | None, RoutingState | None]:
        feed = PausedFeed(engine)
        feed.mark_dirty("customer-support")  # deployed here: not cached yet
        feed.start()
        await asyncio.to_thread(feed.read.wait, 5)  # a poll has read v2.0.0...
        roll_back(engine)  # ... when this process rolls back and marks the prompt again
        feed.mark_dirty("customer-support")
        feed.answer.set()
        await asyncio.sleep(0.2)  # that poll has answered; the next one is 0.4 s away
        during = feed.current("customer-support")
        await asyncio.sleep(0.5)  # the next poll reads the rollback
        after = feed.current("customer-support")
        await feed.stop()
        return during, after

    during, after = asyncio.run(scenario())
    # Between the two polls the prompt is read from the database, never the stale v2.0.0.
    assert during is None, during
    assert after is not None and after.active_version == "v1.9.0"
