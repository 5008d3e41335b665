"""Incidents over HTTP: what the bot decided, readable without Slack."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from bot.api.deps import ActorDep, EngineDep
from bot.db import read_session
from bot.incidents.queries import incident_detail, list_incidents
from bot.models import IncidentDetail, IncidentPublic, IncidentStatus

router = APIRouter(prefix="/api", tags=["incidents"])


@router.get("/incidents", summary="Incidents, newest first")
def incidents(
    engine: EngineDep,
    _actor: ActorDep,
    prompt: str | None = None,
    status: IncidentStatus | None = None,
    since: Annotated[datetime | None, Query(description="opened at or after (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[IncidentPublic]:
    """Filter by prompt, status and opening time."""
    with read_session(engine) as session:
        return list_incidents(session, prompt=prompt, status=status, since=since, limit=limit)


@router.get("/incidents/{incident_id}", summary="One incident with its timeline")
def incident(incident_id: int, engine: EngineDep, _actor: ActorDep) -> IncidentDetail:
    """The verdict that opened it, what happened when, and the post-mortem draft."""
    with read_session(engine) as session:
        return incident_detail(session, incident_id)
