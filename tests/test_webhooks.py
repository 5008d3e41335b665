"""Change webhooks: signed like Slack signs, retried with backoff, outcome in the history."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from bot import registry
from bot.db import read_session, write_session
from bot.integrations.webhooks import WebhookDispatcher
from bot.models import Trigger, utcnow
from bot.policy import load_policies
from bot.registry.changes import Actor
from tests.conftest import make_prompt
from tests.detection_kit import POLICY_DIR, Clock

SECRET = "webhook-secret-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent


class Receiver:
    """A webhook endpoint that checks the signature and can fail the first N deliveries."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.raw: list[tuple[dict[str, str], bytes]] = []  # headers and body as delivered
        self.bad_signatures = 0
        self.fail_left = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ts = self.headers["X-Rollback-Bot-Timestamp"]
                expected = (
                    "v1="
                    + hmac.new(
                        SECRET.encode(), f"v1:{ts}:".encode() + body, hashlib.sha256
                    ).hexdigest()
                )
                if not hmac.compare_digest(
                    expected, self.headers.get("X-Rollback-Bot-Signature", "")
                ):
                    receiver.bad_signatures += 1
                    status = 401
                elif receiver.fail_left > 0:
                    receiver.fail_left -= 1
                    status = 500
                else:
                    receiver.received.append(json.loads(body))
                    receiver.raw.append((dict(self.headers.items()), body))
                    status = 204
                self.send_response(status)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/routing"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=2)
    yield r
    r.close()


def _policies(tmp_path: Path, url: str):
    (tmp_path / "default.yaml").write_text((POLICY_DIR / "default.yaml").read_text())
    (tmp_path / "hooks.yaml").write_text(
        f"prompts:\n  customer-support:\n    webhooks: ['{url}']\n"
    )
    return load_policies(tmp_path)


def test_routing_changes_are_signed_retried_and_recorded(
    engine: Engine, receiver: Receiver, tmp_path: Path
) -> None:
    make_prompt(engine, deploy=("v1.8.0",))
    clock = Clock(utcnow())
    dispatcher = WebhookDispatcher(
        engine=engine, policies=_policies(tmp_path, receiver.url), secret=SECRET, clock=clock
    )
    dispatcher.run_due()  # starts its cursor now: earlier history is not replayed
    with write_session(engine) as session:
        registry.deploy(
            session=session,
            prompt="customer-support",
            version="v2.0.0",
            actor=Actor("U1", Trigger.SLACK),
            now=utcnow(),
        )
        registry.rollback(
            session=session,
            prompt="customer-support",
            target=None,
            actor=Actor("system", Trigger.AUTOMATIC, rule="error_rate_critical"),
            now=utcnow(),
        )
    for _ in range(6):
        dispatcher.run_due()
        clock.advance(seconds=10)
    assert receiver.bad_signatures == 0
    assert [(e["kind"], e["from_version"], e["to_version"]) for e in receiver.received] == [
        ("deploy", "v1.8.0", "v2.0.0"),
        ("rollback", "v2.0.0", "v1.8.0"),
    ]
    assert receiver.received[1]["rule"] == "error_rate_critical"
    with read_session(engine) as session:
        history = registry.history(session=session, name="customer-support")
    outcomes = [(h.kind.value, [(w.status, w.attempts) for w in h.webhooks]) for h in history[:2]]
    # The receiver failed the first two deliveries (one of each): both went through on retry.
    assert outcomes == [("rollback", [("sent", 2)]), ("deploy", [("sent", 2)])]
    assert history[1].webhooks[0].last_result == "HTTP 204"


def test_prompts_without_webhooks_send_nothing(
    engine: Engine, receiver: Receiver, tmp_path: Path
) -> None:
    make_prompt(engine, name="billing", versions=("b1",), deploy=())
    dispatcher = WebhookDispatcher(
        engine=engine, policies=_policies(tmp_path, receiver.url), secret=SECRET
    )
    dispatcher.run_due()
    with write_session(engine) as session:
        registry.deploy(
            session=session,
            prompt="billing",
            version="b1",
            actor=Actor("U1", Trigger.SLACK),
            now=utcnow(),
        )
    assert dispatcher.run_due() == 0
    assert receiver.received == []


def test_serve_refuses_webhooks_without_a_secret(tmp_path: Path) -> None:
    _policies(tmp_path, "https://hooks.example.com/routing")
    result = subprocess.run(
        [sys.executable, "-m", "bot", "serve"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
            "ROLLBACK_POLICY_DIR": str(tmp_path),
        },
        timeout=60,
    )
    assert result.returncode == 2
    assert "ROLLBACK_WEBHOOK_SECRET: required because a policy lists webhooks" in result.stderr


@pytest.mark.parametrize("mode", ["cloudevents-structured", "cloudevents-binary"])
def test_cloudevents_deliveries_parse_with_the_cloudevents_sdk(
    engine: Engine, tmp_path: Path, mode: str
) -> None:
    try:  # the CloudEvents SDK's HTTP binding: 1.x, or 2.x's compatible v1 API
        from cloudevents.http import from_http
    except ImportError:
        from cloudevents.v1.http import from_http

    receiver = Receiver()
    try:
        make_prompt(engine, deploy=("v1.8.0",))
        dispatcher = WebhookDispatcher(
            engine=engine,
            policies=_policies(tmp_path, receiver.url),
            secret=SECRET,
            format=mode,
        )
        dispatcher.run_due()
        with write_session(engine) as session:
            registry.deploy(
                session=session,
                prompt="customer-support",
                version="v2.0.0",
                actor=Actor("U1", Trigger.SLACK),
                now=utcnow(),
            )
        dispatcher.run_due()
        assert receiver.bad_signatures == 0  # signed over the body, whatever the mode
        [(headers, body)] = receiver.raw
        event = from_http(headers, body)  # the CloudEvents project's own parser
        assert event["specversion"] == "1.0"
        assert event["type"] == "dev.rollback-bot.routing.changed"
        assert event["source"] == "/rollback-bot/prompts/customer-support"
        assert event["subject"] == "customer-support"
        assert event["id"].startswith("audit-")
        data = event.data if isinstance(event.data, dict) else json.loads(event.data)
        assert (data["kind"], data["from_version"], data["to_version"]) == (
            "deploy",
            "v1.8.0",
            "v2.0.0",
        )
        expected = (
            "application/cloudevents+json" if mode.endswith("structured") else "application/json"
        )
        assert headers["Content-Type"] == expected
    finally:
        receiver.close()
