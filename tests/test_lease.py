"""Replicas on one PostgreSQL: one checker at a time, and a standby takes over a dead leader."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from bot import registry
from bot.db import read_session
from bot.models import Incident
from tests.conftest import API_TOKEN, PG_ONLY, make_prompt
from tests.test_serve import free_port, start_server, wait_healthy

WORKER = Path(__file__).with_name("lease_worker.py")
TTL = 1.5

pytestmark = pytest.mark.postgresql


def _start(db_url: str, name: str, lines: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), db_url, name, str(TTL)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=WORKER.parent.parent,
    )

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.strip())

    threading.Thread(target=read, daemon=True).start()
    return proc


@pytest.mark.parametrize("db_url", PG_ONLY, indirect=True)
def test_one_leader_and_takeover_after_sigkill(db_url: str) -> None:
    lines: list[str] = []
    first = _start(db_url, "a", lines)
    time.sleep(1.0)
    second = _start(db_url, "b", lines)
    time.sleep(2.0)
    try:
        assert [line.split()[1:] for line in lines] == [["a", "leader"], ["b", "standby"]]
        killed_at = time.time()
        first.send_signal(signal.SIGKILL)
        first.wait()
        deadline = time.time() + 10
        while time.time() < deadline and not any(x.endswith("b leader") for x in lines):
            time.sleep(0.05)
        took_over = next(float(x.split()[0]) for x in lines if x.endswith("b leader"))
        takeover_s = took_over - killed_at
        print(f"takeover after SIGKILL: {takeover_s:.2f} s (lease {TTL} s)")
        assert takeover_s <= TTL + TTL / 6 + 0.5
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("db_url", PG_ONLY, indirect=True)
def test_two_replicas_roll_back_once(db_url: str, engine, tmp_path: Path) -> None:
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    ports = [free_port(), free_port()]
    env = {"ROLLBACK_CHECK_INTERVAL": "0.5", "CHECKER_LEASE_SECONDS": "3"}
    servers = [start_server(db_url, port, **env) for port in ports]
    try:
        for port, proc in zip(ports, servers, strict=True):
            wait_healthy(f"http://127.0.0.1:{port}", proc)
        events = [
            {"prompt": "customer-support", "version": "v2.0.0", "error": i < 80, "latency_ms": 300}
            for i in range(1000)
        ]
        started = time.time()
        r = httpx.post(
            f"http://127.0.0.1:{ports[1]}/api/events",
            json={"events": events},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )
        assert r.status_code == 200
        while time.time() - started < 10:
            with read_session(engine) as session:
                if (
                    registry.prompt_detail(session=session, name="customer-support").active_version
                    == "v1.9.0"
                ):
                    break
            time.sleep(0.05)
        detected = time.time() - started
        print(f"first bad events → rollback committed: {detected:.2f} s (interval 0.5 s)")
        time.sleep(1.5)  # give both replicas further passes: nothing more may happen
        with read_session(engine) as session:
            history = registry.history(session=session, name="customer-support")
        assert [e.kind for e in history].count("rollback") == 1
        with read_session(engine) as session:
            incidents = session.exec(select(Incident)).all()
        assert [(i.status, i.version) for i in incidents] == [("rolled_back", "v2.0.0")]
        assert history[0].trigger == "automatic"
        assert detected < 0.5 + 1.0 + 0.5
    finally:
        for proc in servers:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
