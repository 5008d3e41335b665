"""Slack misbehaves: half the calls 5xx (half of those after Slack did the work, so only the
answer is lost), bursts of 429 with Retry-After, down for a minute.

Rollbacks never wait for Slack (they are on time whatever Slack does); every alert, card
update and thread reply is delivered exactly once, in order, when Slack answers again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from tests.conftest import PG_ONLY
from tests.reliability.kit import (
    Bot,
    Ledger,
    assert_checks_told,
    assert_consistent,
    events,
    ledger,
    post_events,
    record,
    restored_traffic,
    seed_prompt,
    wait_rollback,
    wait_settled,
    wait_until,
)
from tests.slack_kit import FakeSlack

pytestmark = pytest.mark.parametrize("db_url", PG_ONLY, indirect=True)

CHECKS = 5
ON_TIME_S = 0.5 + 1.5  # check interval + one pass + margin


def _assert_story(found: Ledger, slack: FakeSlack) -> None:
    """One card; the rollback and every check threaded under it, once each, in order."""
    assert found.active == "v1.9.0" and len(found.rollbacks) == 1
    (card,) = [m for m in slack.messages("C1") if m.get("thread_ts") in (None, m["ts"])]
    thread = [p for p in found.posted if p[0] == "C1" and p[1] is not None]
    assert {ts for _, ts, _ in thread} == {card["ts"]}, "every reply under the card"
    texts = [text for _, _, text in thread]
    expected = ["Rolled back v2.0.0 → v1.9.0 automatically", *assert_checks_told(found, CHECKS)]
    positions = [next(i for i, t in enumerate(texts) if fragment in t) for fragment in expected]
    assert positions == sorted(positions), texts
    for fragment in expected:
        assert found.count(fragment) == 1, fragment


def _roll_back_on_time(bot: Bot, engine: Engine, slack: FakeSlack) -> float:
    seed_prompt(bot)
    sent = time.monotonic()
    assert post_events(bot, events("v2.0.0", 1000, 80)).status_code == 200
    wait_rollback(engine, slack, timeout=10)
    return time.monotonic() - sent


def test_half_of_calls_failing_and_429_bursts_deliver_everything_once(
    db_url: str,
    engine: Engine,
    slack: FakeSlack,
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot("flaky")
    bot.start()
    slack.set_flaky(0.5, lost=0.5)
    for method in ("chat.postMessage", "chat.update", "conversations.open"):
        slack.fail_next(method, count=3, status=429, retry_after=1)
    with restored_traffic(bot):  # every check judged, so every check is posted
        rollback_s = _roll_back_on_time(bot, engine, slack)
        assert rollback_s < ON_TIME_S
        rolled_back_at = time.monotonic()
        found = wait_settled(engine, slack, timeout=150)
    counts = assert_consistent(found)
    _assert_story(found, slack)
    delivered_s = time.monotonic() - rolled_back_at
    faults = sum(c.faulted for c in slack.calls)
    lost = sum(c.fault == "answer_lost" for c in slack.calls)
    assert faults >= 10 and lost >= 2, (faults, lost)
    record(
        "slack 50% 5xx (half of them answers lost) + 429 bursts",
        faults_injected=faults,
        answers_lost=lost,
        calls=len(slack.calls),
        all_delivered_after_rollback_s=round(delivered_s, 2),
        rollback_after_bad_events_s=round(rollback_s, 2),
        **counts,
    )


def test_slack_down_for_a_minute_delays_messages_not_the_rollback(
    db_url: str,
    engine: Engine,
    slack: FakeSlack,
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot("slack-down")
    bot.start()
    slack.set_down(True)
    down_at = time.monotonic()
    with restored_traffic(bot):
        rollback_s = _roll_back_on_time(bot, engine, slack)
        assert rollback_s < ON_TIME_S
        wait_until(
            lambda: all(v.status != "running" for v in ledger(engine, slack).verifications),
            timeout=30,
            what="verification to finish while Slack is down",
        )
    time.sleep(max(0.0, 60 - (time.monotonic() - down_at)))
    failed_calls = sum(c.faulted for c in slack.calls)
    slack.set_down(False)
    back_at = time.monotonic()
    found = wait_settled(engine, slack, timeout=60)
    delivered_s = time.monotonic() - back_at
    counts = assert_consistent(found)
    _assert_story(found, slack)
    assert delivered_s < 15
    record(
        "slack down 60 s",
        calls_refused=failed_calls,
        rollback_after_bad_events_s=round(rollback_s, 2),
        all_delivered_after_slack_back_s=round(delivered_s, 2),
        **counts,
    )
