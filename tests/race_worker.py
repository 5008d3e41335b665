"""Rolls one prompt back from N threads at a given instant; prints how each attempt ended.

Run as a separate process by tests/test_race.py (and usable by hand):
    python tests/race_worker.py DATABASE_URL THREADS START_AT_EPOCH [TARGET]
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter

from bot import registry
from bot.db import make_engine, write_session
from bot.errors import BotError
from bot.models import Trigger, utcnow
from bot.registry.changes import Actor


def race(url: str, threads: int, start_at: float, target: str | None, tag: str) -> Counter[str]:
    """Start `threads` rollbacks as close to `start_at` as possible; count the outcomes."""
    engine = make_engine(url, pool_size=threads, max_overflow=0)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def attempt(i: int) -> None:
        with engine.connect():  # open the connection before the start line
            pass
        barrier.wait()
        time.sleep(max(0.0, start_at - time.time()))
        try:
            with write_session(engine) as session:
                registry.rollback(
                    session=session,
                    prompt="customer-support",
                    target=target,
                    actor=Actor(operator=f"{tag}-{i}", trigger=Trigger.SLACK),
                    now=utcnow(),
                    reason="race",
                )
            outcome = "success"
        except BotError as exc:
            outcome = exc.code
        with lock:
            outcomes[outcome] += 1

    workers = [threading.Thread(target=attempt, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    engine.dispose()
    return outcomes


if __name__ == "__main__":
    url, count, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    wanted = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] != "-" else None
    print(
        json.dumps(
            race(url, count, start, wanted, tag=f"p{sys.argv[5] if len(sys.argv) > 5 else 0}")
        )
    )
