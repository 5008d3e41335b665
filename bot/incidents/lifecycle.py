"""What follows a routing change, whoever made it (API, CLI, `/rollback`, `/deploy`, a button,
the checker, a rollout): one flow, in the change's own transaction, so every place a person
looks tells the same story.

- The prompt's open incidents whose version no longer serves are closed: "rolled back" and
  linked to the rollback (the card, the post-mortem and a late click all name who did it), or
  "resolved" when a deploy or split replaced the version. Their card loses its buttons and its
  thread says who did what, through what.
- Verifications of earlier rollbacks of the prompt that are still running are cancelled
  silently: the newer change has its own, and the old version no longer serves.
- A running canary or gradual rollback that did not make the change ends as superseded (the
  person's change stands; the rollout never overwrites it) and its card says by whom.

`rollback`, `deploy` and `split` here are what the surfaces call: the registry change, then
this flow. A rollback without a target during a canary goes back to the canary's stable
version (during a gradual rollback, on to the good version).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import bindparam
from sqlmodel import Session, col, select, update

from bot import people, registry
from bot.incidents import records as inc
from bot.models import (
    ACTIVE_INCIDENT,
    Action,
    AuditEntry,
    ChangeKind,
    ChangeResult,
    Incident,
    IncidentStatus,
    Prompt,
    Rollout,
    RolloutKind,
    Severity,
    Verification,
    VerificationStatus,
)
from bot.models.registry import UTCDateTime
from bot.notify import Notice, NoticeKind, Notifier, deliver
from bot.people import plain
from bot.registry.changes import Actor
from bot.registry.lookup import get_prompt, last_routing_change
from bot.rollouts import stages as rollouts

log = logging.getLogger(__name__)


def rollback(
    session: Session,
    *,
    prompt: str,
    target: str | None,
    actor: Actor,
    notifier: Notifier,
    now: datetime,
    reason: str = "",
    force: bool = False,
    expected_version: str | None = None,
    dedup_window: timedelta = timedelta(minutes=5),
) -> ChangeResult:
    """Roll `prompt` back (registry.rollback), then bring everything in line."""
    if target is None and expected_version is None:
        target, expected_version = rollouts.rollback_defaults(session, prompt)
    result = registry.rollback(
        session=session,
        prompt=prompt,
        target=target,
        actor=actor,
        reason=reason,
        force=force,
        expected_version=expected_version,
        dedup_window=dedup_window,
        now=now,
    )
    after(session, result, notifier)
    return result


def deploy(
    session: Session,
    *,
    prompt: str,
    version: str,
    actor: Actor,
    notifier: Notifier,
    now: datetime,
    reason: str = "",
    force: bool = False,
) -> ChangeResult:
    """Deploy `version` (registry.deploy), then bring everything in line."""
    result = registry.deploy(
        session=session,
        prompt=prompt,
        version=version,
        actor=actor,
        now=now,
        reason=reason,
        force=force,
    )
    after(session, result, notifier)
    return result


def split(
    session: Session,
    *,
    prompt: str,
    shares: dict[str, int],
    actor: Actor,
    notifier: Notifier,
    now: datetime,
    reason: str = "",
    force: bool = False,
) -> ChangeResult:
    """Set a split (registry.set_split), then bring everything in line."""
    result = registry.set_split(
        session=session,
        prompt=prompt,
        split=shares,
        actor=actor,
        now=now,
        reason=reason,
        force=force,
    )
    after(session, result, notifier)
    return result


def end_rollout(
    session: Session,
    *,
    rollout_id: int,
    finishing: bool,
    actor: Actor,
    notifier: Notifier,
    now: datetime,
) -> Rollout:
    """Finish a rollout now (all traffic to its target) or abort it, for any surface, then
    bring the prompt's incidents and cards in line."""
    rollout = rollouts.get_rollout(session, rollout_id)
    end = rollouts.finish if finishing else rollouts.abort
    verb = "finished" if finishing else "aborted"
    end(
        session=session,
        rollout=rollout,
        actor=actor,
        now=now,
        note=f"{verb} {people.by(actor.operator, actor.trigger)}",
    )
    after_latest(session, rollout.prompt, notifier)
    return rollout


