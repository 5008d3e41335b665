"""The routing change feed: changes are pushed at commit (this process) and by LISTEN/NOTIFY
(other processes, PostgreSQL); a cheap poll catches the rest; a change made in this process is
never hidden by a stale cache."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text

from bot import registry
from bot.api.feed import ChangeFeed
from bot.api.notify_pg import APPLICATION_NAME
from bot.client import PromptClient
from bot.db import make_engine, read_session, write_session
from bot.models import RoutingState, utcnow
from bot.registry import deploy, events
from tests.conftest import API_TOKEN, OPERATOR, PG_ONLY, PG_URL, make_prompt, roll_back
from tests.test_serve import free_port

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "customer-support"


class GatedFeed(ChangeFeed):
    """A feed whose every read, once it has read, waits for the test to let it answer."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, poll_seconds=30, listen=False)
        self.reading = threading.Semaphore(0)  # released by each read that has read
        self.answer = threading.Semaphore(0)  # one release lets one read answer
        self.answered: list[list[RoutingState]] = []  # what each read found, once handled
        self.handled = threading.Event()  # set when the feed has handled a read's answer

    def _read(
        self, names: list[str], poll: bool
    ) -> tuple[list[RoutingState], tuple[int, int] | None]:
        found = super()._read(names, poll)
        self.reading.release()
        assert self.answer.acquire(timeout=10)
        return found

    def _publish(self, changed: list[RoutingState]) -> None:
        super()._publish(changed)
        self.answered.append(list(changed))
        self.handled.set()


async def _next(queue: asyncio.Queue[RoutingState | None], timeout: float = 10) -> RoutingState:
    state = await asyncio.wait_for(queue.get(), timeout)
    assert state is not None
    return state


def test_a_read_answering_after_a_change_made_here_never_puts_the_older_state_back(
    engine: Engine,
) -> None:
    make_prompt(engine)  # v2.0.0 live

    async def scenario() -> tuple[
        RoutingState, RoutingState | None, RoutingState | None, int, list[list[RoutingState]]
    ]:
        feed = GatedFeed(engine)
        feed.start()
        for _ in range(100):  # the first read (everything, not gated)
            if feed.current(PROMPT) is not None:
                break
            await asyncio.sleep(0.05)
        queue = feed.subscribe()
        cached = feed.current(PROMPT)
        assert cached is not None
        announced = cached.revision + 1
        feed._notified(f"{announced} {PROMPT}")  # another process announces a change: a read...
        assert await asyncio.to_thread(feed.reading.acquire, True, 10)  # ... and has v2.0.0
        await asyncio.to_thread(roll_back, engine)  # this process rolls back meanwhile
        pushed = await _next(queue)  # fanned out at commit, while the read still waits
        during = feed.current(PROMPT)
        feed.answer.release()  # the read answers v2.0.0: older than what is cached
        assert await asyncio.to_thread(feed.handled.wait, 10)  # and the feed has handled it
        after, late = feed.current(PROMPT), queue.qsize()
        await feed.stop()
        return pushed, during, after, late, feed.answered

    pushed, during, after, late, answered = asyncio.run(scenario())
    assert pushed.active_version == "v1.9.0"
    assert [[s.active_version for s in read] for read in answered] == [["v2.0.0"]], answered
    # The rollback is cached at commit, while the read still waits; the read then answers the
    # older v2.0.0, which neither replaces it nor is published.
    assert during is not None and during.active_version == "v1.9.0", during
    assert after is not None and after.active_version == "v1.9.0"
    assert after.revision == pushed.revision
    assert late == 0


