"""POST /api/events validates the batch from the body's bytes: the answers are FastAPI's own."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from bot.api import errors
from bot.api.body import validate_body
from bot.models import EventBatch

GOOD = {"prompt": "cs", "version": "v1", "error": False, "latency_ms": 5, "ts": None}
JSON = "application/json"
BODIES: list[tuple[bytes, str | None]] = [
    (json.dumps({"events": [GOOD], "batch_id": "b-1"}).encode(), JSON),
    (b"", JSON),
    (b"{", JSON),
    (b'{"events": [1]} trailing', JSON),
    (b"\xff{}", JSON),  # not UTF-8
    (b"\xff\xfe{\x00}\x00", JSON),  # UTF-16, which json.loads reads
    (b"\xef\xbb\xbf" + json.dumps({"events": [GOOD]}).encode(), JSON),  # a UTF-8 BOM
    (json.dumps({"events": [GOOD]}).encode("utf-16"), JSON),
    (b"null", JSON),
    (b"[]", JSON),
    (b'"events"', JSON),
    (b"{}", JSON),
    (b'{"events": []}', JSON),
    (b'{"events": "x"}', JSON),
    (b'{"events": [null, [], 1]}', JSON),
    (b'{"events": [{"prompt": "\\ud800", "version": "v", "error": false, "latency_ms": 1}]}', JSON),
    (b'{"events": [{"prompt": "a\\u0000", "version": "v", "error": 0, "latency_ms": NaN}]}', JSON),
    (b'{"events": [{"prompt": "p", "version": "v", "error": false, "latency_ms": 1e999}]}', JSON),
    (json.dumps({"events": [{**GOOD, "latency_ms": "5", "quality": 2, "x": 1}]}).encode(), JSON),
    (json.dumps({"events": [{**GOOD, "ts": "yesterday"}], "batch_id": 42}).encode(), JSON),
    (json.dumps({"events": [GOOD], "sent_at": 1.5, "more": True}).encode(), JSON),
    (json.dumps({"events": [GOOD] * 5001}).encode(), JSON),
    (json.dumps({"events": [GOOD]}).encode(), None),  # no content type: not read as JSON
    (json.dumps({"events": [GOOD]}).encode(), "text/plain"),
    (json.dumps({"events": [GOOD]}).encode(), "application/vnd.x+json"),
    (json.dumps({"events": [GOOD]}).encode(), "application/json; charset=utf-8"),
]


@pytest.fixture(scope="module")
def twins() -> TestClient:
    """One app, two routes: FastAPI validating an EventBatch body itself, and validate_body."""
    app = FastAPI()
    errors.install(app)
    adapter = TypeAdapter(EventBatch)

    @app.post("/fastapi")
    def by_fastapi(batch: EventBatch) -> dict[str, object]:
        return batch.model_dump(mode="json")

    @app.post("/bytes")
    async def by_bytes(request: Request) -> dict[str, object]:
        body = await request.body()
        batch = validate_body(adapter, body, request.headers.get("content-type"))
        return batch.model_dump(mode="json")

    return TestClient(app, raise_server_exceptions=False)


def _both(client: TestClient, body: bytes, content_type: str | None) -> list[tuple[int, object]]:
    headers = {"Content-Type": content_type} if content_type else {}
    answers = []
    for path in ("/fastapi", "/bytes"):
        response = client.post(path, content=body, headers=headers)
        answers.append((response.status_code, response.json()))
    return answers


@pytest.mark.parametrize(("body", "content_type"), BODIES)
def test_every_answer_is_the_one_fastapi_gives(
    twins: TestClient, body: bytes, content_type: str | None
) -> None:
    by_fastapi, by_bytes = _both(twins, body, content_type)
    assert by_bytes == by_fastapi


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "prompt": st.text(max_size=5) | st.integers(),
                "version": st.text(max_size=5),
                "error": st.booleans() | st.integers(0, 1) | st.none(),
                "latency_ms": st.floats(allow_nan=False) | st.integers() | st.text(max_size=3),
                "quality": st.floats(-1, 2) | st.none(),
                "ts": st.datetimes().map(str) | st.text(max_size=8) | st.integers(),
                "extra": st.none(),
            },
        ),
        max_size=3,
    ),
    cut=st.integers(0, 200),
)
def test_generated_bodies_get_the_same_answers(
    twins: TestClient, events: list[dict[str, object]], cut: int
) -> None:
    body = json.dumps({"events": events}).encode()
    by_fastapi, by_bytes = _both(twins, body, JSON)
    assert by_bytes == by_fastapi
    truncated = body[:cut]  # usually no longer JSON at all
    assert _both(twins, truncated, JSON)[1] == _both(twins, truncated, JSON)[0]


def test_the_token_is_checked_before_the_body_is_read(client: TestClient) -> None:
    """A caller without the token learns nothing about the body it sent (before, a body that
    was not JSON was answered 422 ahead of the 401)."""
    client.headers.pop("Authorization")
    refused = client.post("/api/events", content=b"{", headers={"Content-Type": JSON})
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"


def test_the_openapi_schema_still_documents_the_batch(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/api/events"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert operation["requestBody"]["required"] is True
    assert {"events", "batch_id", "sent_at"} <= set(schema["properties"])
    event = schema["properties"]["events"]["items"]
    assert event["required"] == ["prompt", "version", "error", "latency_ms"]
    assert "$ref" not in json.dumps(schema)  # nested models inlined: no dangling reference
