"""/resolve's fast path (bot/api/fast_resolve.py) answers exactly what the FastAPI route and the
registry answer, never a stale version, and leaves every error to the route."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from bot import registry
from bot.db import read_session, write_session
from bot.models import Resolved, utcnow
from tests.conftest import API_TOKEN, OPERATOR, make_prompt

URL = "/api/prompts/customer-support/resolve"


def _cached(client: TestClient, *, split: bool = False) -> None:
    """Wait until the change feed holds the prompt (the fast path answers from it)."""
    deadline = time.monotonic() + 10
    while True:
        state = client.app.state.feed.current("customer-support")  # type: ignore[attr-defined]
        if state is not None and (state.split is not None or not split):
            return
        assert time.monotonic() < deadline, "the change feed never loaded the prompt"
        time.sleep(0.02)


def _from_db(engine: Engine, key: str | None) -> Resolved:
    with read_session(engine) as session:
        return registry.resolve(session=session, name="customer-support", key=key)


def test_the_fast_path_answers_what_the_registry_answers(
    client: TestClient, engine: Engine
) -> None:
    make_prompt(engine)
    with write_session(engine) as session:
        registry.set_split(
            session=session,
            prompt="customer-support",
            split={"v1.9.0": 70, "v2.0.0": 30},
            actor=OPERATOR,
            now=utcnow(),
        )
    _cached(client, split=True)
    seen = set()
    for user in range(300):
        key = f"user-{user}"
        answer = client.get(URL, params={"key": key})
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["cache-control"] == "no-store"
        expected = _from_db(engine, key)
        assert Resolved.model_validate_json(answer.content) == expected
        assert answer.headers["etag"] == f'"{expected.revision}"'
        seen.add(expected.version)
    assert seen == {"v1.9.0", "v2.0.0"}


def test_a_change_made_here_is_answered_at_once_never_stale(
    client: TestClient, engine: Engine
) -> None:
    make_prompt(engine)
    _cached(client)
    assert client.get(URL).json()["version"] == "v2.0.0"
    rolled = client.post("/api/rollback", json={"prompt": "customer-support"})
    assert rolled.status_code == 200
    assert client.get(URL).json()["version"] == "v1.9.0"  # the very next request


def test_errors_are_the_routes_own(client: TestClient, engine: Engine) -> None:
    make_prompt(engine)
    _cached(client)
    anonymous = TestClient(client.app)
    missing = anonymous.get(URL)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = anonymous.get(URL, headers={"Authorization": "Bearer " + "x" * 40})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid token"
    lower = anonymous.get(URL, headers={"Authorization": f"bearer {API_TOKEN}"})
    assert lower.status_code == 200  # the scheme is case-insensitive, as HTTPBearer's
    assert client.get("/api/prompts/nope/resolve").status_code == 404
    assert client.get("/api/prompts/-bad/resolve").status_code == 422
    too_long = client.get(URL, params={"key": "k" * 513})
    assert too_long.status_code == 422 and too_long.json()["error"] == "invalid_request"
    assert client.post(URL).status_code == 405