def test_a_state_payload_that_is_not_a_routing_state_is_ignored_and_said(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    feed = ChangeFeed(engine, poll_seconds=30, listen=False)
    queue = feed.subscribe()
    for payload in ("not json", '{"prompt": "customer-support", "revision": "x"}', "[]"):
        feed._state_notified(payload)  # what a foreign NOTIFY on the state channel would send
    assert feed.current(PROMPT) is None and queue.empty()
    assert caplog.text.count("ignored a state payload that is not a routing state") == 3


def test_a_change_made_here_is_cached_before_its_commit_returns(engine: Engine) -> None:
    make_prompt(engine)  # v2.0.0 live

    async def scenario() -> tuple[RoutingState | None, RoutingState | None]:
        feed = GatedFeed(engine)  # every read waits for the test: none answers here
        feed.start()
        for _ in range(100):
            if feed.current(PROMPT) is not None:
                break
            await asyncio.sleep(0.05)
        before = feed.current(PROMPT)
        await asyncio.to_thread(roll_back, engine)
        right_after = feed.current(PROMPT)  # no read has answered since the commit
        feed.answer.release()
        await feed.stop()
        return before, right_after

    before, right_after = asyncio.run(scenario())
    assert before is not None and before.active_version == "v2.0.0"
    # /resolve answers the rollback as soon as its API answer is sent: the state committed is
    # the state cached, with the serving version's template.
    assert right_after is not None and right_after.active_version == "v1.9.0"
    assert right_after.templates == {"v1.9.0": "customer-support v1.9.0: {q}"}
    assert right_after.revision == before.revision + 1


def test_a_change_made_in_this_process_is_pushed_without_waiting_for_the_poll(
    engine: Engine,
) -> None:
    make_prompt(engine)

    async def scenario() -> tuple[RoutingState, RoutingState, float]:
        feed = ChangeFeed(engine, poll_seconds=30, listen=False)  # no poll, no NOTIFY here
        feed.start()
        await asyncio.sleep(0.5)  # the first read (everything) is done
        queue = feed.subscribe()
        started = time.monotonic()
        await asyncio.to_thread(roll_back, engine)  # committed by a worker thread
        rolled_back = await _next(queue)
        await asyncio.to_thread(_deploy, engine, "v2.0.0")
        deployed = await _next(queue)
        elapsed = time.monotonic() - started
        await feed.stop()
        return rolled_back, deployed, elapsed

    rolled_back, deployed, elapsed = asyncio.run(scenario())
    assert (rolled_back.active_version, deployed.active_version) == ("v1.9.0", "v2.0.0")
    assert deployed.revision == rolled_back.revision + 1
    assert elapsed < 10  # generous: the poll would have taken 30 s


def test_the_state_pushed_at_commit_is_the_state_read_back(engine: Engine) -> None:
    make_prompt(engine, versions=("v1", "v2", "v3"))
    pushed: list[RoutingState] = []

    def heard(_url: object, changed: dict[str, RoutingState]) -> None:
        pushed.extend(changed.values())

    def split(shares: dict[str, int]) -> None:
        with write_session(engine) as session:
            registry.set_split(
                session=session,
                prompt=PROMPT,
                split=shares,
                actor=OPERATOR,
                now=utcnow(),
                force=True,
            )

    events.add_listener(heard)
    try:
        checks = []
        for change in (
            lambda: split({"v3": 10, "v1": 60, "v2": 30}),  # the active one keeps a share
            lambda: split({"v1": 70, "v2": 30}),  # the active one dropped
            lambda: roll_back(engine),  # in a split: the newest serving one is the suspect
            lambda: _deploy(engine, "v2"),
            lambda: split({"v1": 50, "v2": 50}),  # v2 marked bad, forced
        ):
            change()
            with read_session(engine) as session:
                (read,) = registry.routing_states(session=session, names=[PROMPT])
            checks.append((pushed[-1], read))
    finally:
        events.remove_listener(heard)
    assert len(pushed) == 5
    for sent, read in checks:
        assert sent.model_dump_json() == read.model_dump_json()


def _deploy(engine: Engine, version: str, prompt: str = PROMPT) -> None:
    with write_session(engine) as session:
        deploy(
            session=session,
            prompt=prompt,
            version=version,
            actor=OPERATOR,
            now=utcnow(),
            force=True,
        )


def test_another_process_change_is_caught_by_the_poll_even_below_the_highest_revision(
    engine: Engine, db_url: str
) -> None:
    # "busy" has the highest revision (5); the other process rolls "customer-support" back
    # from revision 3 to 4, which leaves the highest revision where it was.
    make_prompt(engine, "busy", versions=("v1", "v2", "v3", "v4", "v5"))
    make_prompt(engine)

    async def scenario() -> RoutingState:
        feed = ChangeFeed(engine, poll_seconds=0.2, listen=False)
        feed.start()
        await asyncio.sleep(0.5)
        queue = feed.subscribe()
        code = (
            "from bot.db import make_engine; from tests.conftest import roll_back; "
            f"roll_back(make_engine({db_url!r}))"
        )
        await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60
        )
        state = await _next(queue)
        await feed.stop()
        return state

    state = asyncio.run(scenario())
    assert (state.prompt, state.active_version, state.revision) == (PROMPT, "v1.9.0", 4)


# --- across processes on PostgreSQL: LISTEN/NOTIFY --------------------------------------------


