"""Whole scenarios on SQLite: simulated traffic through ingestion, the built-in source and checker.

Each run checks every 30 s for 30 simulated minutes after v2.0.0 replaces v1.9.0 (10 for the
error regression, whose rollback is due within 2); runs are spread over a few processes so the
file stays within about half a minute.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterator
from concurrent.futures import Executor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.simulator import (
    ERRORS_8PCT,
    ERRORS_8PCT_BUSY,
    HEALTHY,
    LATENCY_X2,
    LOW_TRAFFIC,
    QUALITY_DROP_25PCT,
    Outcome,
    Sent,
    arrivals,
    simulate,
    simulate_many,
    worker_pool,
)

QUIET_SEEDS = range(20)  # scenarios that must never act: many seeds
ERROR_SEEDS = range(10)
ALERT_SEEDS = range(5)
OPENED = ("incident_opened", "incident_escalated")


@pytest.fixture(scope="module")
def pool() -> Iterator[Executor]:
    with worker_pool() as executor:
        yield executor


@pytest.fixture(scope="module")
def error_runs(pool: Executor, tmp_path_factory: pytest.TempPathFactory) -> list[Outcome]:
    # Ten minutes: the rollback is due within two; the rest shows the restored version stays.
    folder = tmp_path_factory.mktemp("errors")
    return simulate_many(ERRORS_8PCT, ERROR_SEEDS, folder=folder, pool=pool, minutes=10)


def _summary(outcomes: list[Outcome]) -> dict[int, object]:
    return {
        o.seed: (o.rollback_s, [(n.kind, n.severity, n.action, n.seconds) for n in o.notices])
        for o in outcomes
    }


def _opened(outcome: Outcome, severity: str, action: str) -> list[Sent]:
    return [
        n
        for n in outcome.notices
        if n.kind in OPENED and (n.severity, n.action, n.version) == (severity, action, "v2.0.0")
    ]


def test_generated_traffic_has_the_scenario_figures() -> None:
    rng = random.Random(7)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    healthy = arrivals(HEALTHY, rng, version="v2.0.0", start=start, seconds=3600)
    slow = arrivals(LATENCY_X2, rng, version="v2.0.0", start=start, seconds=3600)
    assert 17_600 < len(healthy) < 18_400  # 5/s for an hour, Poisson: sd ~134
    assert all(start <= e.ts < start.replace(hour=1) for e in healthy)
    assert sum(e.error for e in healthy) / len(healthy) == pytest.approx(0.002, abs=0.001)
    assert statistics.median(e.latency_ms for e in healthy) == pytest.approx(400, rel=0.02)
    assert statistics.median(e.latency_ms for e in slow) == pytest.approx(880, rel=0.02)
    quality = [e.quality for e in healthy]
    assert all(0 <= q <= 1 for q in quality)
    assert statistics.fmean(quality) == pytest.approx(0.80, abs=0.002)


def test_a_seed_fixes_a_run(tmp_path: Path) -> None:
    first, again = (
        simulate(ERRORS_8PCT, seed=3, minutes=3, db_path=tmp_path / f"{name}.db")
        for name in ("first", "again")
    )
    assert first == again
    assert first.events > 18_000 and first.notices


def test_healthy_noise_is_never_rolled_back(pool: Executor, tmp_path: Path) -> None:
    outcomes = simulate_many(HEALTHY, QUIET_SEEDS, folder=tmp_path, pool=pool)
    assert [o.seed for o in outcomes if o.rolled_back] == [], _summary(outcomes)
    assert all(o.events > 20_000 for o in outcomes)  # an hour of v1.9.0 + 30 min at 5/s


def test_very_low_traffic_never_opens_an_incident(pool: Executor, tmp_path: Path) -> None:
    outcomes = simulate_many(LOW_TRAFFIC, QUIET_SEEDS, folder=tmp_path, pool=pool)
    assert [o.seed for o in outcomes if o.rolled_back] == [], _summary(outcomes)
    # About 15 requests per 5-minute window, far below min_requests=50: nothing to judge.
    assert [(o.seed, o.incidents) for o in outcomes if o.incidents or o.notices] == []
    assert all(o.events < 1_000 for o in outcomes)


def test_8pct_errors_are_always_rolled_back_once(error_runs: list[Outcome]) -> None:
    assert [o.seed for o in error_runs if not o.rolled_back] == [], _summary(error_runs)
    for outcome in error_runs:
        rollbacks = [n for n in outcome.notices if n.kind == "rolled_back"]
        assert [(n.version, n.severity, n.rule) for n in rollbacks] == [
            ("v2.0.0", "critical", "error_rate_critical")
        ]
        # Afterwards the restored v1.9.0 serves healthy traffic: nobody is paged about it.
        later = [n for n in outcome.notices if n.seconds > rollbacks[0].seconds]
        assert all(n.severity in ("none", "medium") for n in later), _summary([outcome])


def test_8pct_errors_at_5_rps_are_rolled_back_within_four_minutes(
    error_runs: list[Outcome],
) -> None:
    # At 5 req/s only ~600 requests exist by 2:00; an unlucky sample (6.4% observed) is not yet
    # significantly above 5%, so on-call is paged first and the rollback follows a pass or two
    # later (benchmarks/README.md has the distribution over 100 seeds).
    late = {o.seed: o.rollback_s for o in error_runs if o.rollback_s is None or o.rollback_s > 240}
    assert late == {}, _summary(error_runs)


def test_8pct_errors_at_20_rps_are_rolled_back_within_two_minutes(
    pool: Executor, tmp_path: Path
) -> None:
    # The runbook's target for a critical error rate is "< 2 min"; the check at 2:00 counts.
    runs = simulate_many(ERRORS_8PCT_BUSY, range(10), folder=tmp_path, pool=pool, minutes=3)
    late = {o.seed: o.rollback_s for o in runs if o.rollback_s is None or o.rollback_s > 120}
    assert late == {}, _summary(runs)


def test_25pct_quality_drop_alerts_high_but_never_rolls_back(
    pool: Executor, tmp_path: Path
) -> None:
    outcomes = simulate_many(QUALITY_DROP_25PCT, ALERT_SEEDS, folder=tmp_path, pool=pool)
    assert [o.seed for o in outcomes if o.rolled_back] == [], _summary(outcomes)
    for outcome in outcomes:
        alerts = _opened(outcome, "high", "alert")
        assert alerts, _summary([outcome])
        assert alerts[0].seconds <= 30 * 60  # the runbook's "< 30 min"


def test_doubled_latency_pages_but_never_rolls_back(pool: Executor, tmp_path: Path) -> None:
    outcomes = simulate_many(LATENCY_X2, ALERT_SEEDS, folder=tmp_path, pool=pool)
    assert [o.seed for o in outcomes if o.rolled_back] == [], _summary(outcomes)
    for outcome in outcomes:
        pages = _opened(outcome, "high", "page")
        assert pages, _summary([outcome])
        assert pages[0].seconds <= 10 * 60  # the runbook's "< 10 min"
