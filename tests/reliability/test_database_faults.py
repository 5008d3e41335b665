"""The database misbehaves: PostgreSQL restarted under load, a SQLite file locked by another
process. Requests get 503 with Retry-After (never a 500, never a dead server), nothing is
half-written, and the checker carries on when the database is back."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import Engine, func, select

from bot.db import read_session
from bot.models import Prompt, PromptVersion
from bot.models.detection import metric_bucket
from tests.conftest import API_TOKEN, PG_ONLY
from tests.reliability.kit import (
    Bot,
    events,
    ledger,
    post_events,
    record,
    seed_prompt,
    wait_rollback,
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
