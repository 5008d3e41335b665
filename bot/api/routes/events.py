"""POST /api/events: serving apps report outcomes; batches are stored whole or not at all."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool

from bot.api.body import request_body_schema, validate_body
from bot.api.deps import ActorDep, EngineDep, SettingsDep
from bot.db import retry_conflicts, write_session
from bot.metrics.ingest import fold, store
from bot.models import EventBatch, IngestResult, utcnow

router = APIRouter(prefix="/api", tags=["events"])
# The hot path: the batch is validated from the body's bytes (validate_body), not by FastAPI.
_BATCH = TypeAdapter(EventBatch)


@router.post(
    "/events",
    summary="Report request outcomes (built-in metrics source)",
    openapi_extra=request_body_schema(EventBatch),
)
async def post_events(
    request: Request, engine: EngineDep, settings: SettingsDep, _actor: ActorDep
) -> IngestResult:
    """Fold a batch of outcomes into per-minute buckets; any bad event rejects the batch (422)."""
    body = await request.body()
    content_type = request.headers.get("content-type")
    retention = timedelta(hours=settings.metrics_retention_hours)

    def accept() -> IngestResult:
        batch = validate_body(_BATCH, body, content_type)
        # Summed before the write transaction: the write lock is held only for the SQL.
        folded = fold(batch, now=utcnow(), retention=retention)

        def write() -> IngestResult:
            with write_session(engine) as session:
                return store(session=session, folded=folded)

        return retry_conflicts(write)

    return await run_in_threadpool(accept)
