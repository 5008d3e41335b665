"""Policies edited while `serve` runs: SIGHUP reloads them; a broken edit keeps the last good
policy and says so in the log, /metrics and the incidents channel."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from tests.reliability.kit import (
    FAST_POLICY,
    Bot,
    events,
    ledger,
    post_events,
    record,
    seed_prompt,
    wait_rollback,
    wait_until,
)
from tests.slack_kit import FakeSlack

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

NO_AUTO_ROLLBACK = FAST_POLICY.replace("defaults:\n", "defaults:\n  auto_rollback: false\n")


def _edit(policy_dir: Path, text: str) -> None:
    """Save as an editor would, in one step (write a temporary file, rename it over)."""
    temporary = policy_dir / ".default.yaml.tmp"
    temporary.write_text(text)
    temporary.replace(policy_dir / "default.yaml")


def _sighup_and_wait(bot: Bot, marker: str) -> float:
    before = bot.log_file.read_text().count(marker)
    assert bot.proc is not None
    sent = time.monotonic()
    bot.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: bot.log_file.read_text().count(marker) > before,
        timeout=10,
        what=f"{marker!r} in the log",
    )
    return time.monotonic() - sent


def test_sighup_reloads_a_good_edit_and_a_broken_one_keeps_the_last_good_policy(
    db_url: str,
    engine: Engine,
    slack: FakeSlack,
    policy_dir: Path,
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot("policy-reload")
    bot.env["POLICY_POLL_SECONDS"] = "3600"  # only SIGHUP reloads here
    bot.start()
    seed_prompt(bot)

    # A person sets auto_rollback: false mid-incident: it is in force at once.
    _edit(policy_dir, NO_AUTO_ROLLBACK)
    applied_s = _sighup_and_wait(bot, "policies reloaded (SIGHUP)")
    assert post_events(bot, events("v2.0.0", 1000, 80)).status_code == 200
    wait_until(lambda: ledger(engine, slack).incidents, timeout=10, what="the incident")
    time.sleep(2)  # several checker passes
    assert ledger(engine, slack).active == "v2.0.0", "rolled back against auto_rollback: false"

    # A broken edit: nothing changes, and everyone is told.
    _edit(policy_dir, NO_AUTO_ROLLBACK.replace("above: 5.0", "above: [5.0"))
    _sighup_and_wait(bot, "policy edit rejected")
    metrics = httpx.get(f"{bot.base}/metrics", timeout=5).text
    assert 'rollback_bot_policy_reloads_total{result="rejected"} 1.0' in metrics
    told = wait_until(
        lambda: [m for m in slack.messages("C1") if "Policy edit rejected" in m.get("text", "")],
        timeout=10,
        what="the rejection in #incidents",
    )
    assert len(told) == 1 and "default.yaml" in told[0]["text"], told
    time.sleep(1.5)
    assert ledger(engine, slack).active == "v2.0.0", "the broken edit must not apply defaults"

    # Fixed and reloaded: automatic rollback is back on, and acts on the open incident.
    _edit(policy_dir, FAST_POLICY)
    _sighup_and_wait(bot, "policies reloaded (SIGHUP)")
    sent = time.monotonic()
    assert post_events(bot, events("v2.0.0", 1000, 80)).status_code == 200
    wait_rollback(engine, slack, timeout=10)
    assert bot.alive()
    record(
        "policy reload on SIGHUP",
        applied_after_sighup_s=round(applied_s, 2),
        rollback_after_fix_s=round(time.monotonic() - sent, 2),
        broken_edit_posts=len(told),
    )
