"""`/rollback`: ack, parse, call the registry, answer the user; announce rollbacks."""

from __future__ import annotations

from typing import Any

from slack_bolt import App, Respond
from sqlmodel import Session, col, select

from bot import registry
from bot.db import read_session, write_session
from bot.incidents import lifecycle
from bot.models import (
    ACTIVE_INCIDENT,
    AuditEntry,
    ChangeResult,
    Incident,
    RolloutKind,
    Trigger,
    utcnow,
)
from bot.registry.changes import Actor
from bot.rollouts import stages as rollouts
from bot.slack import cards
from bot.slack.blocks import HELP, history_blocks, status_blocks, to_dicts
from bot.slack.deps import SlackDeps
from bot.slack.listener import deferred, run_guarded
from bot.slack.notifier import SlackNotifier
from bot.slack.parse import parse, parse_deploy

ANNOUNCE_WAIT = 2.0  # seconds a command's answer waits to say its announcement is posted


def rollback_command(deps: SlackDeps, command: dict[str, Any], respond: Respond) -> None:
    request = parse(command.get("text", ""))
    if request.verb == "help":
        respond(text=HELP, response_type="ephemeral")
        return
    assert request.prompt is not None
    if request.verb == "status":
        respond(**_status(deps, request.prompt), response_type="ephemeral")
        return
    if request.verb == "history":
        with read_session(deps.engine) as session:
            entries = registry.history(session=session, name=request.prompt, limit=10)
        blocks = to_dicts(history_blocks(request.prompt, entries))
        respond(text=f"{request.prompt} history", blocks=blocks, response_type="ephemeral")
        return
    user = command["user_id"]
    deps.authorize(user, request.prompt)
    if request.gradual:
        respond(
            text=start_rollout(
                deps,
                RolloutKind.GRADUAL_ROLLBACK,
                request.prompt,
                request.version,
                user,
                request.reason,
            ),
            response_type="ephemeral",
        )
        return
    with write_session(deps.engine) as session:
        result = lifecycle.rollback(
            session,
            prompt=request.prompt,
            target=request.version,
            actor=Actor(operator=user, trigger=Trigger.SLACK),
            now=utcnow(),
            notifier=SlackNotifier(deps),
            reason=request.reason or "via /rollback",
            force=request.force,
            dedup_window=deps.dedup_window,
        )
        key = _announce(session, deps, result)
    _answer_when_announced(
        deps,
        key,
        result.prompt,
        f"Rolled back {result.prompt} {result.from_version} → {result.to_version}.",
        respond,
    )


def deploy_command(deps: SlackDeps, command: dict[str, Any], respond: Respond) -> None:
    request = parse_deploy(command.get("text", ""))
    assert request.prompt is not None
    user = command["user_id"]
    deps.authorize(user, request.prompt)
    if request.canary:
        text = start_rollout(
            deps, RolloutKind.CANARY, request.prompt, request.version, user, request.reason
        )
        respond(text=text, response_type="ephemeral")
        return
    with write_session(deps.engine) as session:
        result = lifecycle.deploy(
            session,
            prompt=request.prompt,
            version=request.version or "",
            actor=Actor(operator=user, trigger=Trigger.SLACK),
            now=utcnow(),
            notifier=SlackNotifier(deps),
            reason=request.reason or "via /deploy",
            force=request.force,
        )
        key = _announce(session, deps, result, verification=False)
    done = f"Deployed {result.prompt} {result.from_version or '-'} → {result.to_version}."
    _answer_when_announced(deps, key, result.prompt, done, respond)


def register(app: App, deps: SlackDeps) -> None:
    """Attach the /rollback listener."""

    app.command("/rollback")(deferred(rollback_command, deps))
    app.command("/deploy")(deferred(deploy_command, deps))


def start_rollout(
    deps: SlackDeps, kind: RolloutKind, prompt: str, version: str | None, user: str, reason: str
) -> str:
    """Start a staged move, announce it with its buttons, and say what will happen."""
    stage = deps.policies.for_prompt(prompt).settings.rollout_stage(kind.value)
    with write_session(deps.engine) as session:
        rollout = lifecycle.start_rollout(
            session,
            prompt=prompt,
            kind=kind,
            version=version,
            actor=Actor(operator=user, trigger=Trigger.SLACK),
            stage_seconds=stage.total_seconds(),
            notifier=SlackNotifier(deps),
            now=utcnow(),
            reason=reason,
        )
        cards.post_or_update_rollout(session, rollout, deps.channel(prompt), "started")
    deps.worker.wake()
    minutes = int(stage.total_seconds() // 60)
    return (
        f"Started the {rollouts.describe(rollout)}; {minutes} min a stage. "
        f"Follow it (Finish now / Abort) in {deps.channel(prompt)}."
    )


def _status(deps: SlackDeps, prompt: str) -> dict[str, Any]:
    with read_session(deps.engine) as session:
        detail = registry.prompt_detail(session=session, name=prompt)
        incident = session.exec(
            select(Incident)
            .where(Incident.prompt == prompt, col(Incident.status).in_(ACTIVE_INCIDENT))
            .order_by(col(Incident.id).desc())
        ).first()
    line = (
        f"Open incident #{incident.id}: {incident.severity.value} on {incident.version} "
        f"({incident.status.value}) — {incident.summary[:200]}"
        if incident
        else None
    )
    return {"text": f"{prompt} status", "blocks": to_dicts(status_blocks(detail, line))}


def _announce(
    session: Session, deps: SlackDeps, result: ChangeResult, *, verification: bool = True
) -> str:
    """Queue the change's announcement in the prompt's channel; returns its outbox key."""
    entry = session.get(AuditEntry, result.audit_id)
    assert entry is not None  # written by the change in this same transaction
    key = cards.announce_change(session, deps.channel(result.prompt), entry, result.prompt)
    if verification:
        text = f"Verification of {result.to_version} will report in this thread."
        cards.reply_under(session, key, text, "start")
    return key


def _answer_when_announced(
    deps: SlackDeps, key: str, prompt: str, done: str, respond: Respond
) -> None:
    """Answer `done` and whether the announcement `key` is in the channel yet: as soon as the
    outbox posts it, or after ANNOUNCE_WAIT (never claiming a post Slack has not taken). No
    thread waits meanwhile, so a burst of commands does not hold up other work."""
    channel = deps.channel(prompt)

    def then(sent: bool) -> None:
        if sent:
            text = f"{done} Announced in {channel}."
        else:
            text = f"{done} It will be announced in {channel} as soon as Slack takes the message."
        deps.pool.submit(run_guarded, lambda _b, said: _say(said, text), {}, respond)

    deps.worker.when_sent(key, ANNOUNCE_WAIT, then)
    deps.worker.wake()


def _say(respond: Respond, text: str) -> None:
    respond(text=text, response_type="ephemeral")
