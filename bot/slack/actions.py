"""The buttons on cards and DMs (Rollback → dialog, Acknowledge, Gradual, Finish/Abort) and
the rollback dialog. Ack first; only on-call may act."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk.errors import SlackApiError, SlackClientError
from sqlmodel import Session

from bot.db import read_session, write_session
from bot.errors import BotError, InvalidRequest
from bot.faults import failpoint
from bot.incidents import lifecycle
from bot.incidents.actions import acknowledge, check_can_roll_back, rollback_incident
from bot.incidents.records import get_incident
from bot.models import Incident, RolloutKind, Trigger, utcnow
from bot.registry.changes import Actor
from bot.registry.lookup import get_prompt, rollback_choices
from bot.rollouts import stages as rollouts
from bot.slack import cards
from bot.slack.blocks import (
    ABORT_ROLLOUT_ACTION,
    ACKNOWLEDGE_ACTION,
    FINISH_ROLLOUT_ACTION,
    GRADUAL_ACTION,
    INVESTIGATE_ACTION,
    REASON_BLOCK,
    REASON_INPUT,
    ROLLBACK_ACTION,
    ROLLBACK_MODAL,
    TARGET_BLOCK,
    TARGET_INPUT,
    rollback_modal,
)
from bot.slack.commands import start_rollout
from bot.slack.deps import SlackDeps
from bot.slack.listener import answer, deferred
from bot.slack.notifier import SlackNotifier


def _incident_of(body: dict[str, Any]) -> tuple[int, str | None]:
    try:
        value = json.loads(body["actions"][0]["value"])
        return int(value["incident"]), value.get("target")
    except (KeyError, IndexError, TypeError, ValueError):
        raise InvalidRequest("this button is malformed; use /rollback instead") from None


def _authorized(
    deps: SlackDeps, body: dict[str, Any], check: Callable[[Session, Incident], None] | None = None
) -> tuple[str, int, str | None, str]:
    """The clicking user, incident, target and prompt; refuses users not on call for it, and
    clicks that `check` refuses (read-only: a repeated click takes no write lock)."""
    user = body["user"]["id"]
    incident_id, target = _incident_of(body)
    with read_session(deps.engine) as session:
        prompt = get_incident(session, incident_id).prompt
    # Checked outside any write transaction: it may ask Slack for a user group's members.
    deps.authorize(user, prompt)
    if check is not None:
        with read_session(deps.engine) as session:
            check(session, get_incident(session, incident_id))
    return user, incident_id, target, prompt


def on_rollback(deps: SlackDeps, body: dict[str, Any], respond: Respond) -> None:
    """Rollback on a card or DM: open the rollback dialog (target and reason) with the click's
    trigger_id; the rollback happens when it is sent (on_rollback_submitted)."""
    user, incident_id, target, prompt = _authorized(deps, body, check_can_roll_back)
    with read_session(deps.engine) as session:
        incident = get_incident(session, incident_id)
        choices = rollback_choices(session, get_prompt(session, prompt), [incident.version])
    if target is not None and target not in choices:
        choices.insert(0, target)
    if not choices:
        raise InvalidRequest(
            f"{prompt} has no earlier version that is not marked bad; "
            f"roll back with `/rollback {prompt} VERSION --force`"
        )
    modal = rollback_modal(
        incident_id=incident_id,
        prompt=prompt,
        version=incident.version,
        choices=choices,
        default=target,
    )
    try:
        deps.client.views_open(trigger_id=str(body.get("trigger_id", "")), view=modal)
    except SlackApiError as exc:
        if exc.response.status_code < 500 and exc.response.status_code != 429:
            raise InvalidRequest(  # e.g. the click is older than Slack's 3 s: click again
                f"the rollback dialog did not open (Slack: {exc.response.get('error')}); "
                "nothing was changed. Click Rollback again, or roll back with "
                f"`/rollback {prompt} {target or 'VERSION'}`"
            ) from None
        degraded = f"Slack answered {exc.response.status_code}"
    except (SlackClientError, OSError) as exc:
        degraded = f"Slack did not answer: {exc.__class__.__name__}"
    else:
        return
    # Slack's side is failing but this click came through: the person asked to roll back to
    # the version the button names, and an outage must not stop that.
    why = f"the rollback dialog could not open ({degraded}); rolled back from the card"
    roll_back_incident(deps, user, incident_id, target, why)


def on_rollback_submitted(deps: SlackDeps, ack: Ack, body: dict[str, Any]) -> None:
    """The rollback dialog was sent: roll back now, within Slack's 3 s, so a refusal can be
    shown in the dialog itself (the card and its thread follow through the outbox)."""
    view = body.get("view") or {}
    values = (view.get("state") or {}).get("values") or {}
    try:
        incident_id = int(json.loads(view.get("private_metadata") or "{}")["incident"])
        chosen = values[TARGET_BLOCK][TARGET_INPUT].get("selected_option") or {}
        reason = str(values.get(REASON_BLOCK, {}).get(REASON_INPUT, {}).get("value") or "")
    except (KeyError, TypeError, ValueError, AttributeError):
        ack(response_action="errors", errors={TARGET_BLOCK: "This dialog is malformed; close it."})
        return
    user = str((body.get("user") or {}).get("id", ""))
    try:
        roll_back_incident(deps, user, incident_id, chosen.get("value"), reason.strip())
    except BotError as exc:
        ack(response_action="errors", errors={TARGET_BLOCK: exc.slack_text[:150]})
        return
    except Exception as exc:  # logged with an id, told in the dialog
        answer(exc, None)
        ack(
            response_action="errors",
            errors={TARGET_BLOCK: "Something went wrong; nothing more was done. See the log."},
        )
        return
    ack()


def roll_back_incident(
    deps: SlackDeps, user: str, incident_id: int, target: str | None, reason: str
) -> None:
    """The rollback a person asked for in Slack: authorized, one transaction, card updated."""
    with read_session(deps.engine) as session:
        prompt = get_incident(session, incident_id).prompt
    deps.authorize(user, prompt)
    with write_session(deps.engine) as session:
        incident, result = rollback_incident(
            session=session,
            incident_id=incident_id,
            actor=Actor(operator=user, trigger=Trigger.SLACK),
            now=utcnow(),
            target=target,
            dedup_window=deps.dedup_window,
            reason=reason,
        )
        lifecycle.after(session, result, SlackNotifier(deps))  # the prompt's other ones
        cards.post_or_update_card(session, incident, deps.channel(incident.prompt), "rolled_back")
        cards.thread_reply(
            session,
            incident,
            f"Rolled back `{result.from_version}` → `{result.to_version}` by <@{user}>"
            + (f": {reason}" if reason else "")
            + ". Verification of the restored version reports in this thread.",
            "rolled_back",
        )
        failpoint("rollback.before_commit")
    failpoint("rollback.committed")
    deps.worker.wake()


def on_acknowledge(deps: SlackDeps, body: dict[str, Any], respond: Respond) -> None:
    """Acknowledge (on the card or in the on-call DM; old cards' Investigate too): the person
    joins the incident, re-paging stops, the card lists who is on it."""
    user, incident_id, _, prompt = _authorized(deps, body)
    quiet = deps.quiet_for(prompt)
    minutes = int(quiet.total_seconds() // 60)
    with write_session(deps.engine) as session:
        incident, joined = acknowledge(
            session=session, incident_id=incident_id, user=user, quiet=quiet, now=utcnow()
        )
        if joined:
            first = incident.responders == [user]
            cards.post_or_update_card(
                session, incident, deps.channel(incident.prompt), f"acknowledged:{user}"
            )
            cards.reply_under(
                session,
                cards.card_key(incident.id or 0),
                f"<@{user}> acknowledged"
                + (
                    f" and is on it. On-call is not paged again for {minutes} min; "
                    "Rollback stays on the card."
                    if first
                    else " and joined the response."
                ),
                f"acknowledged:{user}",
            )
    if not joined:
        respond(
            text=f"You already acknowledged incident #{incident_id}.",
            response_type="ephemeral",
            replace_original=False,
        )
    deps.worker.wake()


def on_gradual(deps: SlackDeps, body: dict[str, Any], respond: Respond) -> None:
    user, incident_id, target, prompt = _authorized(deps, body)
    text = start_rollout(
        deps,
        RolloutKind.GRADUAL_ROLLBACK,
        prompt,
        target,
        user,
        f"from incident #{incident_id}",
    )
    respond(text=text, response_type="ephemeral", replace_original=False)


def on_rollout(deps: SlackDeps, body: dict[str, Any], respond: Respond) -> None:
    user = body["user"]["id"]
    try:
        rollout_id = int(json.loads(body["actions"][0]["value"])["rollout"])
        finishing = body["actions"][0]["action_id"] == FINISH_ROLLOUT_ACTION
    except (KeyError, IndexError, TypeError, ValueError):
        raise InvalidRequest("this button is malformed") from None
    with read_session(deps.engine) as session:
        prompt = rollouts.get_rollout(session, rollout_id).prompt
    deps.authorize(user, prompt)
    actor = Actor(operator=user, trigger=Trigger.SLACK)
    with write_session(deps.engine) as session:
        rollout = lifecycle.end_rollout(
            session,
            rollout_id=rollout_id,
            finishing=finishing,
            actor=actor,
            notifier=SlackNotifier(deps),
            now=utcnow(),
        )
        key = cards.post_or_update_rollout(
            session, rollout, deps.channel(prompt), rollout.status.value
        )
        verb = "finished" if finishing else "aborted"
        cards.reply_under(
            session,
            key,
            f"<@{user}> {verb} it: {rollouts.describe(rollout)}.",
            f"{verb}:{user}",
        )
    deps.worker.wake()


def register(app: App, deps: SlackDeps) -> None:
    """Attach the button listeners."""

    app.action(ROLLBACK_ACTION)(deferred(on_rollback, deps))
    app.view(ROLLBACK_MODAL)(lambda ack, body: on_rollback_submitted(deps, ack, body))
    app.action(GRADUAL_ACTION)(deferred(on_gradual, deps))
    app.action(FINISH_ROLLOUT_ACTION)(deferred(on_rollout, deps))
    app.action(ABORT_ROLLOUT_ACTION)(deferred(on_rollout, deps))
    app.action(ACKNOWLEDGE_ACTION)(deferred(on_acknowledge, deps))
    app.action(INVESTIGATE_ACTION)(deferred(on_acknowledge, deps))  # cards posted before 0014
