"""Slack outages: at start-up, and longer than any retry budget.

`serve` started while Slack is unreachable, failing, or refusing the bot token must come up
anyway: the API answers, the checker judges and rolls back on its own, `/healthz` and
`/metrics` say what is wrong with Slack, and the card arrives once Slack is back (or, for a
refused token, once a valid one is set and the server restarted). An outage outlasting
hundreds of attempts loses nothing: the card, its replies and the DM all arrive, once each.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import Engine

from tests.reliability.kit import (
    BOT_TOKEN,
    Bot,
    assert_consistent,
    events,
    ledger,
    post_events,
    record,
    seed_prompt,
    wait_rollback,
    wait_settled,
    wait_until,
)
from tests.slack_kit import FakeSlack

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

STATE = {"unreachable": "unreachable", "503": "unreachable", "invalid_auth": "token_refused"}


def _health(bot: Bot) -> dict:
    return httpx.get(f"{bot.base}/healthz", timeout=5).json()


@pytest.mark.parametrize("fault", list(STATE))
def test_serve_starts_and_rolls_back_while_slack_fails_then_delivers_the_card(
    fault: str,
    db_url: str,
    engine: Engine,
    slack: FakeSlack,
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot(f"slack-{fault}")
    if fault == "invalid_auth":
        bot.env["SLACK_BOT_TOKEN"] = "xoxb-revoked-0123456789"
    else:
        slack.set_down(True, close=fault == "unreachable")
    started = time.monotonic()
    bot.start()
    up_s = time.monotonic() - started
    health = wait_until(
        lambda: (h := _health(bot))["slack"]["state"] == STATE[fault] and h,
        timeout=15,
        what="/healthz to report Slack's state",
    )
    assert health["status"] == "degraded" and health["database"]["ok"], health
    metrics = httpx.get(f"{bot.base}/metrics", timeout=5).text
    assert f'rollback_bot_slack_state{{state="{STATE[fault]}"}} 1.0' in metrics

    seed_prompt(bot)  # the API works without Slack
    sent = time.monotonic()
    assert post_events(bot, events("v2.0.0", 1000, 80)).status_code == 200
    found = wait_rollback(engine, slack, timeout=10)
    rollback_s = time.monotonic() - sent
    assert found.active == "v1.9.0" and found.rollbacks[0].trigger == "automatic"
    assert not any(c.ok and c.method == "chat.postMessage" for c in slack.calls)
    if fault == "invalid_auth":
        log = bot.log_file.read_text()
        assert "SLACK_BOT_TOKEN: Slack refused SLACK_BOT_TOKEN (invalid_auth)" in log
        bot.env["SLACK_BOT_TOKEN"] = BOT_TOKEN  # a person sets a valid token and restarts
        bot.stop()
        back = time.monotonic()
        bot.start()
    else:
        back = time.monotonic()
        slack.set_down(False)
    found = wait_settled(engine, slack, timeout=60)
    delivered_s = time.monotonic() - back
    counts = assert_consistent(found)
    assert found.count("Rolled back v2.0.0 → v1.9.0 automatically") == 1
    (card,) = [m for m in slack.messages("C1") if "Incident #1" in str(m.get("blocks"))]
    assert "rolled back" in str(card["blocks"]).lower(), card  # up to date, not "open"
    assert wait_until(lambda: _health(bot)["slack"]["state"] == "ok", timeout=15)
    assert _health(bot)["status"] == "ok"
    record(
        f"slack {fault} at start-up",
        serving_after_start_s=round(up_s, 2),
        rollback_after_bad_events_s=round(rollback_s, 2),
        card_delivered_after_slack_back_s=round(delivered_s, 2),
        **counts,
    )


def test_an_outage_of_hundreds_of_attempts_loses_no_message(
    db_url: str,
    engine: Engine,
    slack: FakeSlack,
    make_bot: Callable[..., Bot],
) -> None:
    """The old outbox gave a message up after 50 attempts (about 4 minutes at its 5 s cap); with
    the cap at 20 ms the same count of attempts takes about a second, so this outage of 15 s is
    far longer, in attempts, than that limit (and a real 4-minute outage is in benchmarks/)."""
    bot = make_bot("slack-long-outage")
    bot.env["SLACK_RETRY_MAX_SECONDS"] = "0.02"
    bot.start()
    seed_prompt(bot)
    slack.set_down(True, close=True)
    down_at = time.monotonic()
    assert post_events(bot, events("v2.0.0", 1000, 80)).status_code == 200
    wait_rollback(engine, slack, timeout=10)
    wait_until(
        lambda: max((r.attempts for r in ledger(engine, slack).outbox), default=0) > 100,
        timeout=30,
        what="over 100 attempts at the card",
    )
    time.sleep(max(0.0, 15 - (time.monotonic() - down_at)))
    attempts = max(r.attempts for r in ledger(engine, slack).outbox)
    slack.set_down(False)
    back = time.monotonic()
    found = wait_settled(engine, slack, timeout=60)
    delivered_s = time.monotonic() - back
    counts = assert_consistent(found)
    assert found.count("Rolled back v2.0.0 → v1.9.0 automatically") == 1
    assert counts["lost"] == 0 and counts["duplicates"] == 0
    record(
        "slack unreachable for 15 s at a 20 ms retry cap",
        attempts_at_the_card=attempts,
        all_delivered_after_slack_back_s=round(delivered_s, 2),
        **counts,
    )
