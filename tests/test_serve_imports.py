"""`serve` loads only what its configuration needs before it answers (issue 17): no Slack Bolt
without Slack, no psycopg on SQLite, the checker's machinery (APScheduler included) when the
checker starts, after the app is built, and the OTLP protobufs, Jinja2, httpx and matplotlib
only when a request needs them; the routes that load them on first use still answer from a
cold process, and the checker still runs its first pass at once. Nothing here is timed
(benchmarks/cli_startup.py measures the start-up)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from sqlalchemy import Engine

from bot.config import Settings
from bot.runtime.scheduler import CheckerService
from tests.conftest import API_TOKEN

ROOT = Path(__file__).resolve().parent.parent

# Runs `rollback-bot serve` in-process up to uvicorn.run, which records every module loaded by
# then, and then sends the app the requests named by the second argument (a JSON list of
# [method, path, headers, body as latin-1]) without starting the server's background loops.
PROBE = """
import json, sys
import uvicorn

out, requests = sys.argv[1], json.loads(sys.argv[2])

def run(app, **_options):
    report = {"modules": sorted(sys.modules), "answers": [], "after": []}
    from fastapi.testclient import TestClient

    client = TestClient(app, raise_server_exceptions=False)  # no `with`: no lifespan
    for method, path, headers, body in requests:
        answer = client.request(method, path, headers=headers, content=body.encode("latin-1"))
        report["answers"].append(answer.status_code)
    report["after"] = sorted(sys.modules)
    with open(out, "w") as handle:
        json.dump(report, handle)

uvicorn.run = run
from bot.cli import main
try:
    main(["serve"])
except SystemExit as exc:
    if exc.code:
        raise
"""

NOT_WITHOUT_A_REQUEST = ("google", "jinja2", "httpx", "httpcore", "matplotlib", "alembic")
SLACK = ("slack_bolt", "slack_sdk")


def packages(modules: list[str]) -> set[str]:
    return {name.partition(".")[0] for name in modules}


def serve_probe(
    tmp_path: Path, db_url: str, requests: list[list[object]] | None = None, **env: str
) -> dict[str, list[str]]:
    """What `serve` loaded before uvicorn.run, the answers to `requests`, and what was loaded
    after them, from a fresh process (Slack off unless `env` sets it)."""
    out = tmp_path / "serve.json"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SLACK_")}
    environment |= {
        "DATABASE_URL": db_url,
        "ROLLBACK_API_TOKEN": API_TOKEN,
        "ROLLBACK_POLICY_DIR": str(ROOT / "policies"),
        "LOG_LEVEL": "WARNING",
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), json.dumps(requests or [])],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0 and out.exists(), done.stderr
    report: dict[str, list[str]] = json.loads(out.read_text())
    return report


@pytest.mark.parametrize("checker", ["true", "false"])
def test_serve_without_slack_loads_neither_slack_nor_what_requests_load(
    db_url: str, tmp_path: Path, checker: str
) -> None:
    report = serve_probe(tmp_path, db_url, CHECKER_ENABLED=checker)
    loaded = packages(report["modules"])
    assert {"fastapi", "uvicorn", "sqlalchemy", "yaml"} <= loaded  # serve did build the app
    # The checker service is made only when it is on, and loads its machinery when it starts.
    assert ("bot.runtime.scheduler" in report["modules"]) == (checker == "true")
    assert "apscheduler" not in loaded and "bot.judging.checker" not in report["modules"]
    assert not [name for name in report["modules"] if name.startswith("bot.slack")]
    unwanted = {*SLACK, *NOT_WITHOUT_A_REQUEST}
    if db_url.startswith("sqlite"):
        unwanted.add("psycopg")
    assert loaded.isdisjoint(unwanted), sorted(loaded & unwanted)


def test_serve_with_slack_loads_slack_bolt(db_url: str, tmp_path: Path) -> None:
    report = serve_probe(
        tmp_path,
        db_url,
        SLACK_BOT_TOKEN="xoxb-test-token-0123456789",
        SLACK_SIGNING_SECRET="signing-secret-0123456789abcdef",
    )
    loaded = packages(report["modules"])
    assert set(SLACK) <= loaded
    assert loaded.isdisjoint(NOT_WITHOUT_A_REQUEST), sorted(loaded & {*NOT_WITHOUT_A_REQUEST})


def test_routes_that_load_their_dependencies_on_first_use_answer_from_a_cold_start(
    db_url: str, tmp_path: Path
) -> None:
    """A gzipped protobuf OTLP export, the dashboard's sign-in page, and Slack's route on a
    server without Slack, each the first request of its kind in a fresh process."""
    export = gzip.compress(ExportTraceServiceRequest().SerializeToString())
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    otlp = {**auth, "Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
    requests: list[list[object]] = [
        ["POST", "/v1/traces", otlp, export.decode("latin-1")],
        ["GET", "/ui/sign-in", {}, ""],
        ["POST", "/slack/events", {}, "command=%2Frollback"],
        ["GET", "/openapi.json", {}, ""],
    ]
    report = serve_probe(tmp_path, db_url, requests)
    assert report["answers"] == [200, 200, 404, 200]
    before, after = packages(report["modules"]), packages(report["after"])
    assert {"google", "jinja2"} <= after - before  # loaded by the requests, not at start
    assert after.isdisjoint(SLACK)


def test_the_checker_loads_when_it_starts_and_runs_its_first_pass_at_once(
    settings: Settings, engine: Engine
) -> None:
    from bot.api.app import create_app
    from bot.notify import LogNotifier
    from bot.policy import load_policies

    policies = load_policies(ROOT / "policies")
    checker = CheckerService(
        engine=engine, settings=settings, policies=policies, notifier=LogNotifier()
    )
    app = create_app(settings, engine, checker=checker, policies=policies)
    with TestClient(app) as client:
        deadline = time.monotonic() + 20
        while True:
            loops = client.get("/healthz").json()["loops"]
            if loops["checker"]["last_ok_s_ago"] is not None:
                break
            assert time.monotonic() < deadline, loops
            time.sleep(0.05)
        assert checker.leader  # the first pass took the lease and judged
        assert {"checker", "verifier", "rollouts", "webhooks"} <= set(loops)


def test_a_checker_that_cannot_be_built_says_so_in_healthz(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.api.app import create_app
    from bot.notify import LogNotifier
    from bot.policy import load_policies

    policies = load_policies(ROOT / "policies")
    checker = CheckerService(
        engine=engine, settings=settings, policies=policies, notifier=LogNotifier()
    )

    def broken() -> None:
        raise ImportError("no module named 'apscheduler'")

    monkeypatch.setattr(checker, "_build", broken)
    app = create_app(settings, engine, checker=checker, policies=policies)
    with TestClient(app) as client:
        deadline = time.monotonic() + 20
        while True:
            state = client.get("/healthz").json()["loops"]["checker"]
            if state["consecutive_failures"]:
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.05)
        assert state["last_error"] == "ImportError: no module named 'apscheduler'"