class CountingFeed(ChangeFeed):
    """A feed that LISTENs, polls every 30 s and counts its reads of changed prompts."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, poll_seconds=30, safety_poll_seconds=30)
        self.reads = 0

    def _read(
        self, names: list[str], poll: bool
    ) -> tuple[list[RoutingState], tuple[int, int] | None]:
        self.reads += 1
        return super()._read(names, poll)


@pytest.mark.postgresql
@pytest.mark.parametrize("db_url", PG_ONLY, indirect=True)
def test_another_server_publishes_the_notified_state_without_reading_it(
    engine: Engine, db_url: str
) -> None:
    make_prompt(engine)
    long_template = "Answer as our support agent. " * 400  # 11,600 bytes: over NOTIFY's limit
    with write_session(engine) as session:
        for label in ("v1", "v2"):
            registry.create_version(
                session=session,
                prompt="long",
                version=label,
                template=f"{label} {long_template}",
                created_by="tester",
                now=utcnow(),
            )
    for label in ("v1", "v2"):
        _deploy(engine, label, prompt="long")
    # The feed's own URL differs from the changing engine's: to it, the changes come from
    # another server, heard only by NOTIFY (its polls are 30 s apart).
    other = make_engine(db_url + ("&" if "?" in db_url else "?") + "application_name=other")

    async def scenario() -> tuple[RoutingState, int, RoutingState, int]:
        feed = CountingFeed(other)
        feed.start()
        assert feed.listener is not None
        for _ in range(200):
            if feed.listener.listening:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the poll that follows LISTEN is done
        queue = feed.subscribe()
        before = feed.reads
        await asyncio.to_thread(roll_back, engine)
        small = await _next(queue)
        small_reads = feed.reads - before
        await asyncio.to_thread(_deploy, engine, "v1", "long")
        big = await _next(queue)
        big_reads = feed.reads - before - small_reads
        await feed.stop()
        return small, small_reads, big, big_reads

    try:
        small, small_reads, big, big_reads = asyncio.run(scenario())
    finally:
        other.dispose()
    # The state travelled in the NOTIFY: published as committed, with no read.
    assert (small.prompt, small.active_version, small.revision) == (PROMPT, "v1.9.0", 4)
    assert small.templates == {"v1.9.0": "customer-support v1.9.0: {q}"}
    assert small_reads == 0
    # Too long for a payload: announced by revision and name, then read.
    assert (big.prompt, big.active_version) == ("long", "v1")
    assert big.templates == {"v1": f"v1 {long_template}"}
    assert big_reads >= 1


SLOW_POLL = {"STREAM_POLL_SECONDS": "30", "STREAM_SAFETY_POLL_SECONDS": "30"}


class Replica:
    """A `rollback-bot serve` process whose polls are 30 s apart: only NOTIFY can be quick."""

    def __init__(self, db_url: str, log_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = log_path.open("w")
        env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "ROLLBACK_API_TOKEN": API_TOKEN,
            "PORT": str(self.port),
            "CHECKER_ENABLED": "false",
            "LOG_LEVEL": "INFO",
            **SLOW_POLL,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "serve"],
            env=env,
            cwd=ROOT,
            text=True,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.api = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while httpx_ok(self.base) is False:
            assert self.proc.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, self.log_path.read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
        self.api.close()
        self.log.close()


def httpx_ok(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def replicas(db_url: str, tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    pair = (Replica(db_url, tmp_path / "a.log"), Replica(db_url, tmp_path / "b.log"))
    try:
        for replica in pair:
            replica.wait_ready()
        yield pair
    finally:
        for replica in pair:
            replica.stop()


def _listener_pids(proc: subprocess.Popen[str]) -> list[int]:
    assert PG_URL is not None
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with admin.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE application_name = :name AND query LIKE 'LISTEN %'"
                ),
                {"name": f"{APPLICATION_NAME} {proc.pid}"},
            )
            return [int(pid) for (pid,) in rows]
    finally:
        admin.dispose()


def _wait_listening(replica: Replica, other_than: int | None = None) -> int:
    deadline = time.monotonic() + 30
    while True:
        pids = [pid for pid in _listener_pids(replica.proc) if pid != other_than]
        if pids:
            return pids[0]
        assert time.monotonic() < deadline, replica.log_path.read_text()
        time.sleep(0.1)


@pytest.mark.parametrize("db_url", PG_ONLY, indirect=True)
def test_a_rollback_through_one_replica_reaches_the_other_replicas_stream_by_notify(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    for label in ("v1.9.0", "v2.0.0"):
        a.api.post(
            f"/api/prompts/{PROMPT}/versions", json={"version": label, "template": label}
        ).raise_for_status()
        a.api.post(f"/api/prompts/{PROMPT}/deploy", json={"version": label}).raise_for_status()
    listener = _wait_listening(b)
    with PromptClient(b.base, API_TOKEN, prompts=[PROMPT]) as client:
        assert client.wait_for(PROMPT, "v2.0.0", timeout=10)
        polls = client.stats.polls  # the client's first look; from now on only the stream
        a.api.post("/api/rollback", json={"prompt": PROMPT}).raise_for_status()
        assert client.wait_for(PROMPT, "v1.9.0", timeout=5), b.log_path.read_text()
        # B's /resolve cache took it too (B's poll is 30 s away).
        assert b.api.get(f"/api/prompts/{PROMPT}/resolve").json()["version"] == "v1.9.0"

        # Cut B's LISTEN connection (only that backend): it reconnects and pushes again.
        assert PG_URL is not None
        admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": listener})
        admin.dispose()
        _wait_listening(b, other_than=listener)
        a.api.post(
            f"/api/prompts/{PROMPT}/deploy", json={"version": "v2.0.0", "force": True}
        ).raise_for_status()
        assert client.wait_for(PROMPT, "v2.0.0", timeout=5), b.log_path.read_text()
        assert (client.stats.polls, client.stats.stream_connects) == (polls, 1)
    b.stop()
    log = b.log_path.read_text()
    assert "LISTEN connection lost" in log, log
    assert "LISTEN connection restored" in log, log
