"""Socket Mode, proven: the bot connects with slack_sdk's own Socket Mode client (through
Bolt's SocketModeHandler) to a local stand-in of Slack's endpoint (tests/socket_kit.py) and
acts on commands and clicks that arrive over the websocket, exactly once."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from urllib.parse import parse_qs

import httpx
import pytest
from sqlalchemy import Engine

from tests.conftest import make_prompt
from tests.slack_harness import API_TOKEN, Harness, running
from tests.slack_kit import (
    block_actions_body,
    slash_command_body,
    target_choice,
    view_submission_body,
)
from tests.test_slack_app import _active, _buttons, _checker_pass, _history, _wait_card

APP_TOKEN = "xapp-1-A1-socket-test-0123456789"


@pytest.fixture
def socket(engine: Engine, db_url: str) -> Iterator[Harness]:
    """The bot in Socket Mode only: no signing secret, so nothing is served over HTTP."""
    with running(engine, db_url, signing_secret=None, slack_app_token=APP_TOKEN) as harness:
        assert harness.socket is not None
        harness.socket.wait_for(lambda: harness.socket.opened >= 1, timeout=10)
        yield harness


def _form(body: bytes) -> dict:
    return {k: v[0] for k, v in parse_qs(body.decode()).items()}


def _payload(body: bytes) -> dict:
    return json.loads(_form(body)["payload"])


def _health(harness: Harness) -> dict:
    return httpx.get(f"{harness.base_url}/healthz").json()["slack"]


def _wait_health(harness: Harness, state: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while _health(harness)["socket_mode"] != state:
        assert time.monotonic() < deadline, _health(harness)
        time.sleep(0.05)


def test_connects_and_says_so(socket: Harness) -> None:
    _wait_health(socket, "connected")
    assert [c.method for c in socket.fake.calls_to("apps.connections.open")]
    # HTTP is not served without a signing secret: requests can only come over the socket.
    body = slash_command_body("/rollback", "help")
    assert socket.sender.post(body).status_code == 404


def test_a_command_over_the_socket_rolls_back_once(socket: Harness, engine: Engine) -> None:
    assert socket.socket is not None
    make_prompt(engine)
    body = slash_command_body("/rollback", "customer-support v1.9.0 bad refunds", slack=socket.fake)
    started = time.monotonic()
    envelope = socket.socket.send("slash_commands", _form(body))
    ack = socket.socket.ack(envelope)
    assert ack.at - started < 3.0  # within Slack's 3 s
    answer = socket.fake.wait_for(lambda _: socket.fake.responses() or None)[0]
    assert answer["text"].startswith("Rolled back customer-support v2.0.0 → v1.9.0.")
    assert _active(engine) == "v1.9.0"
    # Slack retries an envelope it thinks was not acknowledged: the same command again is
    # told who did it, and nothing changes twice.
    retried = socket.socket.send("slash_commands", _form(body), retry=1)
    socket.socket.ack(retried)
    answers = socket.fake.wait_for(
        lambda _: socket.fake.responses() if len(socket.fake.responses()) == 2 else None
    )
    assert "already rolled back" in answers[1]["text"]
    assert [e.kind for e in _history(engine)].count("rollback") == 1


def test_a_click_and_its_dialog_over_the_socket_roll_back_once(
    socket: Harness, engine: Engine
) -> None:
    assert socket.socket is not None
    _checker_pass(engine, socket, errors=30)
    card = _wait_card(socket, lambda m: bool(_buttons(m)))
    value = next(
        e["value"] for b in card["blocks"] if b["type"] == "actions" for e in b["elements"]
    )
    click = block_actions_body(
        "incident_rollback", value, "U1", card["ts"], "C1", slack=socket.fake
    )
    socket.socket.ack(socket.socket.send("interactive", _payload(click)))
    view = socket.fake.wait_for(lambda _: socket.fake.views() or None)[0]["view"]
    submit = view_submission_body(view, "U1", target_choice("v1.9.0"))
    for _ in range(2):  # sent twice (a retry): one rollback, the second refused in the dialog
        ack = socket.socket.ack(socket.socket.send("interactive", _payload(submit)))
    assert ack.payload is not None and ack.payload["response_action"] == "errors"
    assert "already rolled back" in ack.payload["errors"]["target"]
    _wait_card(socket, lambda m: not _buttons(m))
    assert _active(engine) == "v1.9.0"
    assert [e.kind for e in _history(engine)].count("rollback") == 1


@pytest.mark.parametrize("how", ["disconnect", "drop"])
def test_a_closed_socket_reconnects_and_keeps_working(
    socket: Harness, engine: Engine, how: str
) -> None:
    assert socket.socket is not None
    make_prompt(engine)
    before = len(socket.fake.calls_to("apps.connections.open"))
    if how == "disconnect":
        socket.socket.disconnect("refresh_requested")  # Slack rotating the connection
    else:
        socket.socket.drop()  # the network failing
    socket.socket.wait_for(lambda: socket.socket.opened >= 2, timeout=30)
    assert len(socket.fake.calls_to("apps.connections.open")) > before  # a fresh URL
    _wait_health(socket, "connected")
    body = slash_command_body("/rollback", "customer-support v1.9.0", slack=socket.fake)
    socket.socket.ack(socket.socket.send("slash_commands", _form(body)), timeout=10)
    socket.fake.wait_for(lambda _: socket.fake.responses() or None)
    assert _active(engine) == "v1.9.0"


def test_a_failed_handshake_is_not_called_connected(
    engine: Engine, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="bot.slack.app"):
        with running(engine, db_url, signing_secret=None, slack_app_token=APP_TOKEN) as harness:
            assert harness.socket is not None
            harness.socket.wait_for(lambda: harness.socket.opened >= 1, timeout=10)
            harness.socket.refuse_handshakes(True)
            harness.socket.drop()
            time.sleep(3)
            assert harness.socket.opened == 1  # every new handshake was refused
            harness.socket.refuse_handshakes(False)
            harness.socket.wait_for(lambda: harness.socket.opened >= 2, timeout=40)
            _wait_health(harness, "connected", timeout=40)
    connected = [r for r in caplog.records if r.getMessage() == "Slack Socket Mode connected"]
    assert len(connected) == 1  # only the first real connection, never a failed handshake


def test_a_refused_app_token_is_named_and_the_server_keeps_working(
    engine: Engine, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="bot.slack.app"):
        with running(
            engine, db_url, signing_secret=None, slack_app_token=APP_TOKEN, refuse_app_token=True
        ) as harness:
            _wait_health(harness, "token_refused")
            assert harness.socket is not None and harness.socket.opened == 0
            # Detection, the API and automatic rollbacks need no Slack: the server serves.
            health = httpx.get(f"{harness.base_url}/healthz")
            assert health.status_code == 200 and health.json()["status"] == "degraded"
            make_prompt(engine)
            assert (
                httpx.get(
                    f"{harness.base_url}/api/prompts/customer-support",
                    headers={"Authorization": f"Bearer {API_TOKEN}"},
                ).status_code
                == 200
            )
    refused = [r for r in caplog.records if "Slack refused SLACK_APP_TOKEN" in r.getMessage()]
    assert refused and refused[0].levelno == logging.ERROR
    assert "invalid_auth" in refused[0].getMessage()
    assert APP_TOKEN not in caplog.text  # the secret itself is never logged
