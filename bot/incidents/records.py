"""Incident records: one per version and episode; a repeated breach updates it."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from bot.errors import NotFound
from bot.judging.verdict import Decision
from bot.metrics import Target
from bot.models import ACTIVE_INCIDENT, Action, Incident, IncidentStatus, Severity


def active_incidents(session: Session) -> dict[int, Incident]:
    """Open and observing incidents, by version id."""
    rows = session.exec(select(Incident).where(col(Incident.status).in_(ACTIVE_INCIDENT)))
    return {incident.version_id: incident for incident in rows}


class IncidentNotFound(NotFound):
    """No incident with that id."""

    code = "incident_not_found"


def get_incident(session: Session, incident_id: int) -> Incident:
    """The incident, or IncidentNotFound."""
    incident = session.get(Incident, incident_id)
    if incident is None:
        raise IncidentNotFound(f"no incident #{incident_id}")
    return incident


def open_incident(
    session: Session,
    *,
    target: Target,
    decision: Decision,
    now: datetime,
    observe_until: datetime | None,
) -> Incident:
    """Record a new incident for the version."""
    incident = Incident(
        prompt_id=target.prompt_id,
        version_id=target.version_id,
        prompt=target.prompt,
        version=target.version,
        status=IncidentStatus.OBSERVING if observe_until else IncidentStatus.OPEN,
        severity=decision.severity,
        action=decision.action,
        summary=decision.reason[:2000],
        decision=decision.as_dict(),
        opened_at=now,
        updated_at=now,
        last_breach_at=now,
        observe_until=observe_until,
    )
    session.add(incident)
    session.flush()
    return incident


def is_stronger(decision: Decision, incident: Incident) -> bool:
    """Whether the decision asks for more than the incident already did."""
    return (decision.severity.rank, decision.action.rank) > (
        incident.severity.rank,
        incident.action.rank,
    )


def record_breach(incident: Incident, decision: Decision, now: datetime) -> None:
    """A repeated breach: refresh the figures, count it, and stop any healthy streak."""
    incident.decision = decision.as_dict()
    incident.summary = decision.reason[:2000]
    incident.breaches += 1
    incident.last_breach_at = incident.updated_at = now
    incident.healthy_since = None


def escalate(incident: Incident, *, severity: Severity, action: Action, now: datetime) -> None:
    """Raise the incident to a stronger severity or action; it leaves observation."""
    incident.severity, incident.action = severity, action
    incident.status = IncidentStatus.OPEN
    incident.escalated_at = incident.updated_at = now
    incident.observe_until = None


def close(
    incident: Incident,
    *,
    status: IncidentStatus,
    now: datetime,
    note: str | None = None,
    rollback_audit_id: int | None = None,
) -> None:
    """End the episode: resolved, or rolled back."""
    incident.status = status
    incident.closed_at = incident.updated_at = now
    if rollback_audit_id is not None:
        incident.rollback_audit_id = rollback_audit_id
    if note:
        incident.summary = f"{incident.summary}; {note}"[:2000]
