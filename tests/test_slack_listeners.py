"""The Slack listeners as plain functions: no HTTP, no Bolt, no Slack. What a command or click
changes in the registry and queues for Slack is checked straight from the database."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from slack_sdk import WebClient
from sqlalchemy import Engine
from sqlmodel import select

from bot import registry
from bot.config import load_settings
from bot.db import read_session, write_session
from bot.errors import NotAuthorized
from bot.incidents.records import get_incident
from bot.models import (
    Action,
    Incident,
    IncidentStatus,
    PromptVersion,
    Severity,
    SlackOutbox,
    utcnow,
)
from bot.policy import load_policies
from bot.slack import actions, commands
from bot.slack.deps import SlackDeps
from bot.slack.listener import run_guarded
from bot.slack.oncall import OnCall
from bot.slack.outbox import OutboxWorker
from tests.conftest import make_prompt
from tests.slack_kit import target_choice

POLICIES = load_policies(Path(__file__).resolve().parent.parent / "policies")


class Replies:
    """Stands in for Bolt's `respond`: keeps what the user was told."""

    def __init__(self) -> None:
        self.said: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> None:
        self.said.append(kwargs)

    @property
    def text(self) -> str:
        return "\n".join(str(s.get("text")) for s in self.said)


@pytest.fixture
def deps(engine: Engine, db_url: str):
    settings = load_settings(database_url=db_url, slack_oncall_users="U1")
    nowhere = WebClient(base_url="http://127.0.0.1:9/", timeout=1)  # never called here
    with ThreadPoolExecutor(1) as pool:
        yield SlackDeps(
            engine=engine,
            settings=settings,
            policies=POLICIES,
            oncall=OnCall(users=frozenset({"U1"}), usergroup="", client=nowhere),
            worker=OutboxWorker(engine=engine, client=nowhere),
            pool=pool,
            client=nowhere,
        )


def wait_for_answer(said: Replies, seconds: float = 10.0) -> None:
    """Until `said` holds an answer: a command answers once its announcement is posted or its
    wait (ANNOUNCE_WAIT) ends, from another thread."""
    deadline = time.monotonic() + seconds
    while not said.said and time.monotonic() < deadline:
        time.sleep(0.01)


def queued(engine: Engine) -> list[SlackOutbox]:
    with read_session(engine) as session:
        return list(session.exec(select(SlackOutbox).order_by(SlackOutbox.id)))


def test_rollback_command_rolls_back_and_queues_the_announcement(deps, engine, monkeypatch) -> None:
    monkeypatch.setattr(commands, "ANNOUNCE_WAIT", 0.1)  # no worker runs here: never posted
    make_prompt(engine)
    said = Replies()
    commands.rollback_command(
        deps, {"text": "customer-support v1.9.0 bad answers", "user_id": "U1"}, said
    )
    wait_for_answer(said)
    with read_session(engine) as session:
        assert (
            registry.prompt_detail(session=session, name="customer-support").active_version
            == "v1.9.0"
        )
    assert "Rolled back customer-support v2.0.0 → v1.9.0" in said.text
    assert "will be announced in #incidents as soon as Slack takes the message" in said.text
    posts = queued(engine)
    assert posts and "<@U1> rolled back *customer-support*" in posts[0].payload["text"]
    assert any("Verification of v1.9.0" in json.dumps(p.payload) for p in posts)


def test_a_burst_of_commands_changes_every_prompt_before_waiting_on_slack(
    deps, engine, monkeypatch
) -> None:
    """Each answer waits (up to ANNOUNCE_WAIT) for its announcement to reach Slack; that wait
    is queued behind the commands already waiting, so no rollback waits on another's post."""
    monkeypatch.setattr(commands, "ANNOUNCE_WAIT", 1.0)  # no worker runs here: never posted
    make_prompt(engine, "first")
    make_prompt(engine, "second")
    said = {name: Replies() for name in ("first", "second")}
    switched_before_first_answer: list[bool] = []

    def second(body: dict[str, Any], respond: Any) -> None:
        commands.rollback_command(deps, body, respond)
        switched_before_first_answer.append(said["first"].text == "")

    first = partial(commands.rollback_command, deps)
    deps.pool.submit(run_guarded, first, {"text": "first", "user_id": "U1"}, said["first"])
    deps.pool.submit(run_guarded, second, {"text": "second", "user_id": "U1"}, said["second"])
    for replies in said.values():
        wait_for_answer(replies)
    assert switched_before_first_answer == [True]
    for name in said:
        assert f"Rolled back {name} v2.0.0 → v1.9.0" in said[name].text
        assert "as soon as Slack takes the message" in said[name].text


def test_a_person_not_on_call_changes_nothing(deps, engine) -> None:
    make_prompt(engine)
    with pytest.raises(NotAuthorized):
        commands.rollback_command(deps, {"text": "customer-support", "user_id": "U9"}, Replies())
    said = Replies()
    run_guarded(
        lambda body, respond: commands.rollback_command(deps, body, respond),
        {"text": "customer-support", "user_id": "U9"},
        said,
    )
    assert "only on-call engineers" in said.text and said.said[0]["response_type"] == "ephemeral"
    with read_session(engine) as session:
        assert (
            registry.prompt_detail(session=session, name="customer-support").active_version
            == "v2.0.0"
        )
    assert queued(engine) == []


