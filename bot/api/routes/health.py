"""GET /healthz: is the server up and can it reach its database."""

from __future__ import annotations

import time

from anyio import to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from bot import liveness
from bot.api.deps import EngineDep
from bot.db import ping
from bot.errors import DatabaseUnavailable
from bot.migrate import current_revision, head_revision
from bot.telemetry import exposition

router = APIRouter()


@router.get("/healthz", tags=["health"], summary="Liveness, database and Slack state (no auth)")
def healthz(engine: EngineDep, request: Request) -> JSONResponse:
    """200 when the database answers and its schema is current; 503 otherwise. Slack's state
    is reported but never makes it 503: restarting the server would not bring Slack back, and
    detection and automatic rollbacks go on without it ("degraded"); so is a background loop
    that has not finished a round lately."""
    started = time.perf_counter()
    try:
        writable = ping(engine)
        revision = current_revision(engine)
    except DatabaseUnavailable as exc:
        return JSONResponse(
            {"status": "unavailable", "database": {"ok": False, "detail": exc.message}},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    current = revision == head_revision()
    state = request.app.state
    slack = state.slack
    slack_health = {"configured": False} if slack is None else slack.health()
    loops = [state.feed.loop]
    loops += [] if slack is None else [slack.worker.loop]
    loops += [] if state.checker is None else state.checker.loops
    loops_ok, loop_states = liveness.report(loops)
    degraded = (slack is not None and not slack_health["ok"]) or not loops_ok or not writable
    body = {
        "status": "schema_out_of_date" if not current else "degraded" if degraded else "ok",
        "database": {
            "ok": True,
            "dialect": engine.dialect.name,
            "writable": writable,
            "schema_revision": revision,
            "schema_current": current,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        },
        "slack": slack_health,
        "loops": loop_states,
    }
    return JSONResponse(body, status_code=200 if current else 503)


@router.get("/metrics", tags=["health"], summary="The bot's own telemetry (Prometheus format)")
async def metrics(engine: EngineDep) -> Response:
    """Checks, verdicts, rollbacks, durations, Slack and source errors, outbox depth, leader."""
    body = await to_thread.run_sync(exposition, engine)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