def start_rollout(
    session: Session,
    *,
    prompt: str,
    kind: RolloutKind,
    version: str | None,
    actor: Actor,
    stage_seconds: float,
    notifier: Notifier,
    now: datetime,
    reason: str = "",
) -> Rollout:
    """Start a gradual rollback or canary (its first stage at once), bring everything in line,
    and tell the open incident of the version being moved off, in its thread."""
    rollout, change = rollouts.start(
        session=session,
        prompt=prompt,
        kind=kind,
        version=version,
        actor=actor,
        stage_seconds=stage_seconds,
        now=now,
        reason=reason,
    )
    after(session, change, notifier)
    incident = session.exec(
        select(Incident).where(
            Incident.prompt_id == rollout.prompt_id,
            Incident.version == rollout.from_version,
            col(Incident.status).in_(list(ACTIVE_INCIDENT)),
        )
    ).first()
    if incident is not None:
        by = people.by(actor.operator, actor.trigger)
        text = (
            f"{rollouts.describe(rollout).capitalize()} started {by}; "
            f"{int(stage_seconds // 60)} min a stage. Its stages, Finish now and Abort are on "
            "its own post in this channel."
        )
        deliver(
            notifier,
            Notice(
                kind=NoticeKind.ROLLOUT_FOR_INCIDENT,
                severity=incident.severity,
                title=f"{incident.prompt} {incident.version}",
                text=text,
                prompt=incident.prompt,
                version=incident.version,
                incident_id=incident.id,
            ),
            session,
        )
    return rollout


def after(session: Session, result: ChangeResult, notifier: Notifier) -> list[Incident]:
    """`after_change` for a change the registry just made in `session` (every surface calls
    this right after registry.rollback / deploy / set_split, before committing)."""
    entry = session.get(AuditEntry, result.audit_id)
    assert entry is not None
    serving = set(result.split) if result.split else {str(result.to_version)}
    return after_change(
        session, entry=entry, serving=serving, notifier=notifier, now=result.timestamp
    )


def after_latest(session: Session, prompt: str, notifier: Notifier) -> list[Incident]:
    """`after_change` for the prompt's latest routing change (a rollout's own stages, finish
    and abort, whose changes the rollout module makes)."""
    entry = last_routing_change(session, get_prompt(session, prompt))
    if entry is None:
        return []
    detail = registry.prompt_detail(session=session, name=prompt)
    serving = set(detail.split) if detail.split else {str(detail.active_version)}
    return after_change(
        session, entry=entry, serving=serving, notifier=notifier, now=entry.created_at
    )


def after_change(
    session: Session, *, entry: AuditEntry, serving: set[str], notifier: Notifier, now: datetime
) -> list[Incident]:
    """Bring the prompt's incidents and verifications in line with the change `entry`, which
    left `serving` live; returns the incidents it closed."""
    log.info(
        "%s %s: %s → %s %s (audit #%s)",
        entry.kind.value,
        prompt.name if (prompt := session.get(Prompt, entry.prompt_id)) else entry.prompt_id,
        entry.from_version,
        ", ".join(sorted(serving)),
        plain(people.by(entry.operator, entry.trigger)),
        entry.id,
        extra={"audit_id": entry.id},
    )
    cancel_superseded_verifications(session, entry=entry, now=now)
    supersede_rollout(session, entry=entry, notifier=notifier, now=now)
    return settle_incidents(session, entry=entry, serving=serving, notifier=notifier, now=now)


