"""What people do with an incident: roll back from it, or say they are investigating."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import Session

from bot import registry
from bot.errors import AlreadyRolledBack, Conflict
from bot.incidents import records as inc
from bot.incidents.records import get_incident
from bot.models import (
    ACTIVE_INCIDENT,
    AuditEntry,
    ChangeResult,
    Incident,
    IncidentStatus,
)
from bot.registry.changes import Actor, describe_change, preview_target


def rollback_incident(
    *,
    session: Session,
    incident_id: int,
    actor: Actor,
    now: datetime,
    target: str | None = None,
    dedup_window: timedelta = timedelta(minutes=5),
    reason: str = "",
) -> tuple[Incident, ChangeResult]:
    """Roll the incident's version back; a second click gets AlreadyRolledBack naming the first."""
    incident = get_incident(session, incident_id)
    check_can_roll_back(session, incident)
    result = registry.rollback(
        session=session,
        prompt=incident.prompt,
        target=target,
        actor=actor,
        now=now,
        reason=f"incident #{incident.id}: {reason or incident.summary}"[:1000],
        expected_version=incident.version,
        dedup_window=dedup_window,
    )
    incident.resolved_by = actor.operator
    inc.close(
        incident,
        status=IncidentStatus.ROLLED_BACK,
        now=now,
        rollback_audit_id=result.audit_id,
        note=f"rolled back by {actor.operator}",
    )
    return incident, result


def check_can_roll_back(session: Session, incident: Incident) -> None:
    """Raise AlreadyRolledBack (naming who did it) or Conflict unless the incident is active."""
    if incident.status == IncidentStatus.ROLLED_BACK:
        entry = session.get(AuditEntry, incident.rollback_audit_id or -1)
        if entry is None:
            raise AlreadyRolledBack(f"{incident.prompt} was already rolled back")
        raise AlreadyRolledBack(
            f"{incident.prompt} was already {describe_change(entry)}",
            slack_text=f"{incident.prompt} was already {describe_change(entry, slack=True)}",
        )
    if incident.status not in ACTIVE_INCIDENT:
        raise Conflict(
            f"incident #{incident.id} is {incident.status.value}; "
            f"use /rollback {incident.prompt} to roll back by hand"
        )


def acknowledge(
    *, session: Session, incident_id: int, user: str, quiet: timedelta, now: datetime
) -> tuple[Incident, bool]:
    """`user` is on it: joins the incident's responders (the first becomes its investigator)
    and re-paging stops for `quiet`. Returns the incident and whether `user` is new to it (a
    second click by the same person changes nothing and says nothing new)."""
    incident = get_incident(session, incident_id)
    if incident.status not in ACTIVE_INCIDENT:
        raise Conflict(f"incident #{incident.id} is already {incident.status.value}")
    if user in incident.responders:
        return incident, False
    incident.responders = [*incident.responders, user]  # a new list: JSON columns see it
    incident.investigator = incident.investigator or user
    incident.quiet_until = now + quiet
    incident.updated_at = now
    return incident, True


def rollback_target(session: Session, prompt: str) -> str | None:
    """The version a rollback of `prompt` without a target would go to now (for confirm texts)."""
    return preview_target(session=session, prompt=prompt)
