"""The HTTP API: every route, its auth, and its answers to bad input."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from bot.api.app import create_app
from bot.config import load_settings
from bot.db import make_engine
from tests.conftest import API_TOKEN, make_prompt

BODY = {"version": "v1.9.0", "template": "You are a support agent. {question}"}


def _seed(client: TestClient) -> None:
    for label in ("v1.8.0", "v1.9.0", "v2.0.0"):
        r = client.post("/api/prompts/customer-support/versions", json={**BODY, "version": label})
        assert r.status_code == 201, r.text
        assert (
            client.post("/api/prompts/customer-support/deploy", json={"version": label}).status_code
            == 200
        )


def test_healthz_is_open_and_reports_the_database(client: TestClient) -> None:
    r = client.get("/healthz", headers={"Authorization": ""})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True
    assert body["database"]["schema_current"] is True


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/prompts"),
        ("GET", "/api/prompts/customer-support"),
        ("POST", "/api/prompts/customer-support/versions"),
        ("POST", "/api/prompts/customer-support/deploy"),
        ("PUT", "/api/prompts/customer-support/split"),
        ("PUT", "/api/prompts/customer-support/versions/v1/health"),
        ("GET", "/api/prompts/customer-support/history"),
        ("GET", "/api/prompts/customer-support/resolve"),
        ("POST", "/api/rollback"),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer wrong-token-0123456789", "Basic abc", API_TOKEN])
def test_every_api_route_needs_the_token(
    client: TestClient, engine: Engine, method: str, path: str, auth: str | None
) -> None:
    make_prompt(engine)
    headers = {"Authorization": auth} if auth else {}
    client.headers.pop("Authorization")
    r = client.request(method, path, headers=headers, json={"prompt": "customer-support"})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    client.headers["Authorization"] = f"Bearer {API_TOKEN}"
    r = client.get("/api/prompts/customer-support/history")
    assert len(r.json()) == 3  # nothing changed


def test_api_is_disabled_without_a_configured_token(db_url: str) -> None:
    engine = make_engine(db_url)
    app = create_app(load_settings(database_url=db_url, rollback_api_token=""), engine)
    with TestClient(app) as client:
        r = client.get("/api/prompts", headers={"Authorization": "Bearer anything-at-all-here"})
        assert r.status_code == 503
        assert "ROLLBACK_API_TOKEN" in r.json()["detail"]
        assert client.get("/healthz").status_code == 200
    engine.dispose()


def test_named_tokens_are_recorded_as_the_operator(db_url: str, engine: Engine) -> None:
    settings = load_settings(
        database_url=db_url, rollback_api_tokens="deployer=deployer-token-0123456789"
    )
    with TestClient(create_app(settings, engine)) as client:
        client.headers["Authorization"] = "Bearer deployer-token-0123456789"
        _seed(client)
        r = client.post("/api/rollback", json={"prompt": "customer-support", "reason": "bad"})
        assert r.status_code == 200
        assert (
            client.get("/api/prompts/customer-support/history").json()[0]["operator"] == "deployer"
        )


def test_runbook_rollback(client: TestClient) -> None:
    _seed(client)
    r = client.post(
        "/api/rollback",
        json={"prompt": "customer-support", "target_version": "v1.9.0", "reason": "accuracy -20%"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    assert (body["from_version"], body["to_version"]) == ("v2.0.0", "v1.9.0")
    assert body["timestamp"]
    detail = client.get("/api/prompts/customer-support").json()
    assert detail["active_version"] == "v1.9.0"
    health = {v["version"]: v["health"] for v in detail["versions"]}
    assert health == {"v2.0.0": "bad", "v1.9.0": "good", "v1.8.0": "good"}
    history = client.get("/api/prompts/customer-support/history").json()
    assert history[0]["kind"] == "rollback"
    assert (history[0]["operator"], history[0]["trigger"]) == ("api", "api")
    assert history[0]["reason"] == "accuracy -20%"


def test_rollback_without_target_uses_previous_known_good(client: TestClient) -> None:
    _seed(client)
    r = client.post("/api/rollback", json={"prompt": "customer-support"})
    assert r.json()["to_version"] == "v1.9.0"
    again = client.post("/api/rollback", json={"prompt": "customer-support"})
    assert again.status_code == 409
    assert again.json()["error"] == "already_rolled_back"
    assert "v2.0.0 → v1.9.0 by api" in again.json()["detail"]


def test_unknown_prompt_and_version_are_404_with_hints(client: TestClient) -> None:
    _seed(client)
    r = client.post("/api/rollback", json={"prompt": "customer-suport"})
    assert r.status_code == 404
    assert "did you mean customer-support" in r.json()["detail"]
    r = client.post("/api/rollback", json={"prompt": "customer-support", "target_version": "v3"})
    assert r.status_code == 404
    assert r.json()["recent_versions"] == ["v2.0.0", "v1.9.0", "v1.8.0"]
    assert client.get("/api/prompts/nope").status_code == 404


def test_conflicts_are_409_and_change_nothing(client: TestClient) -> None:
    _seed(client)
    r = client.post(
        "/api/rollback", json={"prompt": "customer-support", "target_version": "v2.0.0"}
    )
    assert (r.status_code, r.json()["error"]) == (409, "already_active")
    client.post("/api/rollback", json={"prompt": "customer-support"})
    client.post("/api/prompts/customer-support/deploy", json={"version": "v1.8.0"})
    r = client.post(
        "/api/rollback", json={"prompt": "customer-support", "target_version": "v2.0.0"}
    )
    assert (r.status_code, r.json()["error"]) == (409, "version_marked_bad")
    r = client.post("/api/prompts/customer-support/versions", json=BODY)
    assert (r.status_code, r.json()["error"]) == (409, "version_exists")
    assert client.get("/api/prompts/customer-support").json()["active_version"] == "v1.8.0"
    forced = client.post(
        "/api/rollback",
        json={"prompt": "customer-support", "target_version": "v2.0.0", "force": True},
    )
    assert forced.status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/rollback", {}, "body.prompt"),
        ("/api/rollback", {"prompt": ""}, "body.prompt"),
        ("/api/rollback", {"prompt": "x" * 101}, "body.prompt"),
        ("/api/rollback", {"prompt": "a b"}, "body.prompt"),
        ("/api/rollback", {"prompt": "customer-support", "reason": "r" * 1001}, "body.reason"),
        ("/api/rollback", {"prompt": "customer-support", "force": "maybe"}, "body.force"),
        ("/api/rollback", {"prompt": "customer-support", "surprise": 1}, "body.surprise"),
        ("/api/prompts/customer-support/versions", {"version": "v9"}, "body.template"),
        (
            "/api/prompts/customer-support/versions",
            {"version": "v 9", "template": "t"},
            "body.version",
        ),
        ("/api/prompts/customer-support/deploy", {"version": ["v1"]}, "body.version"),
    ],
)
def test_malformed_bodies_are_422_naming_the_field(
    client: TestClient, path: str, body: dict[str, object], field: str
) -> None:
    _seed(client)
    r = client.post(path, json=body)
    assert r.status_code == 422
    assert field in [p["field"] for p in r.json()["problems"]]
    assert len(client.get("/api/prompts/customer-support/history").json()) == 3


def test_invalid_json_is_422(client: TestClient) -> None:
    r = client.post(
        "/api/rollback", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"v1.9.0": 90, "v2.0.0": 20}, "sum to 100, not 110"),
        ({}, "at least one"),
        ({"v1.9.0": 101}, ""),
    ],
)
def test_split_validation(client: TestClient, split: dict[str, int], message: str) -> None:
    _seed(client)
    r = client.put("/api/prompts/customer-support/split", json={"split": split})
    assert r.status_code == 422
    assert message in r.json()["detail"]
    assert r.json()["problems"][0]["field"].startswith("body.split")


def test_split_resolve_is_sticky_per_key(client: TestClient) -> None:
    _seed(client)
    r = client.put(
        "/api/prompts/customer-support/split", json={"split": {"v1.9.0": 50, "v2.0.0": 50}}
    )
    assert r.status_code == 200, r.text
    seen = {}
    for user in range(200):
        first = client.get("/api/prompts/customer-support/resolve", params={"key": f"user-{user}"})
        second = client.get("/api/prompts/customer-support/resolve", params={"key": f"user-{user}"})
        assert first.json()["version"] == second.json()["version"]
        seen[user] = first.json()["version"]
    counts = {v: list(seen.values()).count(v) for v in set(seen.values())}
    assert set(counts) == {"v1.9.0", "v2.0.0"}
    assert 60 < counts["v2.0.0"] < 140
    body = first.json()
    assert body["template"] == BODY["template"]
    assert first.headers["ETag"] == f'"{body["revision"]}"'


def test_resolve_without_split_returns_active_template(client: TestClient) -> None:
    _seed(client)
    r = client.get("/api/prompts/customer-support/resolve")
    assert r.json()["version"] == "v2.0.0"
    client.post("/api/rollback", json={"prompt": "customer-support"})
    assert client.get("/api/prompts/customer-support/resolve").json()["version"] == "v1.9.0"


def test_health_mark_endpoint(client: TestClient) -> None:
    _seed(client)
    r = client.put(
        "/api/prompts/customer-support/versions/v1.9.0/health",
        json={"health": "bad", "reason": "eval"},
    )
    assert r.json()["health"] == "bad"
    r = client.post("/api/rollback", json={"prompt": "customer-support"})
    assert r.json()["to_version"] == "v1.8.0"
    r = client.put("/api/prompts/customer-support/versions/v1.9.0/health", json={"health": "meh"})
    assert r.status_code == 422


def test_oversized_body_is_413(client: TestClient) -> None:
    r = client.post(
        "/api/prompts/big/versions", json={"version": "v1", "template": "x" * 2_000_000}
    )
    assert r.status_code == 413
    assert client.get("/api/prompts").json() == []


def test_database_down_is_503_not_a_trace() -> None:
    settings = load_settings(
        database_url="postgresql://postgres@127.0.0.1:1/none", rollback_api_token=API_TOKEN
    )
    engine = make_engine(settings.database_url)
    with TestClient(create_app(settings, engine), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {API_TOKEN}"
        r = client.post("/api/rollback", json={"prompt": "customer-support"})
        assert r.status_code == 503
        assert r.json()["error"] == "database_unavailable"
        assert r.headers["Retry-After"] == "5"
        assert "Traceback" not in r.text
        assert client.get("/healthz").status_code == 503
        assert client.get("/api/prompts").status_code == 503


def test_openapi_schema_lists_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/healthz",
        "/api/rollback",
        "/api/prompts",
        "/api/prompts/{name}",
        "/api/prompts/{name}/versions",
        "/api/prompts/{name}/deploy",
        "/api/prompts/{name}/split",
        "/api/prompts/{name}/history",
        "/api/prompts/{name}/resolve",
        "/api/prompts/{name}/versions/{version}/health",
    } <= set(paths)
    assert "RollbackRequest" in client.get("/openapi.json").json()["components"]["schemas"]
