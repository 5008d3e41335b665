"""Answers waiting for an outbox row: told exactly once, by the delivery or by the deadline."""

from __future__ import annotations

import threading
import time

from bot.slack.awaiting import Awaiting


class Told:
    def __init__(self) -> None:
        self.values: list[bool] = []
        self.event = threading.Event()

    def __call__(self, sent: bool) -> None:
        self.values.append(sent)
        self.event.set()


def test_a_delivery_ends_the_wait_at_once_and_only_once() -> None:
    posted: set[str] = set()
    awaiting = Awaiting(lambda key: key in posted)
    told = Told()
    awaiting.add("card-1", 0.3, told)
    posted.add("card-1")
    awaiting.delivered("card-1")
    assert told.event.wait(1) and told.values == [True]
    awaiting.delivered("card-1")  # a second notice, then the deadline passing: nothing more
    time.sleep(0.5)
    assert told.values == [True]


def test_the_deadline_reads_the_database_once() -> None:
    posted: set[str] = set()
    awaiting = Awaiting(lambda key: key in posted)
    not_yet, elsewhere = Told(), Told()
    awaiting.add("card-1", 0.1, not_yet)
    awaiting.add("card-2", 0.2, elsewhere)
    posted.add("card-2")  # another replica's outbox posted it: no delivered() here
    assert not_yet.event.wait(2) and elsewhere.event.wait(2)
    assert not_yet.values == [False]
    assert elsewhere.values == [True]


def test_a_row_posted_before_the_wait_began_answers_at_once() -> None:
    """The outbox may post a row between its commit and the wait being registered."""
    awaiting = Awaiting(lambda key: False)  # the database is not read for it
    told = Told()
    started = time.monotonic()
    awaiting.delivered("card-1")
    awaiting.add("card-1", 5.0, told)
    assert told.event.wait(1) and told.values == [True]
    assert time.monotonic() - started < 1.0  # not at the 5 s deadline


def test_a_failing_answer_does_not_stop_the_others() -> None:
    awaiting = Awaiting(lambda key: False)
    told = Told()

    def broken(sent: bool) -> None:
        raise RuntimeError("cannot schedule new futures after shutdown")

    awaiting.add("card-1", 0.05, broken)
    awaiting.add("card-2", 0.1, told)
    assert told.event.wait(2) and told.values == [False]
