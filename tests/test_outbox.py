"""The Slack outbox when an answer is lost: Slack posted the message but the bot never heard.

The real OutboxWorker against the Slack stand-in, on both databases. A post whose outcome is
unknown is looked for (by its metadata) before it is sent again, so it shows once.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from slack_sdk import WebClient
from sqlalchemy import Engine
from sqlmodel import select

from bot.db import read_session, write_session
from bot.models import OutboxStatus, SlackOutbox
from bot.slack import outbox
from bot.slack.outbox import OutboxWorker
from tests.slack_kit import FakeSlack


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as slack:
        yield slack


@pytest.fixture
def worker(fake: FakeSlack, engine: Engine) -> OutboxWorker:
    fake.reset()
    return OutboxWorker(engine=engine, client=WebClient(token=fake.token, base_url=fake.base_url))


def _queue(engine: Engine, key: str, method: str, payload: dict, parent: str | None = None) -> None:
    with write_session(engine) as session:
        assert outbox.enqueue(session, key=key, method=method, payload=payload, parent_key=parent)


def _drain(worker: OutboxWorker, rounds: int = 20) -> None:
    """Deliver until nothing is left, ignoring backoff (the retry is due at once)."""
    for _ in range(rounds):
        with write_session(worker.engine) as session:
            for row in session.exec(select(SlackOutbox)).all():
                row.next_attempt_at = worker.clock()
        if not worker.deliver_due():
            return
    raise AssertionError("the outbox did not drain")


def _rows(engine: Engine) -> dict[str, SlackOutbox]:
    with read_session(engine) as session:
        return {r.dedupe_key: r for r in session.exec(select(SlackOutbox)).all()}


def test_a_card_and_its_reply_whose_answers_were_lost_show_once(
    fake: FakeSlack, worker: OutboxWorker, engine: Engine
) -> None:
    _queue(engine, "card", "chat.postMessage", {"channel": "C1", "text": "card"})
    _queue(engine, "reply", "chat.postMessage", {"text": "reply"}, parent="card")
    fake.fail_next("chat.postMessage", 2, status=503, after_accept=True)
    _drain(worker)
    messages = fake.messages("C1")
    assert [m["text"] for m in messages] == ["card", "reply"], messages
    rows = _rows(engine)
    assert {r.status for r in rows.values()} == {OutboxStatus.SENT}
    assert rows["card"].ts == messages[0]["ts"] and rows["reply"].ts == messages[1]["ts"]
    assert all(r.in_doubt_since is None for r in rows.values())
    # Each was sent once, answered 503, then found (history for the card, the thread for the
    # reply) instead of being sent again.
    assert len(fake.calls_to("chat.postMessage")) == 2
    assert len(fake.calls_to("conversations.history")) == 1
    assert len(fake.calls_to("conversations.replies")) == 1


def test_a_dm_whose_answer_was_lost_shows_once(
    fake: FakeSlack, worker: OutboxWorker, engine: Engine
) -> None:
    _queue(engine, "dm", "dm", {"user": "U1", "text": "you are paged"})
    fake.fail_next("chat.postMessage", 1, status=502, after_accept=True)
    _drain(worker)
    assert [m["text"] for m in fake.messages()] == ["you are paged"]
    assert _rows(engine)["dm"].status == OutboxStatus.SENT


def test_a_refused_or_rate_limited_post_is_sent_again_without_searching(
    fake: FakeSlack, worker: OutboxWorker, engine: Engine
) -> None:
    """429 and 5xx answered before posting: Slack holds nothing, so it is simply sent again
    (after a 5xx the search happens and finds nothing)."""
    _queue(engine, "a", "chat.postMessage", {"channel": "C1", "text": "a"})
    _queue(engine, "b", "chat.postMessage", {"channel": "C1", "text": "b"})
    fake.fail_next("chat.postMessage", 1, status=429, retry_after=0)
    fake.fail_next("chat.postMessage", 1, status=503)
    _drain(worker)
    assert [m["text"] for m in fake.messages("C1")] == ["a", "b"]
    assert len(fake.calls_to("conversations.history")) == 1  # only after the 503


def test_without_history_scopes_a_post_in_doubt_is_sent_again(
    fake: FakeSlack, worker: OutboxWorker, engine: Engine
) -> None:
    """The documented fallback: an app without the history scopes cannot search, so a post
    whose answer was lost is posted again (as every Slack client without a key must)."""
    _queue(engine, "card", "chat.postMessage", {"channel": "C1", "text": "card"})
    fake.fail_next("chat.postMessage", 1, status=503, after_accept=True)
    fake.fail_next("conversations.history", 1, error="missing_scope")
    _drain(worker)
    assert [m["text"] for m in fake.messages("C1")] == ["card", "card"]
    assert _rows(engine)["card"].status == OutboxStatus.SENT


def test_a_failed_search_is_retried_and_never_posts_blind(
    fake: FakeSlack, worker: OutboxWorker, engine: Engine
) -> None:
    _queue(engine, "card", "chat.postMessage", {"channel": "C1", "text": "card"})
    fake.fail_next("chat.postMessage", 1, status=503, after_accept=True)
    fake.fail_next("conversations.history", 2, status=429, retry_after=0)
    _drain(worker)
    assert [m["text"] for m in fake.messages("C1")] == ["card"]
    assert len(fake.calls_to("conversations.history")) == 3


def test_a_channel_name_is_resolved_from_posts_already_sent_after_a_restart(
    fake: FakeSlack, worker: OutboxWorker, engine: Engine
) -> None:
    _queue(engine, "first", "chat.postMessage", {"channel": "#incidents", "text": "first"})
    _drain(worker)
    restarted = OutboxWorker(engine=engine, client=worker.client)  # no name learnt in memory
    _queue(engine, "second", "chat.postMessage", {"channel": "#incidents", "text": "second"})
    fake.fail_next("chat.postMessage", 1, status=503, after_accept=True)
    _drain(restarted)
    assert [m["text"] for m in fake.messages("C1")] == ["first", "second"]
    assert fake.calls_to("conversations.history")[0].args["channel"] == "C1"


def test_a_channel_name_never_posted_to_is_looked_up_by_name(
    fake: FakeSlack, worker: OutboxWorker, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The very first post to a "#name" loses its answer: the history methods take ids only,
    so the name is resolved with conversations.list, once."""
    monkeypatch.setitem(fake.channels, "alerts", "C7")
    _queue(engine, "first", "chat.postMessage", {"channel": "#incidents", "text": "first"})
    fake.fail_next("chat.postMessage", 1, status=503, after_accept=True)
    fake.fail_next("conversations.list", 1, status=429, retry_after=0)  # retried, not blind
    _drain(worker)
    assert [m["text"] for m in fake.messages("C1")] == ["first"]
    assert len(fake.calls_to("conversations.list")) == 2


