"""POST /v1/traces proven with the OpenTelemetry project's own SDK and OTLP/HTTP exporter: a
small LLM app instrumented the usual way sends its spans, and the bot rolls back the prompt
version that errors 8%."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from google.rpc.status_pb2 import Status as RpcStatus
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import StatusCode
from sqlalchemy import Engine
from sqlmodel import func, select

from bot.api.app import create_app
from bot.config import Settings
from bot.db import read_session
from bot.models import metric_bucket, utcnow
from tests.conftest import API_TOKEN, make_prompt
from tests.detection_kit import Clock, make_checker
from tests.live_kit import serving

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def base(settings: Settings, engine: Engine) -> Iterator[str]:
    with serving(create_app(settings, engine)) as url:
        yield url


def _llm_app(base: str, compression: Compression) -> tuple[TracerProvider, object]:
    """A tracer provider exporting as an instrumented app would (batches of up to 512)."""
    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    exporter = OTLPSpanExporter(
        endpoint=f"{base}/v1/traces", headers=AUTH, compression=compression, timeout=10
    )
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=512))
    return provider, provider.get_tracer("support-bot")


def _requests(engine: Engine) -> int:
    with read_session(engine) as session:
        return int(session.exec(select(func.coalesce(func.sum(metric_bucket.c.requests), 0))).one())


@pytest.mark.parametrize("compression", [Compression.Gzip, Compression.NoCompression])
def test_the_sdk_exporter_feeds_detection_and_the_bad_version_is_rolled_back(
    base: str, engine: Engine, compression: Compression
) -> None:
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))  # v2.0.0 serving
    provider, tracer = _llm_app(base, compression)
    for i in range(1000):
        with tracer.start_as_current_span("chat customer-support") as span:  # type: ignore[attr-defined]
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.prompt.name", "customer-support")
            span.set_attribute("gen_ai.prompt.version", "v2.0.0")
            if i % 2:  # a score on the span itself, or as the conventions' evaluation event
                span.set_attribute("gen_ai.evaluation.score.value", 0.8)
            else:
                span.add_event(
                    "gen_ai.evaluation.result",
                    {"gen_ai.evaluation.name": "helpfulness", "gen_ai.evaluation.score.value": 0.6},
                )
            if i % 100 < 8:
                span.set_status(StatusCode.ERROR, "upstream model error")
    with tracer.start_as_current_span("db query"):  # no prompt attributes: ignored
        pass
    assert provider.force_flush(timeout_millis=20_000)
    provider.shutdown()
    assert _requests(engine) == 1000
    checker, _ = make_checker(engine, Clock(utcnow() + timedelta(seconds=30)))
    report = checker.tick()
    assert [(r.prompt, r.from_version, r.to_version) for r in report.rollbacks] == [
        ("customer-support", "v2.0.0", "v1.9.0")
    ]
    decision = next(d for d in report.decisions if d.version == "v2.0.0")
    assert decision.figures["requests"] == 1000 and decision.figures["error_rate_pct"] == 8.0
    assert decision.figures["quality"] == pytest.approx(0.7)  # 500 at 0.8, 500 at 0.6


def _span(prompt: str, version: str, **extra: object) -> dict:
    attributes = [
        {"key": "gen_ai.prompt.name", "value": {"stringValue": prompt}},
        {"key": "gen_ai.prompt.version", "value": {"stringValue": version}},
    ]
    for key, value in extra.items():
        kind = "doubleValue" if isinstance(value, float) else "stringValue"
        attributes.append({"key": key.replace("_", "."), "value": {kind: value}})
    now = utcnow().timestamp()
    return {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": "chat",
        "startTimeUnixNano": str(int((now - 0.4) * 1e9)),
        "endTimeUnixNano": str(int(now * 1e9)),
        "attributes": attributes,
        "status": {},
    }


def _export(*spans: dict) -> bytes:
    return json.dumps(
        {"resourceSpans": [{"resource": {}, "scopeSpans": [{"scope": {}, "spans": list(spans)}]}]}
    ).encode()


def test_json_with_gzip_and_partial_success(base: str, engine: Engine) -> None:
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    body = _export(
        _span("customer-support", "v2.0.0"),
        _span("customer-support", "v9.9.9"),  # not registered: rejected, the rest stored
        {**_span("customer-support", "v2.0.0"), "endTimeUnixNano": "1"},  # ends before it starts
        {**_span("x", "y"), "attributes": []},  # not about a prompt: ignored
    )
    headers = {**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    answer = httpx.post(f"{base}/v1/traces", content=gzip.compress(body), headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    partial = answer.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 2
    assert "unknown version 'v9.9.9'; register it first" in partial["errorMessage"]
    assert "ends before it starts" in partial["errorMessage"]
    assert _requests(engine) == 1
    # The exporter retries a timed-out export with the same body: stored once.
    again = httpx.post(f"{base}/v1/traces", content=gzip.compress(body), headers=headers)
    assert again.status_code == 200 and _requests(engine) == 1


def test_all_accepted_is_an_empty_protobuf_response(base: str, engine: Engine) -> None:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    request = json_format.Parse(
        _export(_span("customer-support", "v2.0.0")), ExportTraceServiceRequest()
    )
    answer = httpx.post(
        f"{base}/v1/traces",
        content=request.SerializeToString(),
        headers={**AUTH, "Content-Type": "application/x-protobuf"},
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/x-protobuf"
    parsed = ExportTraceServiceResponse.FromString(answer.content)
    assert not parsed.HasField("partial_success")


def test_bad_bodies_and_missing_tokens(base: str) -> None:
    garbage = httpx.post(
        f"{base}/v1/traces",
        content=b"\x0a\xff\xff\xff",
        headers={**AUTH, "Content-Type": "application/x-protobuf"},
    )
    assert garbage.status_code == 400
    status = RpcStatus.FromString(garbage.content)
    assert "not an OTLP trace export" in status.message
    not_gzip = httpx.post(
        f"{base}/v1/traces",
        content=b"plain",
        headers={**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert not_gzip.status_code == 400 and "not valid gzip" in not_gzip.json()["message"]
    anonymous = httpx.post(
        f"{base}/v1/traces", content=_export(), headers={"Content-Type": "application/json"}
    )
    assert anonymous.status_code == 401
