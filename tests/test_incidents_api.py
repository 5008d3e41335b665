"""GET /api/incidents and /api/incidents/{id}: what the bot decided, without Slack."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.conftest import make_prompt
from tests.detection_kit import Clock, activated_at, make_checker, traffic


def _auto_rollback(engine: Engine) -> None:
    """customer-support v2.0.0 at 8% errors, rolled back by a checker pass."""
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    clock = Clock(activated_at(engine))
    traffic(engine, version="v2.0.0", n=1000, errors=80, at=clock.now)
    clock.advance(minutes=2)
    checker, _ = make_checker(engine, clock)
    assert len(checker.tick().rollbacks) == 1


def test_incidents_are_listed_filtered_and_shown_with_a_timeline(
    client: TestClient, engine: Engine
) -> None:
    _auto_rollback(engine)
    listed = client.get("/api/incidents")
    assert listed.status_code == 200, listed.text
    [incident] = listed.json()
    assert incident["prompt"] == "customer-support" and incident["version"] == "v2.0.0"
    assert incident["severity"] == "critical" and incident["status"] == "rolled_back"
    assert client.get("/api/incidents", params={"prompt": "billing"}).json() == []
    assert client.get("/api/incidents", params={"status": "open"}).json() == []
    assert len(client.get("/api/incidents", params={"status": "rolled_back"}).json()) == 1
    later = "2999-01-01T00:00:00Z"
    assert client.get("/api/incidents", params={"since": later}).json() == []
    bad = client.get("/api/incidents", params={"status": "solved"})
    assert bad.status_code == 422 and "status" in bad.json()["detail"]

    shown = client.get(f"/api/incidents/{incident['id']}").json()
    assert [step["what"] for step in shown["timeline"]][:2] == ["detected", "rolled_back"]
    assert "v2.0.0 → v1.9.0 by system (automatic)" in shown["timeline"][1]["detail"]
    assert shown["decision"]["fired"][0]["rule"] == "error_rate_critical"
    assert shown["postmortem_markdown"].startswith("# Post-mortem draft: customer-support v2.0.0")
    missing = client.get("/api/incidents/9999")
    assert missing.status_code == 404 and missing.json()["error"] == "incident_not_found"


def test_incidents_need_the_token(client: TestClient) -> None:
    assert client.get("/api/incidents", headers={"Authorization": ""}).status_code == 401
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/incidents" in paths and "/api/incidents/{incident_id}" in paths
