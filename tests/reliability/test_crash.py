"""SIGKILL inside a rollback and inside its verification; after a restart everything agrees.

Each case arms one fail point (bot/faults.py) in a real `serve` process, makes it roll a bad
version back, lets the fail point kill it, restarts it unarmed, and waits until nothing is
pending. Then routing, audit log, incident, verification and Slack must agree: one rollback,
one card, one "Rolled back" reply, each verification check once, nothing left undelivered.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import Engine

from bot.slack.blocks import ROLLBACK_ACTION
from tests.conftest import PG_ONLY
from tests.reliability.kit import (
    Bot,
    assert_checks_told,
    assert_consistent,
    button,
    events,
    ledger,
    post_events,
    record,
    restored_traffic,
    seed_prompt,
    wait_card,
    wait_rollback,
    wait_settled,
)
from tests.slack_kit import FakeSlack, target_choice

CHECKS = 5  # verify_for 5s / verify_every 1s in the suite's policy

POINTS = [
    "rollback.before_commit",
    "rollback.committed",
    "verify.claimed@2",
    "verify.checked@2",
    "outbox.claimed@2",
    # Slack posted the message, the process died before recording it: found, not reposted.
    "outbox.sent@1",
    "outbox.sent@3",
]


def _crash_and_recover(bot: Bot, failpoint: str) -> float:
    bot.start(failpoints=failpoint)
    seed_prompt(bot)
    assert post_events(bot, events("v2.0.0", 1000, 80)).status_code == 200
    status = bot.wait_exit(timeout=30)
    assert status == -9, f"the fail point did not fire: {bot.tail()}"
    started = time.monotonic()
    bot.start()
    return started


@pytest.mark.parametrize("failpoint", POINTS)
@pytest.mark.parametrize("db_url", PG_ONLY, indirect=True)
def test_sigkill_inside_rollback_or_verification_leaves_one_consistent_story(
    failpoint: str,
    db_url: str,
    engine: Engine,
    slack: FakeSlack,
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot("crash")
    restarted = _crash_and_recover(bot, failpoint)
    with restored_traffic(bot):  # every check judged (and posted): "Not recovered" at the end
        wait_rollback(engine, slack, timeout=20)
        found = wait_settled(engine, slack, timeout=60)
    recovered_s = time.monotonic() - restarted
    counts = assert_consistent(found)
    assert found.active == "v1.9.0"
    assert counts["rollbacks"] == 1
    assert [(i.status, i.version) for i in found.incidents] == [("rolled_back", "v2.0.0")]
    (verification,) = found.verifications
    assert (verification.checks_done, verification.status) == (CHECKS, "escalated")
    cards = [p for p in found.posted if p[1] is None and p[0] == "C1"]
    assert len(cards) == 1, cards
    assert found.count("Rolled back v2.0.0 → v1.9.0 automatically") == 1
    assert_checks_told(found, CHECKS)
    assert found.count("Not recovered: v1.9.0 still fails") == 1  # 1.5% errors: not healed
    assert any(channel.startswith("D") for channel, _, _ in found.posted), "on-call DM"
    record(
        f"crash {failpoint}",
        restart_to_settled_s=round(recovered_s, 2),
        **counts,
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sigkill_after_commit_on_sqlite_recovers_from_the_wal(
    db_url: str,
    engine: Engine,
    slack: FakeSlack,
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot("crash-sqlite")
    _crash_and_recover(bot, "rollback.before_commit")
    wait_rollback(engine, slack, timeout=20)
    found = wait_settled(engine, slack, timeout=60)
    counts = assert_consistent(found)
    assert found.active == "v1.9.0" and counts["rollbacks"] == 1
    assert found.count("Rolled back v2.0.0 → v1.9.0 automatically") == 1
    record("crash sqlite rollback.before_commit", **counts)


@pytest.mark.parametrize("db_url", PG_ONLY, indirect=True)
def test_sigkill_inside_a_button_rollback_changes_nothing_and_a_second_click_works(
    db_url: str,
    engine: Engine,
    slack: FakeSlack,
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot("button")
    bot.start(failpoints="rollback.before_commit")
    seed_prompt(bot)
    # 3% errors: high severity, on-call paged, a human decides (no automatic rollback).
    assert post_events(bot, events("v2.0.0", 1000, 30)).status_code == 200
    card = wait_card(slack)
    sender = bot.sender()
    value = button(card, ROLLBACK_ACTION)
    # The click opens the dialog; sending it rolls back, and the process dies mid-commit, so
    # Slack gets no answer (it shows the person an error in the dialog).
    assert sender.click(ROLLBACK_ACTION, value, "U1", card["ts"], "C1").status_code == 200
    view = slack.wait_for(lambda _: slack.views() or None)[0]["view"]
    with contextlib.suppress(httpx.HTTPError):  # the connection dies with the process
        sender.submit_view(view, "U1", target_choice("v1.9.0"))
    assert bot.wait_exit(timeout=20) == -9
    before = ledger(engine, slack)
    assert before.active == "v2.0.0" and not before.rollbacks
    assert [i.status for i in before.incidents] == ["open"]
    bot.start()
    sender = bot.sender()
    assert sender.roll_back_via_dialog(card).status_code == 200  # the person tries again
    wait_rollback(engine, slack, timeout=20)
    found = wait_settled(engine, slack, timeout=60)
    counts = assert_consistent(found)
    assert found.active == "v1.9.0" and counts["rollbacks"] == 1
    assert found.count("by <@U1>") == 1
    record("crash button rollback.before_commit", **counts)
