"""Fuzzing every inbound surface: malformed input never yields a 500 or an unsigned action."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from tests.conftest import make_prompt
from tests.slack_harness import SIGNING_SECRET
from tests.slack_kit import sign

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
        assert r.status_code in ALLOWED, (body, r.status_code, r.text)
        assert "Traceback" not in r.text

    check()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_api_routes_never_fail_on_raw_bytes(seeded: TestClient) -> None:
    @FUZZ
    @given(raw=st.binary(max_size=300), route=st.sampled_from(ROUTES))
    def check(raw: bytes, route: tuple[str, str]) -> None:
        r = seeded.request(
            route[0], route[1], content=raw, headers={"Content-Type": "application/json"}
        )
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
            if mangle == "timestamp" and abs(ts_shift) <= 300:
                assert r.status_code in (200, 400, 401, 404), r.text  # signed: never a 500
            else:
                assert r.status_code == 401, (mangle, r.status_code)

        check()
        assert harness.fake.calls_to("chat.postMessage") == []
        assert json.dumps(harness.fake.responses()) == "[]"
