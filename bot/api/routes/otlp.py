"""POST /v1/traces: OTLP/HTTP trace exports (protobuf or JSON, optionally gzip) as outcomes.

Answers as the OTLP specification asks, so the OpenTelemetry SDKs' exporters and the Collector
work unmodified: the response in the request's encoding; spans that cannot be used reported in
`partial_success` (never failing the whole export for one span); 400 with a google.rpc.Status
for a body that cannot be decoded (not retried); 503 with Retry-After while the database is
unavailable (retried with backoff). An export retried after a timeout is stored once: its
batch id is the hash of its body.
"""

from __future__ import annotations

import hashlib
import zlib
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from bot.api.deps import ActorDep, EngineDep, SettingsDep
from bot.db import retry_conflicts, write_session
from bot.errors import InvalidEvents
from bot.metrics.ingest import ingest
from bot.models import EVENTS_MAX, Event, EventBatch, utcnow
from bot.telemetry import OTLP_SPANS

if TYPE_CHECKING:
    from google.protobuf.message import Message

router = APIRouter(tags=["opentelemetry"])
PROTOBUF, JSON = "application/x-protobuf", "application/json"
BAD_REQUEST = 3  # google.rpc.Code.INVALID_ARGUMENT


def _encode(message: Message, content_type: str, status_code: int = 200) -> Response:
    from google.protobuf import json_format  # the protobufs load on the first export

    if content_type == JSON:
        body = json_format.MessageToJson(message, indent=None).encode()
    else:
        body = message.SerializeToString()
    return Response(body, status_code=status_code, media_type=content_type)


def _refuse(detail: str, content_type: str, status_code: int = 400) -> Response:
    from google.rpc.status_pb2 import Status

    return _encode(Status(code=BAD_REQUEST, message=detail), content_type, status_code)


@router.post(
    "/v1/traces",
    summary="OTLP/HTTP trace export: spans of prompt versions as outcomes",
    response_class=Response,
)
async def export_traces(
    request: Request, engine: EngineDep, settings: SettingsDep, _actor: ActorDep
) -> Response:
    """Each span with the prompt name and version attributes is one request of that version."""
    # The OTLP protobufs load on the first export, not with the server.
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    from bot.metrics.otlp import SpanMapping, map_spans

    declared = request.headers.get("content-type", PROTOBUF).split(";")[0].strip().lower()
    content_type = JSON if declared == JSON else PROTOBUF
    if declared not in (PROTOBUF, JSON):
        return _refuse(
            f"unsupported content type {declared!r}; send {PROTOBUF} or {JSON}", content_type, 415
        )
    body = await request.body()
    if request.headers.get("content-encoding", "").lower() == "gzip":
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        limit = settings.max_body_bytes * 8
        try:
            body = inflate.decompress(body, limit)
        except zlib.error as exc:
            return _refuse(f"the body is not valid gzip: {exc}", content_type)
        if inflate.unconsumed_tail:
            return _refuse(f"the body inflates to over {limit} bytes", content_type, 413)
    export = ExportTraceServiceRequest()
    try:
        if content_type == JSON:
            json_format.Parse(body, export, ignore_unknown_fields=True)
        else:
            export.ParseFromString(body)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
        return _refuse(f"not an OTLP trace export: {exc}", content_type)
    mapping = SpanMapping(
        prompt=settings.otlp_prompt_attribute,
        version=settings.otlp_version_attribute,
        quality=settings.otlp_quality_attribute,
    )
    mapped = map_spans(export, mapping)
    batch_id = "otlp:" + hashlib.sha256(body).hexdigest()[:48]
    rejected = list(mapped.rejected)
    if mapped.events:
        rejected += await run_in_threadpool(
            _store, engine, mapped.events, batch_id, settings.metrics_retention_hours
        )
    OTLP_SPANS.labels("accepted").inc(len(mapped.events) - (len(rejected) - len(mapped.rejected)))
    OTLP_SPANS.labels("ignored").inc(mapped.ignored)
    OTLP_SPANS.labels("rejected").inc(len(rejected))
    answer = ExportTraceServiceResponse()
    if rejected:
        answer.partial_success.rejected_spans = len(rejected)
        shown = "; ".join(rejected[:5]) + (
            f"; and {len(rejected) - 5} more" if len(rejected) > 5 else ""
        )
        answer.partial_success.error_message = shown[:2000]
    return _encode(answer, content_type)


def _store(engine: Engine, events: list[Event], batch_id: str, retention_hours: float) -> list[str]:
    """Store the usable events (in batches the ingester takes); returns a line for each span
    refused (an unknown prompt or version: register it first)."""
    refused: list[str] = []
    for start in range(0, len(events), EVENTS_MAX):
        chunk = events[start : start + EVENTS_MAX]
        chunk_id = f"{batch_id}:{start // EVENTS_MAX}"
        bad = retry_conflicts(partial(_store_chunk, engine, chunk, chunk_id, retention_hours))
        refused += [
            f"{chunk[i].prompt} {chunk[i].version}: {why}" for i, why in sorted(bad.items())
        ]
    return refused


def _store_chunk(
    engine: Engine, chunk: list[Event], chunk_id: str, retention_hours: float
) -> dict[int, str]:
    """One transaction: the chunk, less the events the ingester refuses; those, by index."""
    retention = timedelta(hours=retention_hours)
    with write_session(engine) as session:
        try:
            ingest(
                session=session,
                batch=EventBatch(events=chunk, batch_id=chunk_id),
                now=utcnow(),
                retention=retention,
            )
            return {}
        except InvalidEvents as exc:
            bad = {int(p["field"].split(".")[1]): p["message"] for p in exc.problems}
        kept = [event for index, event in enumerate(chunk) if index not in bad]
        if kept:
            ingest(
                session=session,
                batch=EventBatch(events=kept, batch_id=chunk_id),
                now=utcnow(),
                retention=retention,
            )
    return bad
