"""The shape check on what Slack posts: Slack's own shapes pass, anything else is named."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from bot.slack.envelope import problem
from tests.slack_kit import block_actions_body, slash_command_body


def _click() -> dict:
    raw = block_actions_body("rollback", '{"incident": 1}', "U1", "1.2", "C1")
    return json.loads(parse_qs(raw.decode())["payload"][0])


def _command() -> dict:
    return {k: v[0] for k, v in parse_qs(slash_command_body("/rollback", "x").decode()).items()}


def test_what_slack_sends_passes() -> None:
    assert problem(_click()) is None
    assert problem(_command()) is None
    assert problem({"type": "url_verification", "challenge": "c"}) is None


def test_wrong_shapes_are_named() -> None:
    assert problem([1, 2]) == "the body is not an object"
    click = _click() | {"actions": 3}
    assert problem(click) == "actions: Input should be a valid list"
    assert problem(_click() | {"actions": []}) is not None
    assert problem(_click() | {"user": {"name": "no id"}}) == "user.id: Field required"
    assert problem(_click() | {"actions": None}) == "actions: Input should be a valid list"
    assert problem(_click() | {"user": None}) is not None
    no_user = {k: v for k, v in _command().items() if k != "user_id"}
    assert problem(no_user) == "user_id: Field required"


def test_a_modal_payload_needs_its_view() -> None:
    submitted = {"type": "view_submission", "user": {"id": "U1"}}
    assert problem(submitted | {"view": {"id": "V1", "type": "modal", "callback_id": "x"}}) is None
    assert problem(submitted) == "view: Field required"
    assert problem(submitted | {"view": {"callback_id": "x"}}) == "view.type: Field required"
