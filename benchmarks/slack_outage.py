"""A real Slack outage of a few minutes: nothing lost, nothing twice, delivered soon after.

`rollback-bot serve` (checker, Slack app, outbox, defaults for retry and give-up) runs against
the Slack Web API stand-in of the test suite. Slack goes down (connections dropped unanswered);
during the outage a bad version is rolled back automatically and a second prompt gets a HIGH
incident (card, page DM); after MINUTES Slack comes back. Printed: how many calls the outage
refused, how long after Slack's return every message was delivered, and messages lost or
posted twice. Reference in the same run: the same incident with Slack up the whole time.

    .venv/bin/python benchmarks/slack_outage.py --minutes 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._server import api, header, server
from bot.db import make_engine, read_session
from bot.models import Incident, OutboxStatus, SlackOutbox
from tests.reliability.kit import FAST_POLICY, write_policy
from tests.slack_kit import FakeSlack

BOT_TOKEN = "xoxb-benchmark-0123456789"


def _events(prompt: str, version: str, n: int, errors: int) -> list[dict[str, object]]:
    return [
        {"prompt": prompt, "version": version, "error": i < errors, "latency_ms": 300}
        for i in range(n)
    ]


def _seed(base: str, prompt: str) -> None:
    with api(base) as client:
        for label in ("v1.9.0", "v2.0.0"):
            client.post(f"/api/prompts/{prompt}/versions", json={"version": label, "template": "t"})
            client.post(f"/api/prompts/{prompt}/deploy", json={"version": label})


def _incidents(url: str) -> int:
    engine = make_engine(url)
    with read_session(engine) as session:
        count = session.execute(select(func.count()).select_from(Incident)).scalar_one()
    engine.dispose()
    return int(count)


def _pending(url: str) -> int:
    engine = make_engine(url)
    with read_session(engine) as session:
        count = session.execute(
            select(func.count())
            .select_from(SlackOutbox)
            .where(SlackOutbox.status != OutboxStatus.SENT)  # type: ignore[arg-type]
        ).scalar_one()
    engine.dispose()
    return int(count)


def run(minutes: float) -> dict[str, float]:
    """One scenario; outage of `minutes` (0: Slack up throughout, the reference)."""
    folder = Path(tempfile.mkdtemp(prefix="slack-outage-"))
    url = f"sqlite:///{folder / 'bot.db'}"
    policies = write_policy(folder / "policies", FAST_POLICY)
    channels = {"incidents": "C1"}
    with FakeSlack(token=BOT_TOKEN, users={"U1": {"name": "alice"}}, channels=channels) as slack:
        env = {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": "benchmark-signing-secret-0123456789",
            "SLACK_API_URL": slack.base_url,
            "SLACK_ONCALL_USERS": "U1",
            "ROLLBACK_POLICY_DIR": str(policies),
            "ROLLBACK_CHECK_INTERVAL": "1",
        }
        with server(url, **env) as base, api(base) as client:
            _seed(base, "customer-support")
            _seed(base, "search")
            if minutes:
                slack.set_down(True, close=True)
            client.post(
                "/api/events", json={"events": _events("customer-support", "v2.0.0", 1000, 80)}
            )
            client.post("/api/events", json={"events": _events("search", "v2.0.0", 1000, 30)})
            started = time.monotonic()
            while _incidents(url) < 2 and time.monotonic() - started < 30:
                time.sleep(0.1)
            time.sleep(max(0.0, minutes * 60 - (time.monotonic() - started)))
            refused = sum(c.faulted for c in slack.calls)
            slack.set_down(False)
            back = time.monotonic()
            while _pending(url) and time.monotonic() - back < 120:
                time.sleep(0.1)
            delivered_s = time.monotonic() - back
            left = _pending(url)
    posts = [
        (str((c.response or {}).get("channel")), c.args.get("thread_ts"), str(c.args.get("text")))
        for c in slack.calls
        if c.ok and c.method == "chat.postMessage"
    ]
    twice = sum(n - 1 for n in Counter(posts).values() if n > 1)
    return {
        "outage_min": minutes,
        "calls_refused": refused,
        "messages_posted": len(posts),
        "delivered_after_return_s": round(delivered_s, 2),
        "lost": left,
        "posted_twice": twice,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    args = parser.parse_args()
    print(header())
    for minutes in (0.0, args.minutes):
        print(run(minutes), flush=True)


if __name__ == "__main__":
    main()