def test_a_message_is_retried_until_the_give_up_age_then_its_replies_are_given_up_with_it(
    fake: FakeSlack, worker: OutboxWorker, engine: Engine
) -> None:
    _queue(engine, "card", "chat.postMessage", {"channel": "C1", "text": "card"})
    _queue(engine, "reply", "chat.postMessage", {"text": "reply"}, parent="card")
    _queue(engine, "edit", "chat.update", {"text": "card, resolved"}, parent="card")
    fake.set_down(True)
    for _ in range(60):  # more than the 50 attempts after which it used to give up
        _drain_once(worker)
    assert {r.status for r in _rows(engine).values()} == {OutboxStatus.PENDING}
    assert _rows(engine)["card"].attempts == 60
    worker.give_up_after = timedelta(seconds=0)  # now older than the give-up age
    _drain_once(worker)
    _drain_once(worker)
    rows = _rows(engine)
    assert {k: r.status for k, r in rows.items()} == dict.fromkeys(rows, OutboxStatus.FAILED)
    assert rows["reply"].last_error == "parent message given up"
    fake.set_down(False)
    assert fake.messages("C1") == []


def test_a_refused_token_keeps_every_message_waiting(fake: FakeSlack, engine: Engine) -> None:
    fake.reset()
    refused = OutboxWorker(
        engine=engine, client=WebClient(token="xoxb-revoked", base_url=fake.base_url)
    )
    _queue(engine, "card", "chat.postMessage", {"channel": "C1", "text": "card"})
    for _ in range(3):
        _drain_once(refused)
    assert _rows(engine)["card"].status == OutboxStatus.PENDING
    assert "invalid_auth" in str(_rows(engine)["card"].last_error)


def _drain_once(worker: OutboxWorker) -> None:
    with write_session(worker.engine) as session:
        for row in session.exec(select(SlackOutbox)).all():
            row.next_attempt_at = worker.clock()
    worker.deliver_due()
