"""What follows a routing change, whoever made it (API, CLI, `/rollback`, `/deploy`, a button,
the checker, a rollout): one flow, in the change's own transaction, so every place a person
looks tells the same story.

- The prompt's open incidents whose version no longer serves are closed: "rolled back" and
  linked to the rollback (the card, the post-mortem and a late click all name who did it), or
  "resolved" when a deploy or split replaced the version. Their card loses its buttons and its
  thread says who did what, through what.
- Verifications of earlier rollbacks of the prompt that are still running are cancelled
  silently: the newer change has its own, and the old version no longer serves.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select, update

from bot.detection import incidents as inc
from bot.detection.notify import Notice, NoticeKind, Notifier, deliver
from bot.models import (
    ACTIVE_INCIDENT,
    AuditEntry,
    ChangeKind,
    ChangeResult,
    Incident,
    IncidentStatus,
    Trigger,
    Verification,
    VerificationStatus,
)

VIA = {
    Trigger.API: "via the API",
    Trigger.CLI: "via the CLI",
    Trigger.SLACK: "in Slack",
    Trigger.AUTOMATIC: "automatically",
}


def who(operator: str, trigger: Trigger) -> str:
    """A person as Slack shows them (a mention for Slack users), with the surface used."""
    name = f"<@{operator}>" if trigger == Trigger.SLACK else operator
    return VIA[trigger] if trigger == Trigger.AUTOMATIC else f"by {name} {VIA[trigger]}"


def after(session: Session, result: ChangeResult, notifier: Notifier) -> list[Incident]:
    """`after_change` for a change the registry just made in `session` (every surface calls
    this right after registry.rollback / deploy / set_split, before committing)."""
    entry = session.get(AuditEntry, result.audit_id)
    assert entry is not None
    serving = set(result.split) if result.split else {str(result.to_version)}
    return after_change(
        session, entry=entry, serving=serving, notifier=notifier, now=result.timestamp
    )


def after_change(
    session: Session, *, entry: AuditEntry, serving: set[str], notifier: Notifier, now: datetime
) -> list[Incident]:
    """Bring the prompt's incidents and verifications in line with the change `entry`, which
    left `serving` live; returns the incidents it closed."""
    cancel_superseded_verifications(session, entry=entry, now=now)
    return settle_incidents(session, entry=entry, serving=serving, notifier=notifier, now=now)


def settle_incidents(
    session: Session, *, entry: AuditEntry, serving: set[str], notifier: Notifier, now: datetime
) -> list[Incident]:
    """Close the prompt's open incidents whose version no longer serves, and tell their cards."""
    open_ones = session.exec(
        select(Incident).where(
            Incident.prompt_id == entry.prompt_id,
            col(Incident.status).in_(list(ACTIVE_INCIDENT)),
        )
    ).all()
    closed = []
    for incident in open_ones:
        if incident.version in serving:
            continue
        by = who(entry.operator, entry.trigger)
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


def cancel_superseded_verifications(session: Session, *, entry: AuditEntry, now: datetime) -> int:
    """End, without a word, the running verifications of the prompt's earlier rollbacks."""
    cancelled = session.execute(
        update(Verification)
        .where(
            col(Verification.prompt_id) == entry.prompt_id,
            col(Verification.status) == VerificationStatus.RUNNING,
            col(Verification.audit_id) != entry.id,
        )
        .values(status=VerificationStatus.SUPERSEDED, finished_at=now, claimed_until=None)
        .execution_options(synchronize_session=False)
    )
    return int(cancelled.rowcount)  # type: ignore[attr-defined]
