"""Incident cards and messages from the database's state, and their outbox keys."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlmodel import Session, col, select

from bot.errors import BotError
from bot.incidents.actions import rollback_target
from bot.models import (
    ACTIVE_INCIDENT,
    AuditEntry,
    ChangeKind,
    Incident,
    IncidentStatus,
    Rollout,
    RolloutKind,
    SlackOutbox,
    Trigger,
)
from bot.people import mention
from bot.rollouts.stages import describe
from bot.slack import outbox
from bot.slack.blocks import (
    IncidentCard,
    RolloutCard,
    card_text,
    in_words,
    incident_card,
    page_blocks,
    rollout_card,
    text_blocks,
    to_dicts,
)

CHART_BEFORE = timedelta(hours=1)


def card_key(incident_id: int) -> str:
    """The outbox key of an incident's card (threads and updates hang under it)."""
    return f"incident:{incident_id}:card"


def build_card(session: Session, incident: Incident, paging: Sequence[str] = ()) -> IncidentCard:
    """The card for the incident as it stands now."""
    decision = incident.decision or {}
    state = None
    if incident.status == IncidentStatus.ROLLED_BACK:
        entry = session.get(AuditEntry, incident.rollback_audit_id or -1)
        state = (
            f"Rolled back {entry.from_version} → {entry.to_version} by "
            f"{mention(entry.operator, entry.trigger)}"
            + (" (automatic)" if entry.trigger == Trigger.AUTOMATIC else "")
            if entry
            else "Rolled back"
        )
    elif incident.status == IncidentStatus.RESOLVED:
        state = f"Resolved: {incident.summary.rsplit('; ', 1)[-1]}"
    target = None
    if incident.status in ACTIVE_INCIDENT:
        try:
            target = rollback_target(session, incident.prompt)
        except BotError:
            target = None
    return IncidentCard(
        incident_id=incident.id or 0,
        prompt=incident.prompt,
        version=incident.version,
        severity=incident.severity.value,
        status=incident.status.value,
        fired=decision.get("fired", []),
        figures=decision.get("figures", {}),
        target=target,
        state=state,
        investigator=incident.investigator,
        responders=tuple(incident.responders),
        paged=tuple(dict.fromkeys([*paged_users(session, incident.id or 0), *paging])),
    )


def paged_users(session: Session, incident_id: int) -> tuple[str, ...]:
    """Who was sent a DM about the incident (queued, sent or still retrying), in order."""
    rows = session.exec(
        select(SlackOutbox)
        .where(SlackOutbox.incident_id == incident_id, SlackOutbox.method == "dm")
        .order_by(col(SlackOutbox.id))
    )
    return tuple(dict.fromkeys(str(row.payload.get("user")) for row in rows))


def post_or_update_card(
    session: Session, incident: Incident, channel: str, reason: str, paging: Sequence[str] = ()
) -> None:
    """Queue the card's first post, or an in-place update of it (buttons gone once acted on);
    `paging`: people about to be sent a DM about it."""
    card = build_card(session, incident, paging)
    key = card_key(incident.id or 0)
    message = {"text": card_text(card), "blocks": to_dicts(incident_card(card))}
    first = outbox.enqueue(
        session,
        key=key,
        method="chat.postMessage",
        payload={"channel": channel, **message},
        incident_id=incident.id,
    )
    if not first:
        stamp = incident.updated_at.timestamp()
        outbox.enqueue(
            session,
            key=f"{key}:update:{reason}:{stamp}",
            method="chat.update",
            payload=message,
            parent_key=key,
            incident_id=incident.id,
        )


def thread_reply(session: Session, incident: Incident, text: str, reason: str) -> None:
    """Queue a reply in the card's thread (where verification reports)."""
    stamp = incident.updated_at.timestamp()
    reply_under(session, card_key(incident.id or 0), text, f"{reason}:{stamp}")


def page(
    session: Session,
    incident: Incident,
    users: frozenset[str],
    *,
    severity: str,
    headline: str,
    channel: str,
    reason: str,
) -> None:
    """Queue a DM to each on-call user: the severity, the rules in plain words, a link to the
    card (its permalink, filled in when the DM is sent) and the card's buttons."""
    card = build_card(session, incident)
    blocks = to_dicts(page_blocks(card, severity, headline, channel))
    rules = "; ".join(in_words(f) for f in card.fired)
    text = f"{severity.upper()}: {incident.prompt} {incident.version}: {headline} {rules}"
    text = text.strip()[:3000]  # the notification's words
    for user in sorted(users):
        outbox.enqueue(
            session,
            key=f"{card_key(incident.id or 0)}:dm:{user}:{reason}",
            method="dm",
            payload={
                "user": user,
                "text": text,
                "blocks": blocks,
                "_link_to": card_key(incident.id or 0),
            },
            incident_id=incident.id,
        )


