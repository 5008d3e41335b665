"""The ecosystem's protocols against the bot's own endpoints, measured in the same run.

    python benchmarks/protocols.py [--seconds 8] [--clients 4]

One real server (SQLite file, checker on). Ingestion: `--clients` threads post batches of 512
outcomes for `--seconds`, first as JSON to `/api/events` (the reference), then as OTLP/HTTP
protobuf trace exports of 512 spans to `/v1/traces` (what the SDK's BatchSpanProcessor sends;
each export distinct, so none is folded as a retry). Evaluation: wrk (2 threads, 32
connections, 8 s) against `GET /api/prompts/{name}/resolve` (the reference) and `POST
/ofrep/v1/evaluate/flags/{name}`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from _server import TOKEN, api, header, server
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

BATCH = 512
VERSIONS = ("v1.9.0", "v2.0.0")


def _events_body(rng: random.Random) -> bytes:
    now = datetime.now(UTC).isoformat()
    events = [
        {
            "prompt": "customer-support",
            "version": rng.choice(VERSIONS),
            "error": rng.random() < 0.02,
            "latency_ms": round(rng.lognormvariate(6, 0.4), 1),
            "quality": round(rng.random(), 3),
            "ts": now,
        }
        for _ in range(BATCH)
    ]
    return json.dumps({"batch_id": uuid.uuid4().hex, "events": events}).encode()


def _attr(key: str, value: object) -> KeyValue:
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def _otlp_body(rng: random.Random) -> bytes:
    end = time.time_ns()
    spans = []
    for _ in range(BATCH):
        duration = int(rng.lognormvariate(6, 0.4) * 1e6)
        spans.append(
            Span(
                trace_id=rng.randbytes(16),
                span_id=rng.randbytes(8),
                name="chat customer-support",
                start_time_unix_nano=end - duration,
                end_time_unix_nano=end,
                attributes=[
                    _attr("gen_ai.operation.name", "chat"),
                    _attr("gen_ai.prompt.name", "customer-support"),
                    _attr("gen_ai.prompt.version", rng.choice(VERSIONS)),
                    _attr("gen_ai.evaluation.score.value", round(rng.random(), 3)),
                ],
                status=Status(code=Status.STATUS_CODE_ERROR if rng.random() < 0.02 else 0),
            )
        )
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
    )
    return request.SerializeToString()


def _ingest(base: str, path: str, bodies: list[bytes], content_type: str, args) -> str:  # type: ignore[no-untyped-def]
    sent, lock, errors = [0], threading.Lock(), [0]
    queue = list(bodies)
    stop = time.perf_counter() + args.seconds

    def worker() -> None:
        with api(base) as own:
            while time.perf_counter() < stop:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                answer = own.post(path, content=body, headers={"Content-Type": content_type})
                with lock:
                    if answer.status_code == 200:
                        sent[0] += BATCH
                    else:
                        errors[0] += 1

    began = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    left = " (ran out of prepared bodies)" if not queue else ""
    return f"{sent[0] / elapsed:,.0f}/s ({sent[0]} in {elapsed:.1f} s, {errors[0]} errors){left}"


def _wrk(url: str, method: str, body: str | None) -> float:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    lines = [
        f'wrk.method = "{method}"',
        f'wrk.headers["Authorization"] = "Bearer {TOKEN}"',
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if body:
        lines.append(f"wrk.body = '{body}'")
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        ["wrk", "-t2", "-c32", "-d8s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    script.unlink()
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise SystemExit(f"wrk saw {bad.group(1)} error answers from {url}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    print(header())
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp, server(f"sqlite:///{tmp}/p.db") as base:
        with api(base) as client:
            for label in VERSIONS:
                client.post(
                    "/api/prompts/customer-support/versions",
                    json={"version": label, "template": "t"},
                ).raise_for_status()
            client.post(
                "/api/prompts/customer-support/deploy", json={"version": "v2.0.0"}
            ).raise_for_status()
        count = int(args.seconds * 60)  # more than the server can take in the time
        events = [_events_body(rng) for _ in range(count)]
        print(
            "POST /api/events, JSON, 512 a batch:",
            _ingest(base, "/api/events", events, "application/json", args),
        )
        del events
        exports = [_otlp_body(rng) for _ in range(count)]
        print(
            "POST /v1/traces, OTLP protobuf, 512 spans an export:",
            _ingest(base, "/v1/traces", exports, "application/x-protobuf", args),
        )
        if shutil.which("wrk") is None:
            print("wrk is not installed: evaluation throughput not measured")
            return
        resolve = _wrk(f"{base}/api/prompts/customer-support/resolve?key=u1", "GET", None)
        ofrep = _wrk(
            f"{base}/ofrep/v1/evaluate/flags/customer-support",
            "POST",
            '{"context":{"targetingKey":"u1"}}',
        )
        print(
            f"GET /resolve: {resolve:,.0f} req/s; POST /ofrep single flag: {ofrep:,.0f} req/s "
            f"({ofrep / resolve:.2f}x)"
        )


if __name__ == "__main__":
    main()
