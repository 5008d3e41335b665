"""One checker pass over many live prompt versions, against a raw reference in the same run.

    python benchmarks/checker_tick.py [--versions 10000] [--runs 3] [--postgres URL] [--profile]

Fills a fresh database in bulk: every prompt has v1 (an hour of baseline traffic before the
switch) and v2 (live for 30 min, 6 minute-buckets in the window); 0.5% of the prompts have an
8% error rate and get rolled back in the first pass. Times the first pass (cold baseline cache,
incidents and rollbacks) and then, `--runs` times, a steady pass of the checker and one of the
raw reference (`_checker_reference.py`: the same reads on the DB-API cursor and the same
judgement in plain Python), checking that both reach the same action for every version. The
ratio is reference time / checker time: 1.0 would be as fast as the raw reference.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from _checker_reference import Reference
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


def spread(values: list[float], unit: str = " s", digits: int = 2) -> str:
    """min / median / max."""
    return (
        " / ".join(f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values)))
        + unit
    )


def run(name: str, url: str, versions: int, runs: int, profile: bool) -> None:
    started = time.perf_counter()
    fill(url, versions)
    filled = time.perf_counter() - started
    engine = make_engine(url)
    policies = load_policies(POLICIES)
    checker = Checker(
        engine=engine,
        policies=policies,
        sources={"builtin": BuiltinSource(engine)},
        notifier=LogNotifier(),
    )
    reference = Reference(engine, policies)
    first = checker.tick()
    reference.judge(checker.clock())  # its baselines, as the checker's first pass cached them
    project: list[float] = []
    raw: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        expected = reference.judge(checker.clock())
        raw.append(time.perf_counter() - started)
        report = checker.tick()
        project.append(report.duration_s)
        got = {(d.prompt, d.version): d.action.value for d in report.decisions}
        if got != expected:
            wrong = [k for k in expected if got.get(k) != expected[k]][:5]
            raise SystemExit(f"the reference disagrees with the checker on {wrong}")
    ratios = [r / p for r, p in zip(raw, project, strict=True)]
    print(
        f"{name:<10} {len(first.decisions):>6} versions (filled in {filled:.0f} s); first pass "
        f"{first.duration_s:.2f} s ({len(first.rollbacks)} rollbacks, {len(first.notices)} "
        f"notices)\n  steady pass {spread(project)}; reference {spread(raw)}; "
        f"ratio {spread(ratios, 'x')} (per run: "
        + ", ".join(f"{p:.2f}/{r:.2f}" for p, r in zip(project, raw, strict=True))
        + ")"
    )
    if profile:
        profiler = cProfile.Profile()
        profiler.runcall(checker.tick)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--versions", "--prompts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sqlite", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--profile", action="store_true", help="cProfile one more steady pass")
    parser.add_argument("--postgres", default=os.environ.get("TEST_DATABASE_URL"))
    args = parser.parse_args()
    logging.getLogger("bot.notify").setLevel(logging.ERROR)
    print(header())
    if args.sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            run("sqlite", f"sqlite:///{tmp}/tick.db", args.versions, args.runs, args.profile)
    if args.postgres:
        with scratch_schema(args.postgres, SCHEMA) as url:
            run("postgresql", url, args.versions, args.runs, args.profile)


if __name__ == "__main__":
    main()