def test_help_and_bad_input_are_answered_without_a_change(deps, engine) -> None:
    make_prompt(engine)
    said = Replies()
    commands.rollback_command(deps, {"text": "help", "user_id": "U9"}, said)
    assert "/rollback" in said.text
    said = Replies()
    run_guarded(
        lambda body, respond: commands.rollback_command(deps, body, respond),
        {"text": "no-such-prompt", "user_id": "U1"},
        said,
    )
    assert said.text.startswith(":warning:") and "no-such-prompt" in said.text
    assert queued(engine) == []


def test_the_rollback_dialog_closes_the_incident_and_updates_its_card(deps, engine) -> None:
    make_prompt(engine)
    now = utcnow()
    with write_session(engine) as session:
        version = session.exec(select(PromptVersion).where(PromptVersion.label == "v2.0.0")).one()
        incident = Incident(
            prompt_id=version.prompt_id,
            version_id=version.id,
            prompt="customer-support",
            version="v2.0.0",
            severity=Severity.HIGH,
            action=Action.PAGE,
            status=IncidentStatus.OPEN,
            summary="error_rate_high",
            opened_at=now,
            updated_at=now,
            last_breach_at=now,
        )
        session.add(incident)
        session.flush()
        incident_id = incident.id
    body = {
        "user": {"id": "U1"},
        "view": {
            "private_metadata": json.dumps({"incident": incident_id}),
            "state": {"values": target_choice("v1.9.0") | reason("bad refunds")},
        },
    }
    acks: list[dict[str, Any]] = []
    actions.on_rollback_submitted(deps, lambda **kw: acks.append(kw), body)
    assert acks == [{}]  # the dialog closes
    with read_session(engine) as session:
        assert get_incident(session, incident_id).status == IncidentStatus.ROLLED_BACK
        assert (
            registry.prompt_detail(session=session, name="customer-support").active_version
            == "v1.9.0"
        )
        assert (
            "bad refunds"
            in registry.history(session=session, name="customer-support", limit=1)[0].reason
        )
    texts = [json.dumps(p.payload) for p in queued(engine)]
    assert any("Rolled back `v2.0.0`" in t and "<@U1>" in t for t in texts)
    # The same dialog sent again (a retry, a colleague's): refused in the dialog, naming who.
    actions.on_rollback_submitted(deps, lambda **kw: acks.append(kw), body)
    assert acks[1]["response_action"] == "errors"
    assert "<@U1>" in acks[1]["errors"]["target"] and "None" not in acks[1]["errors"]["target"]
    with read_session(engine) as session:
        assert len(registry.history(session=session, name="customer-support", limit=50)) == 4


def reason(text: str) -> dict[str, Any]:
    return {"reason": {"reason_text": {"type": "plain_text_input", "value": text}}}


def test_every_listener_dispatched_on_the_event_loop_only_acks(deps) -> None:
    """Commands and clicks are dispatched on the HTTP server's event loop (runs_inline): each
    listener that can match one must be `deferred` (ack, then queue the work), or a click would
    stall every other request while it talks to the database or Slack."""
    from slack_bolt import App, BoltRequest, BoltResponse
    from slack_bolt.authorization import AuthorizeResult

    from bot.slack import blocks
    from bot.slack.listener import runs_inline

    app = App(
        client=WebClient(base_url="http://127.0.0.1:9/", timeout=1),
        authorize=lambda **_: AuthorizeResult(enterprise_id=None, team_id="T1", bot_token="x"),
        request_verification_enabled=False,
        process_before_response=True,
    )
    commands.register(app, deps)
    actions.register(app, deps)
    user = {"id": "U1"}
    bodies: list[dict[str, Any]] = [
        {"command": name, "text": "cs", "user_id": "U1", "team_id": "T1"}
        for name in ("/rollback", "/deploy")
    ]
    bodies += [
        {"type": "block_actions", "user": user, "team": {"id": "T1"}, "actions": [{"action_id": a}]}
        for a in (
            blocks.ROLLBACK_ACTION,
            blocks.GRADUAL_ACTION,
            blocks.FINISH_ROLLOUT_ACTION,
            blocks.ABORT_ROLLOUT_ACTION,
            blocks.ACKNOWLEDGE_ACTION,
            blocks.INVESTIGATE_ACTION,
        )
    ]
    submit = {
        "type": "view_submission",
        "user": user,
        "team": {"id": "T1"},
        "view": {"type": "modal", "callback_id": blocks.ROLLBACK_MODAL},
    }
    inline_matched, threaded = 0, []
    for body in [*bodies, submit]:
        request = BoltRequest(body=json.dumps(body), headers={"content-type": "application/json"})
        for listener in app._listeners:
            if not listener.matches(req=request, resp=BoltResponse(status=404)):
                continue
            if runs_inline(body):
                inline_matched += 1
                assert getattr(listener.ack_function, "deferred", False), (body, listener)
            else:
                threaded.append(listener)
    assert inline_matched == len(bodies)  # every command and button has its deferred listener
    assert len(threaded) == 1  # the dialog, whose listener rolls back before it answers
    assert not runs_inline(submit)
