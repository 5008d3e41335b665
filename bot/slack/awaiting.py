"""Answers that wait for Slack without holding a thread.

A `/rollback` answer says whether its announcement is in the channel yet, so it waits (a
second or two) for the outbox to post it. Holding a work-pool thread for that wait would make
a burst of commands queue every later rollback — and every click's dialog, whose trigger Slack
lets live 3 s — behind posts to Slack. Here the wait is a deadline in a heap: the outbox calls
`delivered(key)` when it posts the row, one thread wakes at the deadlines, and the caller's
`then(sent)` runs exactly once, from whichever came first.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Then = Callable[[bool], None]
RECENT = 1024  # delivered keys remembered for add(); far more than are ever in flight


@dataclass(order=True)
class _Wait:
    deadline: float
    seq: int
    key: str = field(compare=False)
    then: Then = field(compare=False)
    done: bool = field(default=False, compare=False)


class Awaiting:
    """Calls `then(True)` when an outbox row is delivered here, or `then(is_sent(key))` when
    its wait runs out (another replica may have posted it). `then` must be quick: it runs on
    the outbox's or this class's thread (hand real work to a pool)."""

    def __init__(self, is_sent: Callable[[str], bool]) -> None:
        self._is_sent = is_sent
        self._cond = threading.Condition()
        self._heap: list[_Wait] = []
        self._by_key: dict[str, list[_Wait]] = {}
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        # Keys delivered lately: a row posted between its commit and add() (no database read).
        self._recent: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str, timeout: float, then: Then) -> None:
        """Wait up to `timeout` seconds for the row `key` to be delivered."""
        wait = _Wait(time.monotonic() + timeout, next(self._seq), key, then)
        with self._cond:
            if key in self._recent:  # posted before the wait was registered
                wait.done = True
            else:
                heapq.heappush(self._heap, wait)
                self._by_key.setdefault(key, []).append(wait)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="slack-awaiting", daemon=True
                    )
                    self._thread.start()
                self._cond.notify()
        if wait.done:
            _call(then, True)

    def delivered(self, key: str) -> None:
        """The row `key` was posted: its waits end now."""
        with self._cond:
            self._recent[key] = None
            while len(self._recent) > RECENT:
                self._recent.popitem(last=False)
            waits = [w for w in self._by_key.pop(key, []) if not w.done]
            for w in waits:
                w.done = True
        for w in waits:
            _call(w.then, True)

    def _run(self) -> None:
        while True:
            with self._cond:
                expired: list[_Wait] = []
                now = time.monotonic()
                while self._heap and (self._heap[0].done or self._heap[0].deadline <= now):
                    w = heapq.heappop(self._heap)
                    if not w.done:
                        w.done = True
                        expired.append(w)
                        rest = [x for x in self._by_key.get(w.key, []) if x is not w]
                        if rest:
                            self._by_key[w.key] = rest
                        else:
                            self._by_key.pop(w.key, None)
                if not expired:
                    self._cond.wait(self._heap[0].deadline - now if self._heap else None)
                    continue
            for w in expired:
                try:
                    sent = self._is_sent(w.key)
                except Exception:  # the database is unreachable: not known to be posted
                    sent = False
                _call(w.then, sent)


def _call(then: Then, sent: bool) -> None:
    try:
        then(sent)
    except Exception:  # e.g. the pool is shut down while the server stops; nothing to answer
        log.warning("an answer waiting for Slack could not be given", exc_info=True)