# Run by every routing change: built once.
_OPEN_INCIDENTS = select(Incident).where(
    Incident.prompt_id == bindparam("prompt_id"),
    col(Incident.status).in_(list(ACTIVE_INCIDENT)),
)
_CANCEL_VERIFICATIONS = (
    update(Verification)
    .where(
        col(Verification.prompt_id) == bindparam("of_prompt"),
        col(Verification.status) == VerificationStatus.RUNNING,
        col(Verification.audit_id) != bindparam("but_audit"),
    )
    .values(
        status=VerificationStatus.SUPERSEDED,
        finished_at=bindparam("now", type_=UTCDateTime),
        claimed_until=None,
    )
    .execution_options(synchronize_session=False)
)


def settle_incidents(
    session: Session, *, entry: AuditEntry, serving: set[str], notifier: Notifier, now: datetime
) -> list[Incident]:
    """Close the prompt's open incidents whose version no longer serves, and tell their cards."""
    open_ones = session.exec(_OPEN_INCIDENTS, params={"prompt_id": entry.prompt_id}).all()
    closed = []
    for incident in open_ones:
        if incident.version in serving:
            continue
        by = people.by(entry.operator, entry.trigger)
        rolled_back = entry.kind == ChangeKind.ROLLBACK and entry.from_version == incident.version
        if rolled_back:
            text = f"Rolled back {entry.from_version} → {entry.to_version} {by}."
            status, kind = IncidentStatus.ROLLED_BACK, NoticeKind.ROLLED_BACK
        else:
            verb = {ChangeKind.DEPLOY: "deployed", ChangeKind.SPLIT: "re-split to"}.get(
                entry.kind, str(entry.kind.value)
            )
            text = f"{incident.version} no longer serves: {verb} {entry.to_version} {by}."
            status, kind = IncidentStatus.RESOLVED, NoticeKind.INCIDENT_RESOLVED
        incident.resolved_by = entry.operator
        inc.close(
            incident,
            status=status,
            now=now,
            rollback_audit_id=entry.id if rolled_back else None,
            note=text.rstrip("."),
        )
        session.flush()
        deliver(
            notifier,
            Notice(
                kind=kind,
                severity=incident.severity,
                title=f"{incident.prompt} {incident.version}",
                text=text,
                prompt=incident.prompt,
                version=incident.version,
                incident_id=incident.id,
            ),
            session,
        )
        closed.append(incident)
    return closed


def supersede_rollout(
    session: Session, *, entry: AuditEntry, notifier: Notifier, now: datetime
) -> Rollout | None:
    """End the prompt's rollout if `entry` is not its own change; say so on its card."""
    running = rollouts.active_rollout(session, entry.prompt_id)
    if running is None or running.revision == entry.revision:
        return None
    text = (
        f"{rollouts.describe(running).capitalize()} superseded: {entry.kind.value} to "
        f"{entry.to_version} {people.by(entry.operator, entry.trigger)}. That change stands; the "
        "rollout will not move traffic again."
    )
    rollouts.supersede(running, now, text)
    session.flush()
    deliver(
        notifier,
        rollout_notice(NoticeKind.ROLLOUT_SUPERSEDED, running, Severity.NONE, text),
        session,
    )
    return running


def rollout_notice(
    kind: NoticeKind,
    rollout: Rollout,
    severity: Severity,
    text: str,
    action: Action | None = None,
) -> Notice:
    """A notice about a rollout, for its card and thread."""
    return Notice(
        kind=kind,
        severity=severity,
        title=f"{rollout.prompt} {rollout.kind.value}",
        text=text,
        prompt=rollout.prompt,
        version=rollout.to_version,
        action=action,
        details={"rollout_id": rollout.id, "stage": rollout.stage, "status": rollout.status.value},
    )


def cancel_superseded_verifications(session: Session, *, entry: AuditEntry, now: datetime) -> int:
    """End, without a word, the running verifications of the prompt's earlier rollbacks."""
    params = {"of_prompt": entry.prompt_id, "but_audit": entry.id, "now": now}
    cancelled = session.execute(_CANCEL_VERIFICATIONS, params)
    return int(cancelled.rowcount)  # type: ignore[attr-defined]
