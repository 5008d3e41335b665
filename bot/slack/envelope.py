"""The shape of what Slack posts, checked before Bolt sees it.

A request that is correctly signed but shaped unlike anything Slack sends (a button payload
whose `actions` is not a list of actions, a slash command without a user) is refused with 400
here, rather than tripping Bolt's request parsing. Only the parts Bolt and the listeners read
are checked; everything else Slack adds passes through untouched.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Identified(_Part):
    id: str


class _Action(_Part):
    action_id: str
    value: str | None = None
    block_id: str | None = None


class _Interaction(_Part):
    """An interactivity payload (`payload=<json>`): every kind comes from a user."""

    type: str
    user: _Identified
    team: _Identified | None = None  # null for org-wide installs
    channel: _Identified | None = None
    enterprise: _Identified | None = None
    container: dict[str, Any] | None = None
    response_url: str | None = None


class _BlockActions(_Interaction):
    """A button click: at least one action."""

    actions: list[_Action] = Field(min_length=1)


class _View(_Part):
    type: str
    callback_id: str = ""


class _ViewInteraction(_Interaction):
    """A modal submitted or closed: the view it came from."""

    view: _View


class _SlashCommand(_Part):
    command: str
    user_id: str
    text: str = ""
    team_id: str | None = None
    channel_id: str | None = None
    response_url: str | None = None


def problem(body: object) -> str | None:
    """What is wrong with a parsed Slack request body, or None when it has Slack's shape."""
    if not isinstance(body, dict):
        return "the body is not an object"
    try:
        if "command" in body:
            _SlashCommand.model_validate(body)
        elif body.get("type") == "block_actions":
            _BlockActions.model_validate(body)
        elif body.get("type") in ("view_submission", "view_closed"):
            _ViewInteraction.model_validate(body)
        elif "type" in body and "event" not in body and "challenge" not in body:
            _Interaction.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {first['msg']}"
    return None
