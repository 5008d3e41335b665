"""Rollback transaction latency: the flow every surface runs (lifecycle.rollback: lock,
compare-and-set, health mark, audit row, verification, incidents, rollouts), then commit.

    python benchmarks/rollback_latency.py [--n 500] [--postgres URL]

Uses a fresh SQLite file (WAL, synchronous=FULL) and, when a PostgreSQL URL is given
(or TEST_DATABASE_URL is set), a scratch schema there. Prints p50/p99/max per backend, the
statements the rollback's transaction sends, and the CPU time of this process per rollback.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from datetime import timedelta

from _server import header, scratch_schema
from sqlalchemy import event

from bot import registry
from bot.db import make_engine, write_session
from bot.incidents import lifecycle
from bot.migrate import upgrade
from bot.models import Trigger, utcnow
from bot.notify import LogNotifier
from bot.registry.changes import Actor

ACTOR = Actor(operator="bench", trigger=Trigger.API)
SCHEMA = "rollback_bot_bench"


def measure(url: str, n: int) -> tuple[list[float], int, float]:
    """Time `n` rollbacks; a forced deploy between them (not timed) re-arms the bad version.
    Returns the timings (ms), the statements of one rollback and its CPU time (ms)."""
    engine = make_engine(url)
    upgrade(engine)
    with write_session(engine) as session:
        for label in ("v1.9.0", "v2.0.0"):
            registry.create_version(
                session=session,
                prompt="customer-support",
                version=label,
                template=label * 50,
                created_by="bench",
                now=utcnow(),
            )
    with write_session(engine) as session:
        registry.deploy(
            session=session, prompt="customer-support", version="v1.9.0", actor=ACTOR, now=utcnow()
        )
    notifier = LogNotifier()
    timings, cpu = [], 0.0
    statements = [0]
    counting = [False]

    @event.listens_for(engine, "before_cursor_execute")
    def count(*_args: object) -> None:
        if counting[0]:
            statements[0] += 1

    for _ in range(n):
        with write_session(engine) as session:
            lifecycle.deploy(
                session,
                prompt="customer-support",
                version="v2.0.0",
                actor=ACTOR,
                notifier=notifier,
                now=utcnow(),
                force=True,
            )
        statements[0], counting[0] = 0, True
        started, cpu_started = time.perf_counter(), time.process_time()
        with write_session(engine) as session:
            lifecycle.rollback(
                session,
                prompt="customer-support",
                target=None,
                actor=ACTOR,
                notifier=notifier,
                now=utcnow(),
                reason="benchmark",
                dedup_window=timedelta(0),
            )
        timings.append((time.perf_counter() - started) * 1000)
        cpu += time.process_time() - cpu_started
        counting[0] = False
    engine.dispose()
    return timings, statements[0], cpu / n * 1000


def report(name: str, measured: tuple[list[float], int, float]) -> None:
    timings, statements, cpu_ms = measured
    ordered = sorted(timings)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    print(
        f"{name:<11} n={len(ordered):<5} p50={statistics.median(ordered):6.2f} ms  "
        f"p99={p99:6.2f} ms  max={ordered[-1]:6.2f} ms  "
        f"{statements} statements (with BEGIN), CPU {cpu_ms:.2f} ms a rollback"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--postgres", default=os.environ.get("TEST_DATABASE_URL"))
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the log notifier's lines are not the transaction
    print(header())
    with tempfile.TemporaryDirectory() as tmp:
        report("sqlite", measure(f"sqlite:///{tmp}/bench.db", args.n))
    if args.postgres:
        with scratch_schema(args.postgres, SCHEMA) as url:
            report("postgresql", measure(url, args.n))


if __name__ == "__main__":
    main()
