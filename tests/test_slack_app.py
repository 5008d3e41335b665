"""The Slack app end to end: real signed requests over HTTP, a Slack Web API stand-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import select

from bot import registry
from bot.api.app import create_app
from bot.config import load_settings
from bot.db import read_session
from bot.incidents.postmortem import postmortem
from bot.judging.checker import Checker
from bot.metrics.builtin import BuiltinSource
from bot.models import Incident, IncidentStatus, OutboxStatus, SlackOutbox, utcnow
from bot.policy import load_policies
from bot.slack.app import SlackService
from bot.slack.blocks import ACKNOWLEDGE_ACTION, INVESTIGATE_ACTION, ROLLBACK_ACTION
from tests.conftest import API_TOKEN, make_prompt
from tests.detection_kit import POLICY_DIR, Clock, activated_at, traffic
from tests.slack_harness import BOT_TOKEN, POLICIES, SIGNING_SECRET, Harness, running
from tests.slack_kit import FakeSlack, sign, slash_command_body


@pytest.fixture
def slack(engine: Engine, db_url: str) -> Iterator[Harness]:
    with running(engine, db_url) as harness:
        yield harness


def _active(engine: Engine) -> str | None:
    with read_session(engine) as session:
        return registry.prompt_detail(session=session, name="customer-support").active_version


def _history(engine: Engine) -> list:
    with read_session(engine) as session:
        return registry.history(session=session, name="customer-support")


def _incident(engine: Engine) -> Incident:
    with read_session(engine) as session:
        return session.exec(select(Incident)).one()


def _checker_pass(engine: Engine, harness: Harness, errors: int, n: int = 1000) -> None:
    """Deployed v2.0.0 two minutes ago with `errors` in `n`; one checker pass to Slack, now."""
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"), now=utcnow() - timedelta(minutes=2))
    clock = Clock(activated_at(engine))
    traffic(engine, version="v2.0.0", n=n, errors=errors, at=clock.now)  # before any rollback
    clock.advance(minutes=2)
    Checker(
        engine=engine,
        policies=load_policies(POLICY_DIR),
        sources={"builtin": BuiltinSource(engine)},
        notifier=harness.service.notifier,
        clock=clock,
    ).tick()


def _outbox(harness: Harness) -> list[tuple]:
    with read_session(harness.service.worker.engine) as session:
        return [
            (r.id, r.dedupe_key, r.method, r.status, r.last_error)
            for r in session.exec(select(SlackOutbox).order_by(SlackOutbox.id))
        ]


def _buttons(message: dict) -> list[str]:
    return [
        e["action_id"]
        for b in message.get("blocks", [])
        if b["type"] == "actions"
        for e in b["elements"]
    ]


def _click(harness: Harness, action: str, message: dict, user: str = "U1"):
    value = next(
        e["value"]
        for b in message["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == action
    )
    return harness.sender.click(action, value, user, message["ts"], "C1")


def _wait_card(harness: Harness, predicate) -> dict:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        cards = [m for m in harness.fake.messages("C1") if "Incident #" in str(m.get("blocks"))]
        if cards and predicate(cards[0]):
            return cards[0]
        time.sleep(0.02)
    raise AssertionError(f"card never matched; outbox: {_outbox(harness)}")


# --- signatures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "forgery",
    [
        {"secret": "wrong-secret-0123456789"},
        {"timestamp": int(time.time()) - 600},
        {"signed": False},
    ],
    ids=["forged", "stale", "unsigned"],
)
def test_unsigned_forged_or_stale_requests_get_401_and_do_nothing(
    slack: Harness, engine: Engine, forgery: dict
) -> None:
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    response = slack.sender.command("customer-support v1.9.0", **forgery)
    assert response.status_code == 401
    assert _active(engine) == "v2.0.0"
    assert slack.fake.responses() == []
    assert slack.fake.calls_to("chat.postMessage") == []


def test_a_timestamp_that_is_not_a_number_gets_401(slack: Harness, engine: Engine) -> None:
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    body = slash_command_body("/rollback", "customer-support v1.9.0", user_id="U1")
    for stamp in ("soon", "", "1e9", "-5", "0x10"):
        response = slack.sender.post(body, headers={"X-Slack-Request-Timestamp": stamp})
        assert response.status_code == 401, (stamp, response.text)
    assert _active(engine) == "v2.0.0"
    assert slack.fake.calls_to("chat.postMessage") == []


def test_ssl_check_is_answered_200_and_changes_nothing(slack: Harness, engine: Engine) -> None:
    """Slack probes a slash command's URL with an unsigned `ssl_check=1` form post."""
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    response = slack.sender.post(b"ssl_check=1&token=verification-token", signed=False)
    assert response.status_code == 200 and response.text == ""
    # Unsigned, it is only ever an ssl_check: a command next to it is still refused.
    body = b"ssl_check=1&" + slash_command_body("/rollback", "customer-support v1.9.0")
    assert slack.sender.post(body, signed=False).status_code == 200
    assert _active(engine) == "v2.0.0"
    assert slack.fake.calls_to("chat.postMessage") == []


