"""The demo: real server, checker and Slack app on SQLite; simulated traffic; a Slack stand-in."""

from __future__ import annotations

import random
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import uvicorn
from sqlmodel import select

from bot.api.app import create_app
from bot.config import load_settings
from bot.db import make_engine, read_session
from bot.demo.slack_standin import SlackStandIn
from bot.migrate import upgrade
from bot.models import OutboxStatus, SlackOutbox, Verification, VerificationStatus, utcnow
from bot.policy import load_policies
from bot.runtime.scheduler import CheckerService
from bot.slack.app import SlackService

POLICIES = Path(__file__).resolve().parent.parent.parent / "policies"
DEMO_POLICY = """prompts:
  customer-support:
    verify_every: 1s   # the demo checks faster than the runbook's 5 s
    verify_for: 6s
"""
PROMPT = "customer-support"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _events(
    version: str, n: int, error_rate: float, rng: random.Random, ago: timedelta = timedelta(0)
) -> list[dict[str, object]]:
    ts = (utcnow() - ago).isoformat()
    return [
        {
            "prompt": PROMPT,
            "version": version,
            "error": rng.random() < error_rate,
            "latency_ms": round(rng.lognormvariate(6.0, 0.3), 1),
            "quality": round(min(1.0, max(0.0, rng.gauss(0.8, 0.05))), 3),
            "ts": ts,
        }
        for _ in range(n)
    ]


def _until(done: Callable[[], bool], step: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        step()
        time.sleep(0.5)
    return done()


def run_demo(echo: Callable[[str], None] = print) -> bool:
    """Run the loop end to end and print what Slack would show; True when it all happened."""
    started = time.monotonic()
    rng = random.Random(20260601)
    tmp = Path(tempfile.mkdtemp(prefix="rollback-bot-demo-"))
    standin = SlackStandIn()
    policy_dir = tmp / "policies"
    policy_dir.mkdir()
    shutil.copy(POLICIES / "default.yaml", policy_dir / "default.yaml")
    (policy_dir / "demo.yaml").write_text(DEMO_POLICY)
    token = secrets.token_urlsafe(24)
    settings = load_settings(
        database_url=f"sqlite:///{tmp}/demo.db",
        rollback_api_token=token,
        slack_bot_token=f"xoxb-demo-{token}",
        slack_signing_secret=token,
        slack_api_url=standin.base_url,
        slack_oncall_users="U0ONCALL",
        rollback_check_interval=2.0,
        slack_charts=True,
        verify_poll_seconds=0.5,
        rollback_policy_dir=str(policy_dir),
    )
    engine = make_engine(settings.database_url)
    upgrade(engine)
    policies = load_policies(policy_dir)
    slack = SlackService(settings=settings, engine=engine, policies=policies)
    slack.worker.poll_seconds = 0.2
    checker = CheckerService(
        engine=engine, settings=settings, policies=policies, notifier=slack.notifier
    )
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, engine, checker=checker, slack=slack),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    try:
        echo(
            f"Server, checker (every 2 s) and Slack app running on http://127.0.0.1:{port}, "
            "SQLite in a temporary folder, Slack played by a local stand-in.\n"
        )
        for version in ("v1.9.0", "v2.0.0"):
            api.post(
                f"/api/prompts/{PROMPT}/versions",
                json={
                    "version": version,
                    "template": f"You are a support agent ({version}). Answer: {{{{question}}}}",
                },
            ).raise_for_status()
        api.post(f"/api/prompts/{PROMPT}/deploy", json={"version": "v1.9.0"}).raise_for_status()
        for minutes in (50, 40, 30, 20, 10):
            api.post(
                "/api/events",
                json={"events": _events("v1.9.0", 300, 0.005, rng, timedelta(minutes=minutes))},
            ).raise_for_status()
        echo("1. customer-support v1.9.0 served an hour of healthy traffic (0.5% errors).")
        api.post(
            f"/api/prompts/{PROMPT}/deploy",
            json={"version": "v2.0.0", "reason": "new refund policy wording"},
        ).raise_for_status()
        deployed = time.monotonic()
        echo("2. Deployed v2.0.0. Its traffic fails 8% of requests...")

        def active() -> str:
            return str(api.get(f"/api/prompts/{PROMPT}").json()["active_version"])

        rolled = _until(
            lambda: active() == "v1.9.0",
            lambda: api.post("/api/events", json={"events": _events("v2.0.0", 100, 0.08, rng)}),
            timeout=30,
        )
        if not rolled:
            echo("The rollback did not happen within 30 s: something is wrong.")
            return False
        echo(
            f"3. Rolled back automatically to v1.9.0, {time.monotonic() - deployed:.1f} s after "
            "the deploy. Verifying v1.9.0 on live traffic..."
        )

        def verified() -> bool:
            with read_session(engine) as session:
                rows = session.exec(select(Verification)).all()
            return bool(rows) and rows[0].status != VerificationStatus.RUNNING

        _until(
            verified,
            lambda: api.post("/api/events", json={"events": _events("v1.9.0", 60, 0.005, rng)}),
            timeout=30,
        )

        def delivered() -> bool:
            with read_session(engine) as session:
                pending = session.exec(
                    select(SlackOutbox).where(SlackOutbox.status == OutboxStatus.PENDING)
                ).all()
            return not pending

        _until(delivered, lambda: None, timeout=10)
        echo("4. Verified. This is what #incidents and on-call saw in Slack:\n")
        echo(standin.transcript())
        echo(
            f"Demo finished in {time.monotonic() - started:.0f} s. For a real workspace: "
            "create the Slack app from manifest.yml and run `rollback-bot serve` (README)."
        )
        return True
    finally:
        api.close()
        server.should_exit = True
        thread.join(timeout=10)
        standin.close()
        engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
