"""Incidents as the API and the CLI read them: filtered lists, and one with its timeline."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from bot.incidents.postmortem import postmortem
from bot.incidents.records import get_incident
from bot.models import (
    AuditEntry,
    Incident,
    IncidentDetail,
    IncidentPublic,
    IncidentStatus,
    TimelineEntry,
    Verification,
)


def finite(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None: strict JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def list_incidents(
    session: Session,
    *,
    prompt: str | None = None,
    status: IncidentStatus | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[IncidentPublic]:
    """The newest incidents first, filtered by prompt, status and opening time."""
    query = select(Incident).order_by(col(Incident.id).desc()).limit(limit)
    if prompt is not None:
        query = query.where(Incident.prompt == prompt)
    if status is not None:
        query = query.where(Incident.status == status)
    if since is not None:
        query = query.where(col(Incident.opened_at) >= since)
    return [IncidentPublic.model_validate(row) for row in session.exec(query).all()]


def incident_detail(session: Session, incident_id: int) -> IncidentDetail:
    """One incident, its verdict, its timeline (oldest first) and the post-mortem draft."""
    incident = get_incident(session, incident_id)
    timeline = [TimelineEntry(at=incident.opened_at, what="detected", detail=incident.summary)]
    if incident.escalated_at is not None:
        timeline.append(
            TimelineEntry(at=incident.escalated_at, what="escalated", detail=incident.severity)
        )
    if incident.last_paged_at is not None:
        timeline.append(
            TimelineEntry(
                at=incident.last_paged_at,
                what="paged",
                detail=f"on-call paged ({incident.pages} time(s) in all)",
            )
        )
    rollback = session.get(AuditEntry, incident.rollback_audit_id or -1)
    if rollback is not None:
        timeline.append(
            TimelineEntry(
                at=rollback.created_at,
                what="rolled_back",
                detail=f"{rollback.from_version} → {rollback.to_version} by {rollback.operator} "
                f"({rollback.trigger.value})" + (f": {rollback.reason}" if rollback.reason else ""),
            )
        )
        verification = session.exec(
            select(Verification).where(Verification.audit_id == rollback.id)
        ).first()
        if verification is not None:
            timeline.append(
                TimelineEntry(
                    at=verification.finished_at or verification.started_at,
                    what="verification",
                    detail=f"{verification.status.value} after {verification.checks_done} of "
                    f"{verification.checks_total or '?'} checks",
                )
            )
    if incident.closed_at is not None:
        timeline.append(
            TimelineEntry(at=incident.closed_at, what="closed", detail=incident.status.value)
        )
    timeline.sort(key=lambda entry: entry.at)
    return IncidentDetail(
        **IncidentPublic.model_validate(incident).model_dump(),
        decision=finite(incident.decision),
        timeline=timeline,
        postmortem_markdown=postmortem(session=session, incident_id=incident_id),
    )
