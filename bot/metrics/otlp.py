"""OpenTelemetry traces as outcomes: each span of a prompt version is one request.

The mapping follows the GenAI semantic conventions: a span carrying the prompt's name and
version attributes (names configurable) is one request of that version; span status ERROR, or
an `error.type` attribute, is an error; the span's duration is the latency; the quality score
(0..1) is `gen_ai.evaluation.score.value` on the span, or on its `gen_ai.evaluation.result`
event as the conventions define it. Spans without the prompt attributes are not about a
prompt version and are ignored (counted); a span that is about one but cannot be used (bad
times, a quality out of range) is rejected and reported back the OTLP way (partial success).
Pure: no database, no HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from pydantic import ValidationError

from bot.models import Event

MAX_LATENCY_MS = 3_600_000
EVALUATION_EVENT = "gen_ai.evaluation.result"


@dataclass(frozen=True)
class SpanMapping:
    """Which span attributes carry the prompt, its version and a quality score."""

    prompt: str = "gen_ai.prompt.name"
    version: str = "gen_ai.prompt.version"
    quality: str = "gen_ai.evaluation.score.value"


@dataclass
class Mapped:
    """What a trace export turned into."""

    events: list[Event] = field(default_factory=list)
    ignored: int = 0  # spans without the prompt attributes
    rejected: list[str] = field(default_factory=list)  # one line per rejected span


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def _attributes(*groups: Any) -> dict[str, Any]:
    """Attributes by key; later groups (the span's own) override earlier ones (the resource's)."""
    found: dict[str, Any] = {}
    for group in groups:
        item: KeyValue
        for item in group:
            found[item.key] = _value(item.value)
    return found


def map_spans(request: ExportTraceServiceRequest, mapping: SpanMapping) -> Mapped:
    """The outcomes in a trace export."""
    out = Mapped()
    for resource_spans in request.resource_spans:
        resource = resource_spans.resource.attributes
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attrs = _attributes(resource, span.attributes)
                prompt, version = attrs.get(mapping.prompt), attrs.get(mapping.version)
                if prompt is None or version is None:
                    out.ignored += 1
                    continue
                name = f"span {span.span_id.hex() or '?'} ({span.name or 'unnamed'})"
                quality = attrs.get(mapping.quality)
                if quality is None:  # the GenAI conventions' evaluation event on the span
                    quality = next(
                        (
                            found
                            for event in span.events
                            if event.name == EVALUATION_EVENT
                            and (found := _attributes(event.attributes).get(mapping.quality))
                            is not None
                        ),
                        None,
                    )
                problem = _problem(span.start_time_unix_nano, span.end_time_unix_nano)
                if problem is None and quality is not None and not _number(quality):
                    problem = f"{mapping.quality} must be a number from 0 to 1"
                if problem is None:
                    try:
                        out.events.append(
                            Event(
                                prompt=str(prompt),
                                version=str(version),
                                error=span.status.code == Status.STATUS_CODE_ERROR
                                or "error.type" in attrs,
                                latency_ms=(span.end_time_unix_nano - span.start_time_unix_nano)
                                / 1e6,
                                quality=quality,
                                ts=datetime.fromtimestamp(span.end_time_unix_nano / 1e9, UTC),
                            )
                        )
                        continue
                    except ValidationError as exc:
                        first = exc.errors()[0]
                        where = ".".join(str(p) for p in first["loc"])
                        problem = f"{where}: {first['msg']}"
                out.rejected.append(f"{name}: {problem}")
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _problem(start: int, end: int) -> str | None:
    if start <= 0 or end <= 0:
        return "start and end times are required"
    if end < start:
        return "ends before it starts"
    if (end - start) / 1e6 > MAX_LATENCY_MS:
        return "lasts longer than an hour"
    return None
