"""The wall clock steps (NTP correction, VM restore) while `serve` runs, under libfaketime.

Only the wall clock moves (FAKETIME_DONT_FAKE_MONOTONIC): a step back of an hour used to stall
the checker and verifier for that hour, since APScheduler plans on the wall clock and due times
were compared with it. Now a bad version is still rolled back within seconds, its verification
runs to the end, and the loops keep their pace after the clock is corrected again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from tests.reliability.kit import (
    Bot,
    assert_consistent,
    events,
    post_events,
    record,
    seed_prompt,
    wait_rollback,
    wait_settled,
    wait_until,
)
from tests.slack_kit import FakeSlack

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")

pytestmark = [
    pytest.mark.parametrize("db_url", ["sqlite"], indirect=True),
    pytest.mark.skipif(
        not LIBFAKETIME.exists(),
        reason="libfaketime not installed (Debian package faketime; .ci/run installs it)",
    ),
]


def _checker_fresh(bot: Bot) -> bool:
    loops = httpx.get(f"{bot.base}/healthz", timeout=5).json()["loops"]
    return loops["checker"]["last_ok_s_ago"] is not None and loops["checker"]["last_ok_s_ago"] < 2


@pytest.mark.parametrize("step", ["-1h", "-1d"])
def test_a_backward_wall_clock_step_does_not_stall_detection_or_verification(
    step: str,
    tmp_path: Path,
    db_url: str,
    engine: Engine,
    slack: FakeSlack,
    make_bot: Callable[..., Bot],
) -> None:
    offset = tmp_path / "faketime"
    offset.write_text("+0s\n")
    bot = make_bot(f"clock{step}")
    bot.env.update(
        LD_PRELOAD=str(LIBFAKETIME),
        FAKETIME_TIMESTAMP_FILE=str(offset),
        FAKETIME_NO_CACHE="1",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    bot.start()
    seed_prompt(bot)
    offset.write_text(f"{step}\n")  # the wall clock jumps back
    stepped = time.monotonic()
    wait_until(lambda: _checker_fresh(bot), timeout=5, what="a checker pass after the step")
    sent = time.monotonic()
    assert post_events(bot, events("v2.0.0", 1000, 80)).status_code == 200
    wait_rollback(engine, slack, timeout=10)
    rollback_s = time.monotonic() - sent
    for _ in range(3):  # the restored version's traffic, judged in windows after the step
        assert post_events(bot, events("v1.9.0", 500, 0)).status_code == 200
        time.sleep(1)
    found = wait_settled(engine, slack, timeout=30)  # verification ran all its checks
    counts = assert_consistent(found)
    assert found.verifications[0].status == "recovered", found.verifications
    offset.write_text("+0s\n")  # corrected: the wall clock jumps forward again
    time.sleep(1.5)
    wait_until(lambda: _checker_fresh(bot), timeout=5, what="a checker pass after the correction")
    assert "clock" in bot.log_file.read_text() and "stepped" in bot.log_file.read_text()
    record(
        f"wall clock stepped {step}",
        rollback_after_bad_events_s=round(rollback_s, 2),
        verification_done_after_step_s=round(time.monotonic() - stepped, 1),
        **counts,
    )
