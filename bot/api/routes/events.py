"""POST /api/events: serving apps report outcomes; batches are stored whole or not at all."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter

from bot.api.deps import ActorDep, EngineDep, SettingsDep
from bot.db import retry_conflicts, write_session
from bot.metrics.ingest import ingest
from bot.models import EventBatch, IngestResult, utcnow

router = APIRouter(prefix="/api", tags=["events"])


@router.post("/events", summary="Report request outcomes (built-in metrics source)")
def post_events(
    body: EventBatch, engine: EngineDep, settings: SettingsDep, _actor: ActorDep
) -> IngestResult:
    """Fold a batch of outcomes into per-minute buckets; any bad event rejects the batch (422)."""

    def store() -> IngestResult:
        with write_session(engine) as session:
            return ingest(
                session=session,
                batch=body,
                now=utcnow(),
                retention=timedelta(hours=settings.metrics_retention_hours),
            )

    return retry_conflicts(store)
