"""One checker pass over 10,000 live prompt versions (target: <= 5 s).

    python benchmarks/checker_tick.py [--prompts 10000] [--postgres URL]

Fills a fresh database in bulk: every prompt has v1 (an hour of baseline traffic before the
switch) and v2 (live for 30 min, 6 minute-buckets in the window); 0.5% of the prompts have an
8% error rate and get rolled back in the first pass. Times the first pass (cold baseline cache,
incidents and rollbacks) and then steady passes. Uses set-based queries: no query per prompt.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from _server import header, scratch_schema
from sqlalchemy import insert

from bot.db import make_engine, write_session
from bot.judging.checker import Checker
from bot.metrics.builtin import BuiltinSource
from bot.metrics.ingest import minute_of
from bot.migrate import upgrade
from bot.models import HISTOGRAM_COLUMNS, Prompt, PromptVersion, Routing, metric_bucket, utcnow
from bot.notify import LogNotifier
from bot.policy import load_policies

POLICIES = Path(__file__).resolve().parent.parent / "policies"
SCHEMA = "rollback_bot_tick_bench"


def fill(url: str, prompts: int) -> None:
    engine = make_engine(url)
    upgrade(engine)
    now = utcnow()
    switched = now - timedelta(minutes=30)
    rng = random.Random(1)
    hist = dict.fromkeys(HISTOGRAM_COLUMNS, 0)
    with write_session(engine) as session:
        session.execute(
            insert(Prompt),
            [{"id": i, "name": f"prompt-{i}", "created_at": now} for i in range(1, prompts + 1)],
        )
        session.execute(
            insert(PromptVersion),
            [
                {
                    "id": 2 * i - 1 + k,
                    "prompt_id": i,
                    "label": f"v{k + 1}",
                    "template": "t",
                    "created_by": "bench",
                    "created_at": now,
                    "health": "unknown",
                    "last_active_at": switched if k == 0 else None,
                }
                for i in range(1, prompts + 1)
                for k in (0, 1)
            ],
        )
        session.execute(
            insert(Routing),
            [
                {
                    "prompt_id": i,
                    "active_version_id": 2 * i,
                    "previous_version_id": 2 * i - 1,
                    "activated_at": switched,
                    "updated_at": switched,
                    "revision": 2,
                }
                for i in range(1, prompts + 1)
            ],
        )
        rows = []
        for i in range(1, prompts + 1):
            bad = i % 200 == 0
            for m in range(0, 60, 5):
                rows.append(
                    {
                        "version_id": 2 * i - 1,
                        "minute": minute_of(switched - timedelta(minutes=m + 1)),
                        "requests": 100,
                        "errors": 1,
                        "latency_sum_ms": 40000.0,
                        "quality_sum": 80.0,
                        "quality_count": 100,
                        **hist,
                        "h06": 100,
                    }
                )
            for m in range(6):
                errors = 8 if bad else rng.randint(0, 1)
                rows.append(
                    {
                        "version_id": 2 * i,
                        "minute": minute_of(now - timedelta(minutes=m)),
                        "requests": 100,
                        "errors": errors,
                        "latency_sum_ms": 40000.0,
                        "quality_sum": 80.0,
                        "quality_count": 100,
                        **hist,
                        "h06": 100,
                    }
                )
            if len(rows) >= 20000:
                session.execute(insert(metric_bucket), rows)
                rows = []
        if rows:
            session.execute(insert(metric_bucket), rows)
    engine.dispose()


def run(name: str, url: str, prompts: int, passes: int) -> None:
    started = time.perf_counter()
    fill(url, prompts)
    filled = time.perf_counter() - started
    engine = make_engine(url)
    checker = Checker(
        engine=engine,
        policies=load_policies(POLICIES),
        sources={"builtin": BuiltinSource(engine)},
        notifier=LogNotifier(),
    )
    first = checker.tick()
    steady = [checker.tick().duration_s for _ in range(passes)]
    print(
        f"{name:<11} {len(first.decisions):>6} versions (filled in {filled:.1f} s): "
        f"first pass {first.duration_s:.2f} s ({len(first.rollbacks)} rollbacks, "
        f"{len(first.notices)} notices); steady passes {min(steady):.2f}-{max(steady):.2f} s"
    )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--postgres", default=os.environ.get("TEST_DATABASE_URL"))
    args = parser.parse_args()
    logging.getLogger("bot.notify").setLevel(logging.ERROR)
    print(header())
    with tempfile.TemporaryDirectory() as tmp:
        run("sqlite", f"sqlite:///{tmp}/tick.db", args.prompts, args.passes)
    if args.postgres:
        with scratch_schema(args.postgres, SCHEMA) as url:
            run("postgresql", url, args.prompts, args.passes)


if __name__ == "__main__":
    main()
