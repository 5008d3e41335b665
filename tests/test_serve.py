"""`rollback-bot serve` and `db upgrade` as real processes, over real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import API_TOKEN, PG_URL

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(db_url: str, port: int, **env: str) -> subprocess.Popen[str]:
    environment = {
        **os.environ,
        "DATABASE_URL": db_url,
        "ROLLBACK_API_TOKEN": API_TOKEN,
        "PORT": str(port),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "serve"],
        env=environment,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_healthy(base: str, proc: subprocess.Popen[str], timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            return httpx.get(f"{base}/healthz", timeout=1)
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("server did not come up")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = start_server(f"sqlite:///{tmp_path}/fresh.db", port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_serve_migrates_a_fresh_sqlite_file_and_rolls_back_over_http(server: str) -> None:
    health = httpx.get(f"{server}/healthz").json()
    assert health["status"] == "ok"
    assert health["database"]["dialect"] == "sqlite"
    api = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {API_TOKEN}"})
    for label in ("v1.9.0", "v2.0.0"):
        created = api.post(
            "/api/prompts/customer-support/versions", json={"version": label, "template": label}
        )
        assert created.status_code == 201
        assert (
            api.post("/api/prompts/customer-support/deploy", json={"version": label}).status_code
            == 200
        )
    # The runbook's curl, verbatim apart from the token.
    rolled = api.post(
        "/api/rollback", json={"prompt": "customer-support", "target_version": "v1.9.0"}
    )
    assert rolled.status_code == 200
    assert rolled.json()["to_version"] == "v1.9.0"
    assert api.get("/api/prompts/customer-support/resolve").json()["version"] == "v1.9.0"
    assert (
        httpx.post(f"{server}/api/rollback", json={"prompt": "customer-support"}).status_code == 401
    )


def test_serve_refuses_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    proc = start_server(f"sqlite:///{tmp_path}/x.db", free_port(), ROLLBACK_API_TOKEN="changeme")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert out.strip() == (
        "error: ROLLBACK_API_TOKEN: looks like a placeholder; generate one with "
        "`rollback-bot token new`"
    )


@pytest.mark.postgresql
@pytest.mark.skipif(not PG_URL, reason="TEST_DATABASE_URL not set")
def test_postgresql_needs_db_upgrade_before_serve() -> None:
    assert PG_URL is not None
    schema = f"rollback_bot_upgrade_test_{os.getpid()}"
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    try:
        port = free_port()
        proc = start_server(url, port)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 2
        assert "run `rollback-bot db upgrade` first" in out
        env = {**os.environ, "DATABASE_URL": url}
        cmd = [sys.executable, "-m", "bot", "db", "upgrade"]
        first = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, check=True)
        assert "database upgraded empty → " in first.stdout
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, check=True)
        assert "database already at" in second.stdout
        proc = start_server(url, port)
        try:
            assert (
                wait_healthy(f"http://127.0.0.1:{port}", proc).json()["database"]["dialect"]
                == "postgresql"
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


def test_logs_are_json_lines_off_a_terminal(tmp_path: Path) -> None:
    import json

    port = free_port()
    proc = start_server(f"sqlite:///{tmp_path}/logs.db", port, LOG_LEVEL="INFO")
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert entries, out
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any(e["logger"].startswith("uvicorn") for e in entries)