@pytest.mark.parametrize(
    "body",
    [
        {"type": "event_callback", "event": {"type": "app_mention", "text": "hi"}},
        {
            "type": "view_submission",
            "user": {"id": "U1"},
            "view": {"id": "V1", "type": "modal", "callback_id": "old_modal", "state": {}},
        },
        {"type": "block_actions", "user": {"id": "U1"}, "actions": [{"action_id": "gone"}]},
        {"type": "shortcut", "user": {"id": "U1"}, "callback_id": "unknown"},
    ],
    ids=["event", "view-submission", "unknown-action", "shortcut"],
)
def test_a_signed_request_nothing_handles_is_acknowledged(
    slack: Harness, engine: Engine, body: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """Slack would retry an event, or show an error on a button, for anything but a 2xx."""
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    raw = (
        json.dumps({**body, "team_id": "T1", "api_app_id": "A1"}).encode()
        if body["type"] == "event_callback"
        else b"payload=" + urllib.parse.quote(json.dumps(body)).encode()
    )
    headers = {"Content-Type": "application/json"} if body["type"] == "event_callback" else {}
    with caplog.at_level("INFO", logger="bot.api.routes.slack"):
        response = slack.sender.post(raw, headers=headers)
    assert response.status_code == 200, response.text
    assert any("not handled" in r.getMessage() for r in caplog.records)
    assert _active(engine) == "v2.0.0"
    assert slack.fake.calls_to("chat.postMessage") == []


@pytest.mark.parametrize("secret", [None, SIGNING_SECRET], ids=["no-secret", "secret"])
def test_socket_mode_never_acts_on_an_unsigned_http_request(
    engine: Engine, db_url: str, secret: str | None
) -> None:
    """With SLACK_APP_TOKEN set, Slack's requests come over the websocket: the HTTP route is
    not served without a signing secret, and verifies as in HTTP mode with one."""
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    with FakeSlack(token=BOT_TOKEN, channels={"incidents": "C1"}) as fake:
        settings = load_settings(
            database_url=db_url,
            rollback_api_token=API_TOKEN,
            slack_bot_token=BOT_TOKEN,
            slack_app_token="xapp-1-test-0123456789",
            slack_signing_secret=secret,
            slack_api_url=fake.base_url,
            slack_oncall_users="U1",
        )
        service = SlackService(settings=settings, engine=engine, policies=load_policies(POLICIES))
        http = TestClient(create_app(settings, engine, slack=service))  # no lifespan: no socket
        forged = {"signed": False}, {"secret": "attacker-guess-0123456789"}
        for how in forged:
            body = slash_command_body("/rollback", "customer-support v1.9.0", user_id="U1")
            headers = (
                sign(body, how["secret"])
                if "secret" in how
                else {"Content-Type": "application/x-www-form-urlencoded"}
            )
            response = http.post("/slack/events", content=body, headers=headers)
            assert response.status_code == (404 if secret is None else 401), response.text
        if secret is not None:  # a correctly signed request is still served
            body = slash_command_body("/rollback", "status customer-support", user_id="U1")
            assert http.post("/slack/events", content=body, headers=sign(body, secret)).is_success
        assert _active(engine) == "v2.0.0"
        assert fake.calls_to("chat.postMessage") == []
        service.pool.shutdown()


# --- alerts and buttons -------------------------------------------------------------------


def test_critical_is_rolled_back_and_the_card_arrives_resolved(
    slack: Harness, engine: Engine
) -> None:
    _checker_pass(engine, slack, errors=80)
    card = _wait_card(slack, lambda m: "Rolled back" in str(m["blocks"]))
    assert _buttons(card) == []
    text = json.dumps(card["blocks"])
    assert "CRITICAL: customer-support v2.0.0" in text
    assert "error_rate_critical" in text
    assert "8.0% of 1,000 requests" in text
    assert "Rolled back v2.0.0 \\u2192 v1.9.0 by system (automatic)" in text
    replies = slack.fake.wait_for(lambda _: slack.fake.thread(card["ts"])[1:] or None)
    assert "Verification of the restored version reports in this thread" in replies[0]["text"]
    assert _active(engine) == "v1.9.0"


def test_high_severity_card_has_buttons_and_pages_on_call(slack: Harness, engine: Engine) -> None:
    _checker_pass(engine, slack, errors=30)
    card = _wait_card(slack, lambda m: bool(_buttons(m)))
    assert _buttons(card) == [ROLLBACK_ACTION, ACKNOWLEDGE_ACTION]
    assert card["blocks"][-1]["elements"][0]["text"]["text"] == "Rollback to v1.9.0"
    [dm] = slack.fake.wait_for(lambda _: slack.fake.messages("U1") or None)
    blocks = json.dumps(dm["blocks"])
    # The severity the notice has, the rule in words (no metric identifiers), a link to the
    # card, and the card's own buttons.
    assert dm["blocks"][0]["text"]["text"] == "HIGH: customer-support v2.0.0"
    assert "error rate 3.0% is above 2%" in blocks and "error_rate_pct" not in blocks
    link = f"https://acme.slack.com/archives/C1/p{card['ts'].replace('.', '')}"
    assert f"<{link}|Incident #" in blocks
    assert _buttons(dm) == [ROLLBACK_ACTION, ACKNOWLEDGE_ACTION]
    # The card says who was paged.
    _wait_card(slack, lambda m: "paged: <@U1>" in json.dumps(m["blocks"]))


def test_rollback_opens_a_dialog_and_rolls_back_when_it_is_sent(
    slack: Harness, engine: Engine
) -> None:
    make_prompt(engine, versions=("v1.8.0",), now=utcnow() - timedelta(hours=3))  # known-good
    _checker_pass(engine, slack, errors=30)
    card = _wait_card(slack, lambda m: bool(_buttons(m)))
    started = time.perf_counter()
    response = _click(slack, ROLLBACK_ACTION, card)
    assert response.status_code == 200 and time.perf_counter() - started < 1.5
    view = slack.fake.wait_for(lambda _: slack.fake.views() or None)[0]["view"]
    assert _active(engine) == "v2.0.0"  # nothing changes until the dialog is sent
    select = next(b for b in view["blocks"] if b.get("block_id") == "target")["element"]
    assert select["initial_option"]["value"] == "v1.9.0"  # the previous known-good version
    assert [o["value"] for o in select["options"]] == ["v1.9.0", "v1.8.0"]
    reason = next(b for b in view["blocks"] if b.get("block_id") == "reason")
    assert reason["optional"] is True
    # Sent with v1.8.0 chosen instead and a reason.
    sent = slack.sender.roll_back_via_dialog(card, target="v1.8.0", reason="refunds wrong")
    assert sent.status_code == 200 and sent.text == ""  # the dialog closes
    updated = _wait_card(slack, lambda m: not _buttons(m))
    assert "Rolled back v2.0.0 \\u2192 v1.8.0 by <@U1>" in json.dumps(updated["blocks"])
    assert _active(engine) == "v1.8.0"
    entry = _history(engine)[0]
    assert (entry.kind, entry.operator, entry.trigger) == ("rollback", "U1", "slack")
    assert "refunds wrong" in entry.reason
    assert _incident(engine).status == IncidentStatus.ROLLED_BACK
    replies = slack.fake.wait_for(lambda _: slack.fake.thread(card["ts"])[1:] or None)
    assert "by <@U1>: refunds wrong." in replies[0]["text"]


def test_two_dialogs_sent_at_once_roll_back_once_and_tell_the_second(
    slack: Harness, engine: Engine
) -> None:
    _checker_pass(engine, slack, errors=30)
    card = _wait_card(slack, lambda m: bool(_buttons(m)))
    value = json.loads(
        next(e["value"] for b in card["blocks"] if b["type"] == "actions" for e in b["elements"])
    )
    for _ in range(2):  # the same person clicks twice: two dialogs
        assert _click(slack, ROLLBACK_ACTION, card).status_code == 200
    views = slack.fake.wait_for(
        lambda _: slack.fake.views() if len(slack.fake.views()) == 2 else None
    )
    option = {"text": {"type": "plain_text", "text": "v1.9.0"}, "value": "v1.9.0"}
    values = {"target": {"target_version": {"type": "static_select", "selected_option": option}}}
    results: list = []
    sends = [
        threading.Thread(
            target=lambda v=v: results.append(slack.sender.submit_view(v["view"], "U1", values))
        )
        for v in views
    ]
    for send in sends:
        send.start()
    for send in sends:
        send.join()
    assert sorted(r.status_code for r in results) == [200, 200]
    refused = [r.json() for r in results if r.text]
    assert len(refused) == 1 and refused[0]["response_action"] == "errors"
    assert (
        "already rolled back v2.0.0 \u2192 v1.9.0 by <@U1> (slack)"
        in refused[0]["errors"]["target"]
    )
    _wait_card(slack, lambda m: not _buttons(m))
    assert [e.kind for e in _history(engine)].count("rollback") == 1
    assert value["incident"] == _incident(engine).id


def test_a_dialog_sent_by_someone_not_on_call_changes_nothing(
    slack: Harness, engine: Engine
) -> None:
    _checker_pass(engine, slack, errors=30)
    card = _wait_card(slack, lambda m: bool(_buttons(m)))
    _click(slack, ROLLBACK_ACTION, card)
    view = slack.fake.wait_for(lambda _: slack.fake.views() or None)[0]["view"]
    option = {"text": {"type": "plain_text", "text": "v1.9.0"}, "value": "v1.9.0"}
    values = {"target": {"target_version": {"type": "static_select", "selected_option": option}}}
    answer = slack.sender.submit_view(view, "U2", values).json()
    assert answer["response_action"] == "errors"
    assert "only on-call engineers" in answer["errors"]["target"]
    assert _active(engine) == "v2.0.0"


def test_people_not_on_call_are_refused_and_nothing_happens(slack: Harness, engine: Engine) -> None:
    _checker_pass(engine, slack, errors=30)
    card = _wait_card(slack, lambda m: bool(_buttons(m)))
    for action in (ROLLBACK_ACTION, ACKNOWLEDGE_ACTION):
        assert _click(slack, action, card, user="U2").status_code == 200
    answers = slack.fake.wait_for(
        lambda _: slack.fake.responses() if len(slack.fake.responses()) == 2 else None
    )
    assert all("only on-call engineers" in a["text"] for a in answers)
    assert _active(engine) == "v2.0.0"
    incident = _incident(engine)
    assert (incident.status, incident.investigator) == (IncidentStatus.OPEN, None)


def test_acknowledge_records_who_stops_paging_and_keeps_rollback(
    slack: Harness, engine: Engine
) -> None:
    _checker_pass(engine, slack, errors=30)
    card = _wait_card(slack, lambda m: bool(_buttons(m)))
    assert _click(slack, ACKNOWLEDGE_ACTION, card).status_code == 200
    updated = _wait_card(slack, lambda m: "acknowledged: <@U1>" in json.dumps(m["blocks"]))
    assert _buttons(updated) == [ROLLBACK_ACTION, ACKNOWLEDGE_ACTION]
    incident = _incident(engine)
    assert (incident.investigator, incident.responders) == ("U1", ["U1"])
    assert incident.quiet_until is not None and incident.quiet_until > utcnow()
    replies = slack.fake.wait_for(lambda _: slack.fake.thread(card["ts"])[1:] or None)
    assert replies[0]["text"].startswith("<@U1> acknowledged and is on it.")
    # The same person again: told so, nothing new in the thread.
    before = len(slack.fake.responses())
    assert _click(slack, ACKNOWLEDGE_ACTION, updated).status_code == 200
    told = slack.fake.wait_for(lambda _: slack.fake.responses()[before:] or None)
    assert "already acknowledged" in told[0]["text"]
    assert len(slack.fake.thread(card["ts"])) == 2
    # Acknowledge, then Rollback on the same card.
    assert slack.sender.roll_back_via_dialog(updated).status_code == 200
    _wait_card(slack, lambda m: not _buttons(m))
    assert _active(engine) == "v1.9.0"


def test_a_second_person_joins_rather_than_replacing_the_first(engine: Engine, db_url: str) -> None:
    with running(engine, db_url, slack_oncall_users="U1,U3") as slack:
        _checker_pass(engine, slack, errors=30)
        card = _wait_card(slack, lambda m: bool(_buttons(m)))
        assert _click(slack, ACKNOWLEDGE_ACTION, card, user="U1").status_code == 200
        _wait_card(slack, lambda m: "acknowledged: <@U1>" in json.dumps(m["blocks"]))
        assert _click(slack, ACKNOWLEDGE_ACTION, card, user="U3").status_code == 200
        _wait_card(slack, lambda m: "acknowledged: <@U1>, <@U3>" in json.dumps(m["blocks"]))
        incident = _incident(engine)
        assert (incident.investigator, incident.responders) == ("U1", ["U1", "U3"])
        replies = slack.fake.wait_for(
            lambda _: (
                slack.fake.thread(card["ts"])[1:]
                if len(slack.fake.thread(card["ts"])) >= 3
                else None
            )
        )
        assert [r["text"].split(" and ")[0] for r in replies] == [
            "<@U1> acknowledged",
            "<@U3> acknowledged",
        ]
        assert "joined the response" in replies[1]["text"]


def test_acknowledge_from_the_dm_acts_on_the_incident(slack: Harness, engine: Engine) -> None:
    _checker_pass(engine, slack, errors=30)
    card = _wait_card(slack, lambda m: bool(_buttons(m)))
    [dm] = slack.fake.wait_for(lambda _: slack.fake.messages("U1") or None)
    value = next(
        e["value"]
        for b in dm["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == ACKNOWLEDGE_ACTION
    )
    dm_channel = slack.fake.channel_id("U1")
    assert (
        slack.sender.click(ACKNOWLEDGE_ACTION, value, "U1", dm["ts"], dm_channel).status_code == 200
    )
    _wait_card(slack, lambda m: "acknowledged: <@U1>" in json.dumps(m["blocks"]))
    assert _incident(engine).responders == ["U1"]
    assert card["ts"] in {m["ts"] for m in slack.fake.messages("C1")}


def test_a_card_posted_before_acknowledge_existed_still_works(
    slack: Harness, engine: Engine
) -> None:
    """Cards in Slack keep their old Investigate button; a click on one acknowledges."""
    _checker_pass(engine, slack, errors=30)
    card = _wait_card(slack, lambda m: bool(_buttons(m)))
    value = json.dumps({"incident": _incident(engine).id, "target": "v1.9.0"})
    assert slack.sender.click(INVESTIGATE_ACTION, value, "U1", card["ts"], "C1").status_code == 200
    _wait_card(slack, lambda m: "acknowledged: <@U1>" in json.dumps(m["blocks"]))


def test_a_critical_automatic_rollback_is_told_to_on_call(slack: Harness, engine: Engine) -> None:
    _checker_pass(engine, slack, errors=80)
    [dm] = slack.fake.wait_for(lambda _: slack.fake.messages("U1") or None)
    blocks = json.dumps(dm["blocks"])
    assert dm["blocks"][0]["text"]["text"] == "CRITICAL: customer-support v2.0.0"
    assert "Rolled back v2.0.0 \\u2192 v1.9.0 automatically." in blocks
    assert "Verifying the restored version now" in blocks
    assert "error rate 8.0% is above 5%" in blocks
    assert _buttons(dm) == []  # nothing left to press: it is rolled back


# --- /rollback ----------------------------------------------------------------------------


def _answer(slack: Harness, text: str, user: str = "U1", command: str = "/rollback") -> dict:
    before = len(slack.fake.responses())
    started = time.perf_counter()
    response = slack.sender.command(text, user_id=user, command=command)
    assert response.status_code == 200
    assert time.perf_counter() - started < 1.5
    answers = slack.fake.wait_for(lambda _: slack.fake.responses()[before:] or None)
    assert answers[0]["response_type"] == "ephemeral"
    return answers[0]


def test_slash_rollback_to_a_version_is_announced(slack: Harness, engine: Engine) -> None:
    make_prompt(engine)
    answer = _answer(slack, "customer-support v1.8.0 refund answers are wrong")
    assert "Rolled back customer-support v2.0.0 → v1.8.0" in answer["text"]
    assert _active(engine) == "v1.8.0"
    assert _history(engine)[0].reason == "refund answers are wrong"
    post = slack.fake.wait_for(lambda _: slack.fake.messages("C1") or None)[0]
    assert (
        "<@U1> rolled back *customer-support* `v2.0.0` → `v1.8.0`: refund answers are wrong"
        in post["text"]
    )
    thread = slack.fake.wait_for(lambda _: slack.fake.thread(post["ts"])[1:] or None)
    assert "Verification of v1.8.0" in thread[0]["text"]
    assert answer["text"].endswith("Announced in #incidents.")  # the post was there by then


def test_slash_deploy_is_announced_like_a_rollback(slack: Harness, engine: Engine) -> None:
    make_prompt(engine, deploy=("v1.9.0",))
    answer = _answer(slack, "customer-support v2.0.0 new refund wording", command="/deploy")
    assert answer["text"] == ("Deployed customer-support v1.9.0 → v2.0.0. Announced in #incidents.")
    assert _active(engine) == "v2.0.0"
    post = slack.fake.wait_for(lambda _: slack.fake.messages("C1") or None)[0]
    assert post["text"] == (
        ":rocket: <@U1> deployed *customer-support* `v1.9.0` → `v2.0.0`: new refund wording"
    )


def test_announced_is_said_only_once_slack_has_the_post(slack: Harness, engine: Engine) -> None:
    make_prompt(engine)
    slack.fake.set_down(True)
    try:
        answer = _answer(slack, "customer-support v1.9.0 during an outage")
        # The answer goes to the response_url (the stand-in keeps taking those); the channel
        # post waits in the outbox, and the user is not told it is there.
        assert answer["text"].endswith(
            "It will be announced in #incidents as soon as Slack takes the message."
        )
        assert slack.fake.messages("C1") == []
    finally:
        slack.fake.set_down(False)
    slack.service.worker.wake()
    post = slack.fake.wait_for(lambda _: slack.fake.messages("C1") or None, timeout=15)[0]
    assert "rolled back *customer-support*" in post["text"]


def test_an_overlong_reason_is_refused_with_the_limit(slack: Harness, engine: Engine) -> None:
    make_prompt(engine)
    answer = _answer(slack, "customer-support v1.9.0 " + "x" * 1001)
    assert answer["text"].startswith(":warning: the reason is 1001 characters; at most 1000")
    assert _active(engine) == "v2.0.0"
    assert slack.fake.messages("C1") == []


def test_slash_rollback_without_version_goes_to_previous_known_good(
    slack: Harness, engine: Engine
) -> None:
    make_prompt(engine)
    assert "v2.0.0 → v1.9.0" in _answer(slack, "customer-support")["text"]
    again = _answer(slack, "customer-support")
    assert "already rolled back v2.0.0 → v1.9.0 by <@U1> (slack)" in again["text"]
    assert [e.kind for e in _history(engine)].count("rollback") == 1


@pytest.mark.parametrize(
    ("text", "user", "expected"),
    [
        ("", "U1", "*/rollback* — put a prompt back"),
        ("help", "U1", "/rollback status PROMPT"),
        ("customer-suport", "U1", "did you mean customer-support"),
        ("customer-support v9", "U1", "recent versions: v2.0.0, v1.9.0, v1.8.0"),
        ("customer-support v2.0.0", "U1", "already the active version"),
        ("customer-support v1.9.0", "U2", "only on-call engineers"),
        ("customer-support --fast", "U1", "unknown option --fast"),
        ("status", "U1", "usage: /rollback status PROMPT"),
    ],
)
def test_slash_bad_input_answers_only_the_user_and_changes_nothing(
    slack: Harness, engine: Engine, text: str, user: str, expected: str
) -> None:
    make_prompt(engine)
    answer = _answer(slack, text, user)
    assert expected in answer["text"]
    assert _active(engine) == "v2.0.0"
    assert len(_history(engine)) == 3
    assert slack.fake.calls_to("chat.postMessage") == []


def test_slash_version_marked_bad_needs_force(slack: Harness, engine: Engine) -> None:
    make_prompt(engine)
    _answer(slack, "customer-support v1.9.0")
    _answer(slack, "customer-support v2.0.0 --force")  # v2.0.0 was marked bad by the rollback
    assert _active(engine) == "v2.0.0"
    make = _answer(slack, "customer-support v1.8.0")
    assert "v2.0.0 → v1.8.0" in make["text"]
    refused = _answer(slack, "customer-support v2.0.0")
    assert "marked bad" in refused["text"]
    assert "--force" in refused["text"] or "force" in refused["text"]
    assert _active(engine) == "v1.8.0"


def test_slash_status_and_history(slack: Harness, engine: Engine) -> None:
    make_prompt(engine)
    status = json.dumps(_answer(slack, "status customer-support")["blocks"])
    assert "active `v2.0.0`" in status
    assert "No open incident" in status
    history = json.dumps(_answer(slack, "history customer-support")["blocks"])
    assert history.count("deploy") == 3


# --- Slack failing --------------------------------------------------------------------------


def test_slack_errors_delay_messages_but_never_the_rollback_or_duplicate(
    slack: Harness, engine: Engine
) -> None:
    slack.fake.fail_next("chat.postMessage", 2, status=500)
    slack.fake.fail_next("chat.postMessage", 1, status=429, retry_after=1)
    make_prompt(engine)
    answer = _answer(slack, "customer-support v1.9.0")
    assert "Rolled back" in answer["text"]
    assert _active(engine) == "v1.9.0"
    posts = slack.fake.wait_for(lambda _: slack.fake.messages("C1") or None, timeout=15)
    time.sleep(0.5)
    assert len(slack.fake.messages("C1")) == 2  # the announcement and its thread reply, once each
    assert len(posts) >= 1
    failed = [c for c in slack.fake.calls_to("chat.postMessage") if c.faulted]
    assert len(failed) == 3


def test_slack_down_then_back_delivers_everything_once(slack: Harness, engine: Engine) -> None:
    _checker_pass(engine, slack, errors=30)
    card = _wait_card(slack, lambda m: bool(_buttons(m)))
    slack.fake.set_down(True)
    # Slack's side fails, so the dialog cannot open: the click rolls back to the version its
    # button names, rather than leaving on-call with nothing.
    assert _click(slack, ROLLBACK_ACTION, card).status_code == 200
    deadline = time.monotonic() + 5
    while _active(engine) != "v1.9.0":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    slack.fake.set_down(False)
    _wait_card(slack, lambda m: not _buttons(m))
    replies = slack.fake.wait_for(lambda _: slack.fake.thread(card["ts"])[1:] or None, timeout=15)
    time.sleep(0.5)
    assert len(slack.fake.thread(card["ts"])[1:]) == len(replies) == 1
    with read_session(engine) as session:
        rows = session.exec(select(SlackOutbox)).all()
    assert {r.status for r in rows} == {OutboxStatus.SENT}


def test_a_prompt_policy_routes_its_incidents_and_on_call(
    engine: Engine, db_url: str, tmp_path
) -> None:
    (tmp_path / "default.yaml").write_text((POLICY_DIR / "default.yaml").read_text())
    (tmp_path / "cs.yaml").write_text(
        "prompts:\n  customer-support:\n    slack_channel: '#cs-incidents'\n"
        "    oncall_usergroup: S9\n"
    )
    with running(engine, db_url, policy_dir=tmp_path) as harness:
        harness.fake.set_usergroup("S9", ["U2"])
        make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
        clock = Clock(activated_at(engine))
        clock.advance(minutes=2)
        traffic(engine, version="v2.0.0", n=1000, errors=30, at=clock.now)
        Checker(
            engine=engine,
            policies=load_policies(tmp_path),
            sources={"builtin": BuiltinSource(engine)},
            notifier=harness.service.notifier,
            clock=clock,
        ).tick()
        card = harness.fake.wait_for(lambda _: harness.fake.messages("C2") or None)[0]
        assert harness.fake.messages("C1") == []
        dms = harness.fake.wait_for(lambda _: harness.fake.messages("U2") or None)
        assert "error rate 3.0% is above 2%" in dms[0]["text"]
        # U2 is on call for this prompt through its group.
        sent = harness.sender.roll_back_via_dialog(card, "U2", channel_id=card["channel"])
        assert sent.status_code == 200 and sent.text == ""
        deadline = time.monotonic() + 5
        while _active(engine) != "v1.9.0":
            assert time.monotonic() < deadline
            time.sleep(0.02)


def _verify(engine: Engine, harness: Harness, at) -> None:
    from bot.verification.verifier import Verifier

    Verifier(
        engine=engine,
        policies=load_policies(POLICY_DIR),
        sources={"builtin": BuiltinSource(engine)},
        notifier=harness.service.notifier,
        clock=lambda: at,
    ).run_due()


def test_verification_reports_in_the_card_thread_and_resolves_the_card(
    slack: Harness, engine: Engine
) -> None:
    _checker_pass(engine, slack, errors=80)  # critical: rolled back automatically
    card = _wait_card(slack, lambda m: "Rolled back" in str(m["blocks"]))
    now = utcnow()
    traffic(engine, version="v1.9.0", n=200, errors=1, at=now)
    _verify(engine, slack, now)

    def thread_once_recovered(_calls: list) -> list[str] | None:
        texts = [m["text"] for m in slack.fake.thread(card["ts"])[1:]]
        return texts if any(t.startswith("Recovered") for t in texts) else None

    replies = slack.fake.wait_for(thread_once_recovered)
    replies = [r for r in replies if not r.startswith("All reporting traffic")]
    assert replies[1] == "Check 1/12: error rate 0.5% (n=200)"
    assert replies[2].startswith("Recovered: v1.9.0 is healthy (0.5% errors, n=200)")
    _wait_card(slack, lambda m: "Resolved" in json.dumps(m["blocks"]))
    draft = slack.fake.wait_for(
        lambda _: [m["text"] for m in slack.fake.thread(card["ts"]) if "Post-mortem" in m["text"]]
    )[0]
    # Slack mrkdwn, not GitHub Markdown: no headings, no double asterisks, people as mentions.
    assert draft.startswith("*Post-mortem draft: customer-support v2.0.0")
    assert "*Timeline*" in draft and "*Who did what*" in draft
    assert "#" not in draft.replace("incident #", "") and "**" not in draft


def test_verification_of_a_slash_rollback_threads_under_its_announcement(
    slack: Harness, engine: Engine
) -> None:
    make_prompt(engine)
    _answer(slack, "customer-support v1.9.0 wrong refunds")
    now = utcnow()
    _verify(engine, slack, now)  # no traffic yet
    post = slack.fake.wait_for(lambda _: slack.fake.messages("C1") or None)[0]
    replies = slack.fake.wait_for(
        lambda _: (
            slack.fake.thread(post["ts"])[1:] if len(slack.fake.thread(post["ts"])) >= 3 else None
        )
    )
    assert [r["text"] for r in replies] == [
        "Verification of v1.9.0 will report in this thread.",
        "Check 1/12: waiting for traffic on v1.9.0 since the rollback (n=0)",
    ]
    assert len(slack.fake.messages("C1")) == 3  # one announcement, two replies; nothing twice


def _rollout_post(slack: Harness) -> dict:
    return slack.fake.wait_for(
        lambda _: (
            [m for m in slack.fake.messages("C1") if "Finish now" in json.dumps(m.get("blocks"))]
            or None
        )
    )[0]


def test_gradual_rollback_from_slash_command_then_finish_now(
    slack: Harness, engine: Engine
) -> None:
    make_prompt(engine)
    answer = _answer(slack, "customer-support v1.9.0 --gradual")
    assert (
        "Started the gradual rollback of customer-support v2.0.0 → v1.9.0, stage 1/4"
        in answer["text"]
    )
    with read_session(engine) as session:
        split = registry.prompt_detail(session=session, name="customer-support").split
    assert split == {"v2.0.0": 75, "v1.9.0": 25}
    post = _rollout_post(slack)
    buttons = {
        e["action_id"]: e for b in post["blocks"] if b["type"] == "actions" for e in b["elements"]
    }
    # Each says what it will do to the traffic before anyone clicks.
    assert "v2.0.0 keeps 75% of the traffic" in buttons["rollout_abort"]["confirm"]["text"]["text"]
    assert "ends as a rollback of v2.0.0" in buttons["rollout_finish"]["confirm"]["text"]["text"]
    value = buttons["rollout_finish"]["value"]
    assert slack.sender.click("rollout_finish", value, "U1", post["ts"], "C1").status_code == 200
    deadline = time.monotonic() + 5
    while _active(engine) != "v1.9.0" or _routing_split(engine) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    updated = slack.fake.wait_for(
        lambda _: (
            slack.fake.message(post["ts"])
            if "completed" in json.dumps(slack.fake.message(post["ts"])["blocks"])
            else None
        )
    )
    assert "Finish now" not in json.dumps(updated["blocks"])
    assert "completed: 100% on v1.9.0" in json.dumps(updated["blocks"])  # not "stage 1/4"


def _routing_split(engine: Engine):
    with read_session(engine) as session:
        return registry.prompt_detail(session=session, name="customer-support").split


def test_deploy_canary_starts_at_one_percent(slack: Harness, engine: Engine) -> None:
    make_prompt(engine, deploy=("v1.8.0", "v1.9.0"))
    answer = _answer(slack, "customer-support v2.0.0 --canary", command="/deploy")
    assert "canary of customer-support v1.9.0 → v2.0.0, stage 1/4 (1% on v2.0.0)" in answer["text"]
    assert _routing_split(engine) == {"v1.9.0": 99, "v2.0.0": 1}
    _rollout_post(slack)
    refused = _answer(slack, "customer-support v2.0.0 --canary", command="/deploy")
    assert "already" in refused["text"]


# --- one story whichever surface rolled back ---------------------------------------------


def _api_rollback(harness: Harness) -> None:
    answer = httpx.post(
        f"{harness.base_url}/api/rollback",
        json={"prompt": "customer-support", "reason": "runbook step 3"},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


def _cli_rollback(harness: Harness, db_url: str) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": harness.fake.base_url,
        "ROLLBACK_POLICY_DIR": str(POLICIES),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bot", "rollback", "customer-support", "--operator", "carol"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("surface", ["api", "cli", "slash"])
def test_a_rollback_from_any_surface_updates_the_card_and_the_postmortem(
    slack: Harness, engine: Engine, db_url: str, surface: str
) -> None:
    """A HIGH incident's card is live; someone rolls back through the API (the runbook's step
    3), the CLI or /rollback. The card loses its buttons and says who did it; a late click on
    the stale card names them (never "None"); the post-mortem says what was done."""
    _checker_pass(engine, slack, errors=30)
    card = _wait_card(slack, lambda m: bool(_buttons(m)))
    if surface == "api":
        _api_rollback(slack)
        who = "by api via the API"
    elif surface == "cli":
        _cli_rollback(slack, db_url)
        who = "by carol via the CLI"
    else:
        _answer(slack, "customer-support")  # its answer first, so the late click's is next
        who = "by <@U1> in Slack"
    updated = _wait_card(slack, lambda m: not _buttons(m))
    assert _active(engine) == "v1.9.0"
    incident = _incident(engine)
    assert incident.status == IncidentStatus.ROLLED_BACK and incident.rollback_audit_id
    replies = slack.fake.wait_for(lambda _: slack.fake.thread(card["ts"])[1:] or None)
    assert f"Rolled back v2.0.0 → v1.9.0 {who}" in replies[0]["text"], replies
    assert "open" not in json.dumps(updated["blocks"]).lower()
    before = len(slack.fake.responses())
    late = _click(slack, ROLLBACK_ACTION, card)
    assert late.status_code == 200
    told = slack.fake.wait_for(lambda _: slack.fake.responses()[before:] or None)
    text = str(told[0].get("text"))
    assert "already rolled back" in text and "by None" not in text, told
    with read_session(engine) as session:
        draft = postmortem(session=session, incident_id=incident.id or 0)
    assert "no rollback" not in draft and "rolled back v2.0.0 → v1.9.0" in draft, draft


def test_a_gradual_rollback_of_an_incidents_version_is_told_in_its_thread(
    slack: Harness, engine: Engine
) -> None:
    _checker_pass(engine, slack, errors=30)
    card = _wait_card(slack, lambda m: bool(_buttons(m)))
    assert slack.sender.command("customer-support v1.9.0 --gradual").status_code == 200
    replies = slack.fake.wait_for(lambda _: slack.fake.thread(card["ts"])[1:] or None)
    assert replies[0]["text"].startswith(
        "Gradual rollback of customer-support v2.0.0 → v1.9.0, stage 1/4 (25% on v1.9.0) "
        "started by <@U1> in Slack"
    ), replies
    assert _incident(engine).status == IncidentStatus.OPEN  # v2.0.0 still serves 75%
