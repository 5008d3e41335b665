"""The serving client against a real server process: push, fallbacks, restarts, outcomes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bot.client import PromptClient, PromptUnavailable
from tests.conftest import API_TOKEN
from tests.test_serve import free_port, start_server, wait_healthy

WORKER = Path(__file__).with_name("client_worker.py")
ROOT = Path(__file__).resolve().parent.parent


class Server:
    def __init__(self, db_path: Path) -> None:
        self.db_url = f"sqlite:///{db_path}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.api = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {API_TOKEN}"}
        )

    def start(self) -> None:
        self.proc = start_server(self.db_url, self.port, CHECKER_ENABLED="false")
        wait_healthy(self.base, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "serving.db")
    srv.start()
    for label in ("v1.9.0", "v2.0.0"):
        srv.api.post(
            "/api/prompts/customer-support/versions",
            json={"version": label, "template": f"template {label}"},
        ).raise_for_status()
        srv.api.post("/api/prompts/customer-support/deploy", json={"version": label})
    yield srv
    srv.stop()
    srv.api.close()


def _connected(client: PromptClient, count: int = 1) -> None:
    deadline = time.monotonic() + 5
    while client.stats.stream_connects < count:
        assert time.monotonic() < deadline, client.stats
        time.sleep(0.01)
    time.sleep(0.1)  # the snapshot has been read and the stream waits for changes


def _rollback(server: Server) -> float:
    started = time.time()
    server.api.post("/api/rollback", json={"prompt": "customer-support"}).raise_for_status()
    return started


def test_rollback_reaches_the_client_in_well_under_a_second(server: Server) -> None:
    with PromptClient(server.base, API_TOKEN, prompts=["customer-support"]) as client:
        choice = client.get("customer-support")
        assert (choice.version, choice.template) == ("v2.0.0", "template v2.0.0")
        _connected(client)
        started = time.monotonic()
        _rollback(server)
        assert client.wait_for("customer-support", "v1.9.0", timeout=2)
        assert time.monotonic() - started < 1.0
        assert client.get("customer-support").template == "template v1.9.0"


def test_clients_in_other_processes_all_switch(server: Server) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), server.base, API_TOKEN, "customer-support", "v1.9.0"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(3)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().split() == ["ready", "v2.0.0"]
        time.sleep(0.3)  # the streams are open
        started = _rollback(server)
        delays = []
        for worker in workers:
            assert worker.stdout is not None
            word, at = worker.stdout.readline().split()
            assert word == "switched"
            delays.append(float(at) - started)
        assert max(delays) < 1.0, delays
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


def test_server_restart_and_dropped_stream(server: Server) -> None:
    with PromptClient(
        server.base, API_TOKEN, prompts=["customer-support"], poll_interval=1.0
    ) as client:
        server.stop()
        time.sleep(0.5)
        assert client.get("customer-support").version == "v2.0.0"  # last known, no exception
        server.start()
        _rollback(server)
        assert client.wait_for("customer-support", "v1.9.0", timeout=5)
        assert client.stats.stream_connects >= 2


def test_server_never_reachable_serves_the_fallback() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with PromptClient(
        dead, API_TOKEN, fallbacks={"customer-support": "fallback text"}, timeout=0.5
    ) as client:
        choice = client.get("customer-support")
        assert (choice.version, choice.template, choice.revision) == (
            "fallback",
            "fallback text",
            -1,
        )
        with pytest.raises(PromptUnavailable, match="no fallback configured"):
            client.get("billing")
        client.record("customer-support", "fallback", error=False, latency_ms=5)
        assert client.stats.events_sent == 0


def test_out_of_order_updates_never_win() -> None:
    client = PromptClient("http://127.0.0.1:9", API_TOKEN, start=False)
    new = {
        "prompt": "p",
        "revision": 5,
        "active_version": "v2",
        "split": None,
        "order": ["v2"],
        "templates": {"v2": "two"},
    }
    old = {
        **new,
        "revision": 4,
        "active_version": "v1",
        "order": ["v1"],
        "templates": {"v1": "one"},
    }
    client._apply(new)
    client._apply(old)
    assert client.get("p").version == "v2"
    assert client.stats.stale_updates_ignored == 1


def test_sticky_split_choice_matches_the_server(server: Server) -> None:
    server.api.put(
        "/api/prompts/customer-support/split", json={"split": {"v1.9.0": 70, "v2.0.0": 30}}
    ).raise_for_status()
    with PromptClient(server.base, API_TOKEN) as client:
        deadline = time.monotonic() + 3
        while client.get("customer-support", key="x").revision < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        for user in range(60):
            served = server.api.get(
                "/api/prompts/customer-support/resolve", params={"key": f"user-{user}"}
            ).json()["version"]
            assert client.get("customer-support", key=f"user-{user}").version == served


def test_recorded_outcomes_reach_the_bot(server: Server) -> None:
    with PromptClient(server.base, API_TOKEN, flush_interval=0.1) as client:
        for i in range(120):
            client.record("customer-support", "v2.0.0", error=i % 10 == 0, latency_ms=300)
        deadline = time.monotonic() + 5
        while client.stats.events_sent < 120 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.stats.events_sent == 120
        client.record("customer-support", "v9", error=False, latency_ms=1)  # unknown: refused
        deadline = time.monotonic() + 5
        while client.stats.events_rejected == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.stats.events_rejected == 1
    env = {**os.environ, "DATABASE_URL": server.db_url}
    out = subprocess.run(
        [sys.executable, "-m", "bot", "check", "--once", "--dry-run", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    ).stdout
    assert '"requests": 120' in out


def test_close_is_prompt_and_lets_the_server_go(server: Server) -> None:
    client = PromptClient(server.base, API_TOKEN, prompts=["customer-support"])
    _connected(client)
    started = time.monotonic()
    client.close()
    took = time.monotonic() - started
    assert took < 0.5, took  # was 2 s: the stream thread's read was never woken
    assert not any(t.is_alive() for t in client._threads)
