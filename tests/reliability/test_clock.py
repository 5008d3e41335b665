"""The wall clock steps (NTP correction, VM restore) while `serve` runs, under libfaketime.

Only the wall clock moves (FAKETIME_DONT_FAKE_MONOTONIC): a step back of an hour used to stall
the checker and verifier for that hour, since APScheduler plans on the wall clock and due times
were compared with it. Now a bad version is still rolled back within seconds, its verification
runs to the end, and the loops keep their pace after the clock is corrected again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from tests.conftest import API_TOKEN
from tests.reliability.kit import (
    ROOT,
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
        # The offset file is read again every second. Read on every clock call
        # (FAKETIME_NO_CACHE) it cost the idle server over a core on a slow host, which then
        # lost its own 2 s lease again and again.
        FAKETIME_CACHE_DURATION="1",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
        # Drawing a chart takes matplotlib's cache lock, which waits with sleep(): libfaketime's
        # sleep() fails in this process (see below), so charts are off under it.
        SLACK_CHARTS="false",
    )
    bot.start()
    seed_prompt(bot)
    offset.write_text(f"{step}\n")  # the wall clock jumps back
    stepped = time.monotonic()
    wait_until(lambda: "stepped" in bot.log_file.read_text(), timeout=10, what="the step seen")
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


APP = """
import sys, threading, time
from bot.client import PromptClient
base, token = sys.argv[1:3]
with PromptClient(base, token, prompts=["customer-support"], flush_interval=0.2) as client:
    for i in range(1000):
        client.record("customer-support", "v2.0.0", error=i < 80, latency_ms=300)
    deadline = time.monotonic() + 10
    while client.stats.events_sent < 1000 and time.monotonic() < deadline:
        threading.Event().wait(0.05)  # (libfaketime's sleep() fails here; waits do not)
    print("sent", client.stats.events_sent, "offset", client.stats.clock_offset_s, flush=True)
"""


@pytest.mark.parametrize("skew", ["-1h", "+3m"])
def test_an_app_whose_clock_is_off_is_still_judged_in_the_right_window(
    skew: str,
    db_url: str,
    engine: Engine,
    slack: FakeSlack,
    make_bot: Callable[..., Bot],
) -> None:
    """A serving app whose clock is an hour behind (or 3 minutes ahead) reports outcomes
    through PromptClient; they used to be stored an hour in the past and never judged. The
    client sends its clock with each batch and the bot corrects the times."""
    bot = make_bot(f"app-clock{skew}")
    bot.start()
    seed_prompt(bot)
    sent = time.monotonic()
    app = subprocess.run(
        [sys.executable, "-c", APP, bot.base, API_TOKEN],
        env={
            **os.environ,
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME": skew,
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert app.returncode == 0 and app.stdout.startswith("sent 1000"), (app.stdout, app.stderr)
    offset = float(app.stdout.split()[-1])
    expected = 3600 if skew == "-1h" else -180
    assert abs(offset - expected) < 5, offset
    assert "clock is" in app.stderr and "fix the clock" in app.stderr
    wait_rollback(engine, slack, timeout=10)
    record(
        f"serving app's clock {skew}",
        offset_corrected_s=round(offset, 1),
        rollback_after_first_event_s=round(time.monotonic() - sent, 2),
    )
