"""Bad input gets a clear answer and changes nothing, on SQLite and PostgreSQL alike: values
that would weaken detection are refused, types are strict, and nothing reaches a 500."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from bot.db import read_session
from bot.registry import history
from tests.conftest import make_prompt

VERSIONS = "/api/prompts/cs/versions"
GOOD = {"version": "v1", "template": "hello"}


def _problems(response: object) -> str:
    assert response.status_code == 422, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["error"] == "invalid_request"
    return str(body["detail"])


def _nothing_registered(client: TestClient) -> None:
    assert client.get("/api/prompts").json() == []


@pytest.mark.parametrize(
    ("baseline", "says"),
    [
        ({"quality": math.nan}, "baseline.quality: Input should be a finite number"),
        ({"quality": math.inf}, "baseline.quality: Input should be a finite number"),
        ({"quality": -5}, "baseline.quality: Input should be greater than 0"),
        ({"quality": 7}, "baseline.quality: Input should be less than or equal to 1"),
        ({"error_rate_pct": 500}, "baseline.error_rate_pct: Input should be less than or equal"),
        ({"latency_p99_ms": -1}, "baseline.latency_p99_ms: Input should be greater than 0"),
        ({"quality": True}, "baseline.quality: Input should be a valid number"),
        ({"quality": "0.8"}, "baseline.quality: Input should be a valid number"),
        ({"qualty": 0.8}, "baseline.qualty: Extra inputs are not permitted"),
    ],
)
def test_baselines_are_known_finite_and_in_range(
    client: TestClient, baseline: dict, says: str
) -> None:
    body = json.dumps({**GOOD, "baseline": baseline})  # NaN/Infinity as Python's json writes them
    response = client.post(VERSIONS, content=body, headers={"content-type": "application/json"})
    assert says in _problems(response)
    _nothing_registered(client)


def test_a_good_baseline_is_stored(client: TestClient) -> None:
    response = client.post(VERSIONS, json={**GOOD, "baseline": {"quality": 0.8}})
    assert response.status_code == 201, response.text
    assert response.json()["baseline"] == {"quality": 0.8}


@pytest.mark.parametrize(
    ("method", "path", "body", "says"),
    [
        (
            "POST",
            "/api/prompts/cs/deploy",
            {"version": "v2", "force": "yes"},
            "force: Input should be a valid boolean",
        ),
        (
            "POST",
            "/api/prompts/cs/deploy",
            {"version": "v2", "force": 1},
            "force: Input should be a valid boolean",
        ),
        (
            "PUT",
            "/api/prompts/cs/split",
            {"split": {"v1": True, "v2": 99}},
            "split.v1: Input should be a valid integer",
        ),
        (
            "PUT",
            "/api/prompts/cs/split",
            {"split": {"v1": 50.0, "v2": 50}},
            "split.v1: Input should be a valid integer",
        ),
        (
            "POST",
            "/api/rollback",
            {"prompt": "cs", "force": "true"},
            "force: Input should be a valid boolean",
        ),
        (
            "POST",
            "/api/prompts/cs/rollouts",
            {"kind": "canary", "version": "v2", "stage_seconds": math.nan},
            "stage_seconds: Input should be a finite number",
        ),
        (
            "POST",
            "/api/prompts/cs/deploy",
            {"version": "v2", "reason": "a\x00b"},
            "reason: Value error, must not contain a NUL character",
        ),
        (
            "PUT",
            "/api/prompts/cs/versions/v2/health",
            {"health": "bad", "reason": "\x00"},
            "reason: Value error, must not contain a NUL",
        ),
    ],
)
def test_types_are_strict_and_nothing_changes(
    client: TestClient, engine: Engine, method: str, path: str, body: dict, says: str
) -> None:
    make_prompt(engine, name="cs", versions=("v1", "v2"))
    with read_session(engine) as session:
        before = history(session=session, name="cs")
    response = client.request(
        method, path, content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert says in _problems(response)
    with read_session(engine) as session:
        assert history(session=session, name="cs") == before


@pytest.mark.parametrize("field", ["template", "created_by"])
def test_nul_characters_are_refused_on_every_database(client: TestClient, field: str) -> None:
    response = client.post(VERSIONS, json={**GOOD, field: "before\x00after"})
    assert f"body.{field}: Value error, must not contain a NUL character" in _problems(response)
    _nothing_registered(client)


def test_events_are_strictly_typed(client: TestClient) -> None:
    event = {"prompt": "cs", "version": "v1", "error": "no", "latency_ms": 100}
    assert "events.0.error: Input should be a valid boolean" in _problems(
        client.post("/api/events", json={"events": [event]})
    )
    event = {"prompt": "c\x00s", "version": "v1", "error": False, "latency_ms": 100}
    assert "events.0.prompt: Value error, must not contain a NUL" in _problems(
        client.post("/api/events", json={"events": [event]})
    )


def test_a_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    limit = client.app.state.settings.max_body_bytes  # type: ignore[attr-defined]

    def chunks():  # no Content-Length: sent chunked
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    response = client.post(VERSIONS, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    _nothing_registered(client)


def test_a_chunked_body_under_the_limit_is_read_whole(client: TestClient) -> None:
    data = json.dumps(GOOD).encode()
    response = client.post(
        VERSIONS, content=iter([data[:5], data[5:]]), headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text


def test_a_body_that_is_not_utf8_is_400(client: TestClient) -> None:
    response = client.post(
        VERSIONS, content=b"\xff\xfe{}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "bad_request",
        "detail": "the body is not UTF-8; send UTF-8 JSON",
    }
    _nothing_registered(client)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from bot.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exited:
        code = int(exited.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_template_files_that_cannot_be_read_are_one_line(
    tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    not_utf8 = tmp_path / "t.txt"
    not_utf8.write_bytes(b"\xff\xfe\x00 template")
    for path, says in (
        (str(not_utf8), "is not UTF-8 text (byte 0 is 0xff); save it as UTF-8"),
        ("/proc/self/mem", "cannot read /proc/self/mem"),
        (str(tmp_path / "missing.txt"), "No such file or directory"),
    ):
        code, err = _cli(
            capsys, "--database-url", db_url, "prompts", "add", "cs", "v1", "--file", path
        )
        assert code == 2 and says in err and "Traceback" not in err, err
    code, err = _cli(
        capsys,
        "--database-url",
        db_url,
        "prompts",
        "add",
        "cs",
        "v1",
        "--template",
        "t",
        "--baseline",
        "quality=nan",
    )
    assert code == 2 and "baseline.quality: Input should be a finite number" in err


def test_cli_database_urls_that_cannot_work_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("not a database")
    code, err = _cli(capsys, "--database-url", f"sqlite:///{not_a_db}", "prompts", "list")
    assert (code, err.strip()) == (
        2,
        "error: DATABASE_URL: that file is not a SQLite database (point it at another path)",
    )
    missing = tmp_path / "no" / "such" / "folder"
    code, err = _cli(capsys, "--database-url", f"sqlite:///{missing}/x.db", "prompts", "list")
    assert code == 2 and f"the folder {missing} does not exist" in err
    assert not (tmp_path / "no").exists()  # no folder, no empty database made on the way


def test_heroku_style_postgres_urls_are_accepted() -> None:
    from bot.config import load_settings
    from bot.db import normalise_url

    settings = load_settings(database_url="postgres://u@db.example.com:5432/app")
    assert settings.database_url == "postgresql://u@db.example.com:5432/app"
    assert normalise_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"


def test_settings_refuse_a_shared_token_and_an_extreme_check_interval() -> None:
    from bot.config import load_settings
    from bot.errors import ConfigError

    token = "t" * 32
    with pytest.raises(ConfigError, match="'ci' and 'deployer' have the same token"):
        load_settings(rollback_api_tokens=f"ci={token},deployer={token}")
    with pytest.raises(ConfigError, match="'ci' is listed twice"):
        load_settings(rollback_api_tokens=f"ci={token},ci={'u' * 32}")
    for interval in (0.001, 3600):
        with pytest.raises(ConfigError, match="ROLLBACK_CHECK_INTERVAL"):
            load_settings(rollback_check_interval=interval)


def test_marking_a_version_with_the_health_it_has_records_nothing(
    client: TestClient, engine: Engine
) -> None:
    make_prompt(engine, name="cs", versions=("v1", "v2"))
    path = "/api/prompts/cs/versions/v1/health"
    assert client.put(path, json={"health": "bad", "reason": "x"}).status_code == 200
    with read_session(engine) as session:
        before = history(session=session, name="cs")
    assert client.put(path, json={"health": "bad", "reason": "again"}).status_code == 200
    with read_session(engine) as session:
        assert history(session=session, name="cs") == before


def test_routing_names_prompts_it_does_not_know(client: TestClient, engine: Engine) -> None:
    make_prompt(engine, name="cs", versions=("v1",))
    answer = client.get("/api/routing", params={"prompts": "cs,customer-suport"})
    assert answer.status_code == 200
    assert [state["prompt"] for state in answer.json()] == ["cs"]
    assert answer.headers["x-unknown-prompts"] == "customer-suport"
    assert "x-unknown-prompts" not in client.get("/api/routing").headers


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_split_names_a_version_given_twice(
    db_url: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    make_prompt(engine, name="cs", versions=("v1", "v2"))
    code, err = _cli(capsys, "--database-url", db_url, "prompts", "split", "cs", "v1=50", "v1=50")
    assert code == 2 and "v1 given twice; name each version once" in err


def test_init_warns_about_a_token_serve_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = tmp_path / ".env"
    env.write_text("ROLLBACK_API_TOKEN=short\n")
    code, err = _cli(capsys, "init", "--env-file", str(env))
    assert code == 0
    assert "warning: that ROLLBACK_API_TOKEN must be at least" in err
    assert env.read_text() == "ROLLBACK_API_TOKEN=short\n"  # left as it is
