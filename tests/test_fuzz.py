"""Fuzzing every inbound surface: malformed input never yields a 500 or an unsigned action."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlmodel import SQLModel

from bot.db import read_session
from bot.models.detection import metric_bucket
from tests.conftest import API_TOKEN, make_prompt
from tests.reliability.kit import record
from tests.slack_harness import SIGNING_SECRET
from tests.slack_kit import block_actions_body, sign, slash_command_body

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=15), children, max_size=6)
    ),
    max_leaves=25,
)
# Bodies shaped like the real ones, with wrong or hostile values in their fields.
FIELDS = st.dictionaries(
    st.sampled_from(
        [
            "prompt",
            "version",
            "target_version",
            "template",
            "reason",
            "force",
            "split",
            "events",
            "kind",
            "stage_seconds",
            "expected_version",
            "health",
        ]
    ),
    JSON,
    max_size=5,
)
ROUTES = [
    ("POST", "/api/rollback"),
    ("POST", "/api/prompts/customer-support/versions"),
    ("POST", "/api/prompts/customer-support/deploy"),
    ("PUT", "/api/prompts/customer-support/split"),
    ("PUT", "/api/prompts/customer-support/versions/v1.9.0/health"),
    ("POST", "/api/events"),
    ("POST", "/api/prompts/customer-support/rollouts"),
]
ALLOWED = {200, 201, 400, 404, 409, 413, 422}
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# Requests sent per surface in this run, for the run's summary (docs/reliability.md).
TRIED: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    record(
        "fuzzing",
        requests=sum(TRIED.values()),
        **{surface.replace(" ", "_"): n for surface, n in sorted(TRIED.items())},
        answered_500=0,  # any 500 fails the test that saw it
    )


@pytest.fixture
def seeded(client: TestClient, engine: Engine) -> TestClient:
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    return client


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_api_routes_never_fail_on_malformed_bodies(
    seeded: TestClient, method: str, path: str
) -> None:
    @FUZZ
    @given(body=JSON | FIELDS)
    def check(body: object) -> None:
        r = seeded.request(method, path, json=body)
        TRIED["api malformed bodies"] += 1
        assert r.status_code in ALLOWED, (body, r.status_code, r.text)
        assert "Traceback" not in r.text

    check()


def _state(engine: Engine) -> tuple[object, ...]:
    """Everything a request could change: row counts, routing, version health, stored events."""
    with read_session(engine) as session:
        counts = tuple(
            session.execute(select(func.count()).select_from(table)).scalar_one()
            for table in SQLModel.metadata.sorted_tables
        )
        routing = session.execute(select(SQLModel.metadata.tables["routing"])).all()
        versions = session.execute(
            select(SQLModel.metadata.tables["prompt_version"].c["id", "health"])
        ).all()
        events = session.execute(select(func.sum(metric_bucket.c.requests))).scalar_one()
    return counts, tuple(routing), tuple(versions), events


# A path segment: a real one, or anything at all (quoted, as a client would send it).
SEGMENT = st.sampled_from(["customer-support", "v1.9.0", "v2.0.0", "1", "nope"]) | st.text(
    max_size=120
).map(lambda text: quote(text, safe=""))
QUERY_VALUE = st.none() | st.text(max_size=60) | st.integers().map(str)
_NO_ROUTE = ("Not Found", "Method Not Allowed")
AUTH = {"good": f"Bearer {API_TOKEN}", "wrong": "Bearer not-the-token", "scheme": "Basic eA=="}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_openapi_operation_fuzzed(seeded: TestClient, engine: Engine) -> None:
    """Every operation the OpenAPI schema lists, with generated path, query, body and credentials:
    never a 500, every refusal in the JSON error shape, nothing changed by a refused request,
    and nothing at all done without the token."""
    schema: dict[str, Any] = seeded.app.openapi()  # type: ignore[attr-defined]
    operations = [
        (method.upper(), path, operation)
        for path, methods in schema["paths"].items()
        # /api/stream never ends by design; its refusals are tested below.
        if path != "/api/stream"
        for method, operation in methods.items()
    ]
    assert len(operations) >= 17, [path for _, path, _ in operations]

    @settings(FUZZ, max_examples=400)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        method, template, operation = data.draw(st.sampled_from(operations))
        path, query = template, {}
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                path = path.replace("{" + parameter["name"] + "}", data.draw(SEGMENT))
            elif (value := data.draw(QUERY_VALUE)) is not None:
                query[parameter["name"]] = value
        body = data.draw(JSON | FIELDS) if "requestBody" in operation else None
        auth = data.draw(st.sampled_from([*sorted(AUTH), "none"]))
        headers = {"Authorization": AUTH.get(auth, "")}
        before = _state(engine)
        r = seeded.request(method, path, params=query, json=body, headers=headers)
        TRIED["openapi operations"] += 1
        assert r.status_code in ALLOWED | {401, 405}, (method, path, body, r.status_code, r.text)
        if path.startswith("/api") and auth != "good":  # no route matched, or refused
            assert r.status_code in (401, 404, 405), (method, path, r.status_code)
            assert r.status_code == 401 or r.json()["detail"] in _NO_ROUTE, r.text
        if r.status_code >= 400:
            # OFREP answers in its own error format (errorCode), the rest in the bot's (error).
            shape = "errorCode" if path.startswith("/ofrep") and r.status_code != 401 else "error"
            assert shape in r.json() and "Traceback" not in r.text, r.text
            assert _state(engine) == before, (method, path, body, r.status_code)

    check()
    print(f"openapi operations fuzzed: {len(operations)}, requests: {TRIED['openapi operations']}")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("auth", ["none", "wrong", "scheme"])
def test_stream_refuses_without_the_token(seeded: TestClient, auth: str) -> None:
    r = seeded.get("/api/stream", headers={"Authorization": AUTH.get(auth, "")})
    assert r.status_code == 401 and "error" in r.json(), r.text


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_api_routes_never_fail_on_raw_bytes(seeded: TestClient) -> None:
    @FUZZ
    @given(raw=st.binary(max_size=300), route=st.sampled_from(ROUTES))
    def check(raw: bytes, route: tuple[str, str]) -> None:
        r = seeded.request(
            route[0], route[1], content=raw, headers={"Content-Type": "application/json"}
        )
        TRIED["api raw bytes"] += 1
        assert r.status_code in ALLOWED, (raw, r.status_code, r.text)

    check()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_slack_endpoint_refuses_everything_unsigned_or_mangled(client: TestClient) -> None:
    # The API server without Slack configured answers 404; with it (below) signatures rule.
    assert client.post("/slack/events", content=b"x").status_code == 404


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_slack_signatures_fuzzed(engine: Engine, db_url: str) -> None:
    from tests.slack_harness import running

    with running(engine, db_url) as harness:
        import httpx

        http = httpx.Client()

        @FUZZ
        @given(
            body=st.binary(max_size=200),
            ts_shift=st.integers(-10_000, 10_000),
            mangle=st.sampled_from(["secret", "body", "timestamp", "none"]),
        )
        def check(body: bytes, ts_shift: int, mangle: str) -> None:
            now = int(time.time())
            headers = sign(
                body,
                "wrong-secret-000000" if mangle == "secret" else SIGNING_SECRET,
                now + ts_shift if mangle == "timestamp" else now,
            )
            sent = body + b"!" if mangle == "body" else body
            if mangle == "none":
                headers = {"Content-Type": "application/x-www-form-urlencoded"}
            r = http.post(f"{harness.base_url}/slack/events", content=sent, headers=headers)
            TRIED["slack signatures"] += 1
            if mangle == "timestamp" and abs(ts_shift) <= 300:
                assert r.status_code in (200, 400, 401, 404), r.text  # signed: never a 500
            else:
                assert r.status_code == 401, (mangle, r.status_code)

        check()
        assert harness.fake.calls_to("chat.postMessage") == []
        assert json.dumps(harness.fake.responses()) == "[]"


# A block_actions payload with any of its parts replaced by generated JSON.
PAYLOAD_PART = st.sampled_from(["user", "actions", "container", "channel", "team", "type", "value"])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_signed_malformed_slack_payloads_and_commands(engine: Engine, db_url: str) -> None:
    """Correctly signed requests whose content is wrong: a button payload with a part replaced
    by anything, or a slash command with any text from a user not on call. Never a 500, never
    an unexpected error shown to the user, nothing changed in the registry, nothing posted."""
    from tests.slack_harness import running

    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    before = _state(engine)
    with running(engine, db_url) as harness:
        import httpx

        http = httpx.Client()
        url = f"{harness.base_url}/slack/events"

        @FUZZ
        @given(
            kind=st.sampled_from(["button", "command"]),
            part=PAYLOAD_PART,
            junk=JSON,
            text=st.text(max_size=120),
        )
        def check(kind: str, part: str, junk: object, text: str) -> None:
            if kind == "command":
                body = slash_command_body("/rollback", text, user_id="UFUZZ", slack=harness.fake)
            else:
                raw = block_actions_body(
                    "rollback",
                    json.dumps({"incident": 1}),
                    "UFUZZ",
                    "1.2",
                    "C1",
                    slack=harness.fake,
                )
                payload = json.loads(parse_qs(raw.decode())["payload"][0])
                if part == "value":
                    payload["actions"][0]["value"] = (
                        junk if isinstance(junk, str) else json.dumps(junk)
                    )
                else:
                    payload[part] = junk
                body = urlencode({"payload": json.dumps(payload)}).encode()
            r = http.post(url, content=body, headers=sign(body, SIGNING_SECRET))
            TRIED["slack signed malformed"] += 1
            assert r.status_code in (200, 400, 404), (kind, part, r.status_code, r.text)

        check()
        harness.service.pool.shutdown(wait=True)  # every listener's work has answered
        answers = [str(a.get("text", "")) for a in harness.fake.responses()]
        assert not [a for a in answers if "Something went wrong" in a], answers
        assert harness.fake.calls_to("chat.postMessage") == []
    assert _state(engine) == before