def announce_change(session: Session, channel: str, entry: AuditEntry, prompt: str) -> str:
    """Queue the channel announcement of a rollback or deploy (once); returns its outbox key."""
    key = f"{entry.kind.value}:{entry.id}"
    icon, verb = (
        (":rewind:", "rolled back")
        if entry.kind == ChangeKind.ROLLBACK
        else (":rocket:", "deployed")
    )
    text = (
        f"{icon} {mention(entry.operator, entry.trigger)} {verb} *{prompt}* "
        f"`{entry.from_version or '-'}` → `{entry.to_version}`"
        + (f": {entry.reason}" if entry.reason else "")
    )
    outbox.enqueue(
        session,
        key=key,
        method="chat.postMessage",
        payload={"channel": channel, "text": text, "blocks": to_dicts(text_blocks(text))},
    )
    return key


def chart_under(
    session: Session, incident: Incident, limits: dict[str, float], reason: str, what: str
) -> None:
    """Queue a chart of the incident's version (and the version restored) around the change,
    uploaded into the card's thread (files.getUploadURLExternal, the upload,
    files.completeUploadExternal); drawn when it is sent, from the figures stored then."""
    since = incident.opened_at - CHART_BEFORE
    title = f"{incident.prompt} {incident.version}, {what}"
    outbox.enqueue(
        session,
        key=f"{card_key(incident.id or 0)}:chart:{reason}",
        method=outbox.CHART_UPLOAD,
        payload={
            "prompt_id": incident.prompt_id,
            "since": since.isoformat(),
            "title": title,
            "limits": limits,
            "filename": f"{incident.prompt}-{incident.version}-incident-{incident.id}.png",
            "alt_txt": f"Chart of error rate, quality and p99 latency per version of "
            f"{incident.prompt} from {since:%H:%M} UTC: {what}.",
        },
        parent_key=card_key(incident.id or 0),
        incident_id=incident.id,
    )


def reply_under(session: Session, parent_key: str, text: str, reason: str) -> None:
    """Queue a thread reply under any queued message, once per `reason`."""
    outbox.enqueue(
        session,
        key=f"{parent_key}:thread:{reason}",
        method="chat.postMessage",
        payload={"text": text, "blocks": to_dicts(text_blocks(text))},
        parent_key=parent_key,
    )


def rollout_key(rollout_id: int) -> str:
    """The outbox key of a rollout's announcement (its stages thread under it)."""
    return f"rollout:{rollout_id}"


def post_or_update_rollout(session: Session, rollout: Rollout, channel: str, reason: str) -> str:
    """Queue the rollout's announcement, or an update of it; returns its key."""
    kind = "Gradual rollback" if rollout.kind == RolloutKind.GRADUAL_ROLLBACK else "Canary"
    title = (
        f"{kind} of {rollout.prompt} {rollout.from_version} → {rollout.to_version} "
        f"(started by {mention(rollout.operator, rollout.trigger)})"
    )
    card = RolloutCard(
        rollout_id=rollout.id or 0,
        title=title,
        progress=describe(rollout).split(", ", 1)[-1],
        status=rollout.status.value,
        note=rollout.note,
        **_confirm_texts(rollout),
    )
    message = {"text": f"{title}: {card.progress}", "blocks": to_dicts(rollout_card(card))}
    key = rollout_key(rollout.id or 0)
    first = outbox.enqueue(
        session, key=key, method="chat.postMessage", payload={"channel": channel, **message}
    )
    if not first:
        outbox.enqueue(
            session,
            key=f"{key}:update:{reason}",
            method="chat.update",
            payload=message,
            parent_key=key,
        )
    return key


def _confirm_texts(rollout: Rollout) -> dict[str, str]:
    """What Finish now and Abort will do to the traffic, said before anyone clicks."""
    left = 100 - rollout.stages[rollout.stage]
    if rollout.kind == RolloutKind.GRADUAL_ROLLBACK:
        return {
            "finish_text": f"Move all of {rollout.prompt}'s traffic to {rollout.to_version} now? "
            f"It ends as a rollback of {rollout.from_version}, verified like any other.",
            "abort_text": f"Stop here? {rollout.from_version} keeps {left}% of the traffic until "
            "someone changes the split (or rolls back).",
        }
    return {
        "finish_text": f"Promote {rollout.to_version} to 100% of {rollout.prompt}'s traffic now?",
        "abort_text": f"Send all of {rollout.prompt}'s traffic back to {rollout.from_version}? "
        "It is recorded as a rollback, verified like any other.",
    }
