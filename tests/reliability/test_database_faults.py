"""The database misbehaves: PostgreSQL restarted under load, a SQLite file locked by another
process. Requests get 503 with Retry-After (never a 500, never a dead server), nothing is
half-written, and the checker carries on when the database is back."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy import text as sql

from bot.db import make_engine, normalise_url, read_session
from bot.migrate import upgrade
from bot.models import Prompt, PromptVersion
from bot.models.detection import metric_bucket
from tests.conftest import API_TOKEN, PG_ONLY, PG_URL
from tests.reliability.kit import (
    PROMPT,
    Bot,
    assert_consistent,
    events,
    ledger,
    post_events,
    record,
    seed_prompt,
    wait_rollback,
    wait_settled,
    wait_until,
)
from tests.reliability.tcp_proxy import TcpProxy
from tests.slack_kit import FakeSlack


def _stored(engine: Engine, prompt: str) -> int:
    """Requests the buckets hold for `prompt`."""
    with read_session(engine) as session:
        total = session.execute(
            select(func.coalesce(func.sum(metric_bucket.c.requests), 0))
            .select_from(metric_bucket)
            .join(PromptVersion, PromptVersion.id == metric_bucket.c.version_id)  # type: ignore[arg-type]
            .join(Prompt, Prompt.id == PromptVersion.prompt_id)  # type: ignore[arg-type]
            .where(Prompt.name == prompt)
        ).scalar_one()
    return int(total)


def _seed_load_prompt(bot: Bot) -> None:
    with bot.api() as api:
        assert (
            api.post(
                "/api/prompts/search/versions", json={"version": "v1", "template": "s"}
            ).status_code
            == 201
        )
        assert api.post("/api/prompts/search/deploy", json={"version": "v1"}).status_code == 200


class Load:
    """Threads posting event batches for the `search` prompt, keeping every answer."""

    def __init__(self, bot: Bot, threads: int = 4, batch: int = 50) -> None:
        self.bot, self.batch = bot, batch
        self.answers: list[tuple[float, int, int, dict[str, str], str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self._lock = threading.Lock()
        self.batches = 0

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self) -> None:
        batch = events("v1", self.batch, 0, prompt="search")
        with httpx.Client(
            base_url=self.bot.base, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30
        ) as client:
            while not self._stop.is_set():
                # As a serving app's client does: a refused batch is sent again, same id, until
                # it is answered 200 (also after stop, so no batch is left in doubt).
                body = {"batch_id": uuid.uuid4().hex, "events": batch}
                while True:
                    answer = client.post("/api/events", json=body)
                    with self._lock:
                        self.answers.append(
                            (
                                time.monotonic(),
                                answer.status_code,
                                self.batch,
                                dict(answer.headers),
                                answer.text,
                            )
                        )
                    if answer.status_code == 200:
                        with self._lock:
                            self.batches += 1
                        break
                    time.sleep(0.05)

    def accepted(self) -> int:
        """Events of the batches answered 200 (each batch once, however often it was sent)."""
        return self.batches * self.batch


def _assert_refusals_are_clear(load: Load) -> Counter[int]:
    statuses = Counter(status for _, status, _, _, _ in load.answers)
    assert set(statuses) <= {200, 503}, statuses
    for _, status, _, headers, text in load.answers:
        if status == 503:
            assert headers.get("retry-after"), headers
            assert '"error"' in text and "Traceback" not in text, text
    return statuses


@pytest.mark.parametrize("db_url", PG_ONLY, indirect=True)
def test_postgresql_restart_under_load(
    db_url: str, engine: Engine, slack: FakeSlack, make_bot: Callable[..., Bot]
) -> None:
    parts = urlsplit(db_url)
    upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
    with TcpProxy(upstream) as proxy:
        proxied = db_url.replace(parts.netloc.split("@")[-1], f"127.0.0.1:{proxy.port}", 1)
        bot = make_bot("pg-restart", url=proxied)
        bot.start()
        seed_prompt(bot)
        _seed_load_prompt(bot)
        with Load(bot) as load:
            time.sleep(2)
            proxy.cut()
            cut_at = time.monotonic()
            time.sleep(5)
            proxy.restore()
            restored_at = time.monotonic()
            wait_until(
                lambda: any(at > restored_at and s == 200 for at, s, *_ in load.answers),
                timeout=30,
                what="a request to succeed after the restart",
            )
            back_s = time.monotonic() - restored_at
            time.sleep(2)
        assert bot.alive()
        statuses = _assert_refusals_are_clear(load)
        assert statuses[503] >= 1 and statuses[200] >= 1, statuses
        assert _stored(engine, "search") == load.accepted(), "every 200 stored, nothing else"
        # The checker carries on: a bad version is still rolled back.
        sent = time.monotonic()
        assert post_events(bot, events("v2.0.0", 1000, 80)).status_code == 200
        wait_rollback(engine, slack, timeout=15)
        record(
            "postgresql restart under load",
            outage_s=round(restored_at - cut_at, 1),
            connections_reset=proxy.reset,
            connections_refused=proxy.refused,
            requests=sum(statuses.values()),
            answered_503=statuses[503],
            answered_500=0,
            first_200_after_restart_s=round(back_s, 2),
            rollback_after_restart_s=round(time.monotonic() - sent, 2),
            half_written_batches=0,
            retries_already_stored=sum('"duplicate":true' in a[4] for a in load.answers),
        )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_locked_by_another_process_answers_503_and_changes_nothing(
    db_url: str, engine: Engine, slack: FakeSlack, make_bot: Callable[..., Bot]
) -> None:
    bot = make_bot("sqlite-locked")
    bot.start()
    seed_prompt(bot)
    _seed_load_prompt(bot)
    path = db_url.split("///", 1)[1]
    holder = sqlite3.connect(path, isolation_level=None, timeout=10)
    holder.execute("BEGIN EXCLUSIVE")  # another process keeps the write lock past busy_timeout
    try:
        with bot.api() as api:
            started = time.monotonic()
            refused = api.post("/api/rollback", json={"prompt": "customer-support"})
            waited = time.monotonic() - started
            read = api.get("/api/prompts/customer-support")
        ingest = post_events(bot, events("v1", 50, 0, prompt="search"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] and "locked" in refused.json()["detail"]
    assert ingest.status_code == 503
    assert read.status_code == 200  # WAL: readers are not blocked by the writer
    found = ledger(engine, slack)
    assert found.active == "v2.0.0" and not found.rollbacks
    assert _stored(engine, "search") == 0
    # Released: the same request works, and the checker carries on.
    assert post_events(bot, events("v2.0.0", 1000, 80)).status_code == 200
    wait_rollback(engine, slack, timeout=15)
    record(
        "sqlite locked by another process",
        write_answered_503_after_s=round(waited, 2),
        changed_while_locked=0,
    )


@contextmanager
def _private_database(name: str) -> Iterator[str]:
    """A migrated database of this test's own (ALTER DATABASE on it touches nobody else)."""
    assert PG_URL is not None
    admin = create_engine(normalise_url(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.execute(sql(f"CREATE DATABASE {name}"))
    url = urlunsplit(urlsplit(PG_URL)._replace(path=f"/{name}"))
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def _fail_over(url: str, *, read_only: bool) -> None:
    """What a failover looks like to the bot: every session is cut, and the new ones land on a
    server that is read-only. Failing back, the setting is reset but no session is cut: the
    bot's pooled read-only sessions must be noticed and replaced by the bot itself."""
    name = urlsplit(url).path.lstrip("/")
    assert PG_URL is not None  # connected to another database: this one may be read-only
    admin = create_engine(normalise_url(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        setting = "SET default_transaction_read_only = on" if read_only else "RESET ALL"
        conn.execute(sql(f"ALTER DATABASE {name} {setting}"))
        if read_only:
            conn.execute(
                sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
    admin.dispose()


@pytest.mark.parametrize("db_url", PG_ONLY, indirect=True)
def test_postgresql_read_only_failover_answers_503_and_recovers_by_itself(
    db_url: str, slack: FakeSlack, make_bot: Callable[..., Bot]
) -> None:
    with _private_database(f"rollback_bot_ro_{os.getpid()}") as url:
        engine = make_engine(url)
        bot = make_bot("pg-read-only", url=url)
        bot.start()
        seed_prompt(bot)
        _seed_load_prompt(bot)
        manual: list[tuple[str, int, str]] = []
        with Load(bot) as load, bot.api() as api:
            time.sleep(1)
            _fail_over(url, read_only=True)
            down_at = time.monotonic()
            time.sleep(1)
            health = httpx.get(f"{bot.base}/healthz", timeout=5).json()
            manual.append(
                ("rollback", *_answer(api.post("/api/rollback", json={"prompt": PROMPT})))
            )
            manual.append(
                (
                    "register",
                    *_answer(
                        api.post(
                            f"/api/prompts/{PROMPT}/versions",
                            json={"version": "v2.1.0", "template": "t"},
                        )
                    ),
                )
            )
            read = api.get(f"/api/prompts/{PROMPT}")
            time.sleep(3)
            _fail_over(url, read_only=False)
            back_at = time.monotonic()
            wait_until(
                lambda: any(at > back_at and s == 200 for at, s, *_ in load.answers),
                timeout=30,
                what="ingestion to succeed after the failback",
            )
            back_s = time.monotonic() - back_at
        assert bot.alive()
        assert health["database"]["writable"] is False and health["status"] == "degraded", health
        assert read.status_code == 200  # reads go on while the database is read-only
        for what, status, text in manual:
            assert status == 503 and "read-only" in text, (what, status, text)
        statuses = _assert_refusals_are_clear(load)
        assert statuses[503] >= 1 and statuses[200] >= 1, statuses
        assert _stored(engine, "search") == load.accepted(), "every 200 stored, nothing else"
        # Pooled sessions opened read-only were replaced: writes work again without a restart,
        # and the outbox and the checker carry on (a bad version is rolled back, its card sent).
        with bot.api() as api:
            assert (
                api.post(
                    f"/api/prompts/{PROMPT}/versions", json={"version": "v2.1.0", "template": "t"}
                ).status_code
                == 201
            )
        assert httpx.get(f"{bot.base}/healthz", timeout=5).json()["database"]["writable"] is True
        sent = time.monotonic()
        assert post_events(bot, events("v2.0.0", 1000, 80)).status_code == 200
        wait_rollback(engine, slack, timeout=15)
        found = wait_settled(engine, slack, timeout=60)
        counts = assert_consistent(found)
        engine.dispose()
        record(
            "postgresql read-only (failover) under load",
            read_only_s=round(back_at - down_at, 1),
            requests=sum(statuses.values()),
            answered_503=statuses[503],
            answered_500=0,
            first_200_after_failback_s=round(back_s, 2),
            rollback_after_failback_s=round(time.monotonic() - sent, 2),
            **counts,
        )


def _answer(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.text
