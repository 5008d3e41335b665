"""Scenario simulator: synthetic traffic through real ingestion, the built-in source and the checker.

A scenario says how a version's requests arrive and turn out (Poisson arrivals; error probability,
lognormal latency, normal quality). `simulate` registers `customer-support` v1.9.0 and v2.0.0 in a
fresh SQLite file, lets v1.9.0 serve an hour of healthy traffic, deploys v2.0.0 and then, every
`tick_s` of simulated time, ingests that tick's requests and runs one checker pass. Time is a
`Clock` given to the checker and, since the registry takes no clock, patched in as the registry's
`utcnow`, so deploys, the rollback and every check are stamped in simulated time. Nothing sleeps,
and a seed fixes a run exactly.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path

from sqlalchemy import Engine, func
from sqlmodel import select

from bot import registry
from bot.db import make_engine, read_session, write_session
from bot.metrics.ingest import ingest
from bot.migrate import upgrade
from bot.models import EVENTS_MAX, Event, EventBatch, Incident
from bot.notify import Notice
from tests.conftest import OPERATOR, make_prompt
from tests.detection_kit import Clock, activated_at, make_checker

PROMPT = "customer-support"
OLD, NEW = "v1.9.0", "v2.0.0"
BASELINE_HOUR = timedelta(hours=1)
RETENTION = timedelta(days=3)
EPOCH = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # a Monday morning; runs repeat exactly per seed


@dataclass(frozen=True)
class Scenario:
    """How one version's requests arrive and turn out."""

    name: str
    rate_per_s: float  # mean Poisson arrival rate
    error_p: float  # probability that a request fails
    latency_ms_median: float = 400.0  # median of the lognormal latency, before latency_factor
    latency_factor: float = 1.0  # multiplies every latency (2.2 = "latency more than doubled")
    quality_mean: float = 0.80  # quality ~ N(mean, sd), clipped to 0..1
    quality_sd: float = 0.05
    latency_sigma: float = 0.35  # sigma of log(latency); p99 = median * e^(2.33 sigma) ~ 2.26x

    def healthy(self) -> Scenario:
        """The same traffic volume with healthy outcomes: what v1.9.0 served."""
        return replace(HEALTHY, name=f"{self.name} (baseline)", rate_per_s=self.rate_per_s)


HEALTHY = Scenario("healthy", rate_per_s=5.0, error_p=0.002)
ERRORS_8PCT = replace(HEALTHY, name="errors_8pct", error_p=0.08)
# The same regression on a busier prompt (20 req/s): enough requests for significance sooner.
ERRORS_8PCT_BUSY = replace(ERRORS_8PCT, name="errors_8pct_20rps", rate_per_s=20.0)
QUALITY_DROP_25PCT = replace(HEALTHY, name="quality_drop_25pct", quality_mean=0.60)
LATENCY_X2 = replace(HEALTHY, name="latency_x2.2", latency_factor=2.2)
LOW_TRAFFIC = replace(HEALTHY, name="low_traffic", rate_per_s=0.05, error_p=0.03)
SCENARIOS = (HEALTHY, ERRORS_8PCT, ERRORS_8PCT_BUSY, QUALITY_DROP_25PCT, LATENCY_X2, LOW_TRAFFIC)


@dataclass(frozen=True)
class Sent:
    """One notice the bot sent, stamped with simulated seconds since the switch."""

    kind: str
    severity: str
    action: str | None
    seconds: float
    version: str | None = None
    rule: str | None = None  # the rule that decided, when the notice is about a verdict


@dataclass(frozen=True)
class Outcome:
    """What the bot did during one simulated run."""

    scenario: str
    seed: int
    rolled_back: bool
    rollback_s: float | None  # seconds from the switch to the automatic rollback
    first_notice: Sent | None
    notice_counts: dict[str, int]
    incidents: int
    events: int  # every event ingested, v1.9.0's baseline hour included
    notices: tuple[Sent, ...] = field(default=())


def arrivals(
    scenario: Scenario, rng: random.Random, *, version: str, start: datetime, seconds: float
) -> list[Event]:
    """A Poisson stream of outcomes over [start, start + seconds): exponential gaps."""
    mu = math.log(scenario.latency_ms_median)
    events = []
    t = rng.expovariate(scenario.rate_per_s)
    while t < seconds:
        latency = rng.lognormvariate(mu, scenario.latency_sigma) * scenario.latency_factor
        quality = min(1.0, max(0.0, rng.gauss(scenario.quality_mean, scenario.quality_sd)))
        events.append(
            Event(
                prompt=PROMPT,
                version=version,
                error=rng.random() < scenario.error_p,
                latency_ms=latency,
                quality=quality,
                ts=start + timedelta(seconds=t),
            )
        )
        t += rng.expovariate(scenario.rate_per_s)
    return events


def store(engine: Engine, events: list[Event], *, now: datetime) -> None:
    """Ingest events the way POST /api/events does, in batches of at most EVENTS_MAX."""
    for begin in range(0, len(events), EVENTS_MAX):
        with write_session(engine) as session:
            ingest(
                session=session,
                batch=EventBatch(events=events[begin : begin + EVENTS_MAX]),
                now=now,
                retention=RETENTION,
            )


@contextmanager
def worker_pool(jobs: int | None = None) -> Iterator[Executor]:
    """Processes for simulate_many; spawned, so no lock or connection of the parent is copied."""
    with ProcessPoolExecutor(jobs or os.cpu_count() or 1, mp_context=get_context("spawn")) as pool:
        yield pool


def simulate_many(
    scenario: Scenario,
    seeds: Iterable[int],
    *,
    folder: Path,
    pool: Executor | None = None,
    **options: int,
) -> list[Outcome]:
    """simulate() once per seed, each on its own SQLite file in `folder`, in the pool if given."""
    paths = {seed: folder / f"{scenario.name}-{seed}.db" for seed in seeds}
    if pool is None:
        return [simulate(scenario, seed=s, db_path=p, **options) for s, p in paths.items()]
    futures = [
        pool.submit(simulate, scenario, seed=s, db_path=p, **options) for s, p in paths.items()
    ]
    return [future.result() for future in futures]


def simulate(
    scenario: Scenario, *, seed: int, minutes: int = 30, tick_s: int = 30, db_path: Path
) -> Outcome:
    """Run `scenario` as v2.0.0 for `minutes` of simulated time against a new SQLite file."""
    rng = random.Random(seed)
    # Deploys happen at any second of a minute; where in its minute the switch falls decides
    # which minute buckets the first windows hold, so it is drawn from the seed as well.
    switch = EPOCH + timedelta(seconds=rng.uniform(0, 60))
    clock = Clock(switch - BASELINE_HOUR)
    engine = make_engine(f"sqlite:///{db_path}")
    try:
        return _run(engine, scenario, rng, clock, minutes=minutes, tick_s=tick_s, seed=seed)
    finally:
        engine.dispose()


def _run(
    engine: Engine,
    scenario: Scenario,
    rng: random.Random,
    clock: Clock,
    *,
    minutes: int,
    tick_s: int,
    seed: int,
) -> Outcome:
    upgrade(engine)
    make_prompt(engine, versions=(OLD, NEW), deploy=(OLD,), now=clock.now)
    history = arrivals(
        scenario.healthy(), rng, version=OLD, start=clock.now, seconds=BASELINE_HOUR.seconds
    )
    clock.advance(seconds=BASELINE_HOUR.seconds)
    store(engine, history, now=clock.now)
    with write_session(engine) as session:
        registry.deploy(session=session, prompt=PROMPT, version=NEW, actor=OPERATOR, now=clock.now)
    switch = activated_at(engine)
    assert switch == clock.now
    total = len(history)

    checker, _ = make_checker(engine, clock)
    serving, version = scenario, NEW
    rollback_s: float | None = None
    sent: list[Sent] = []
    for _ in range(minutes * 60 // tick_s):
        events = arrivals(serving, rng, version=version, start=clock.now, seconds=tick_s)
        clock.advance(seconds=tick_s)
        if events:
            store(engine, events, now=clock.now)
        total += len(events)
        report = checker.tick()
        elapsed = (clock.now - switch).total_seconds()
        sent += [_sent(notice, elapsed) for notice in report.notices]
        if report.rollbacks and rollback_s is None:
            rollback_s = elapsed
            # v2.0.0 no longer serves: the prompt's traffic goes back to v1.9.0, healthy.
            serving, version = scenario.healthy(), report.rollbacks[0].to_version

    with read_session(engine) as session:
        incidents = session.exec(select(func.count()).select_from(Incident)).one()
    return Outcome(
        scenario=scenario.name,
        seed=seed,
        rolled_back=rollback_s is not None,
        rollback_s=rollback_s,
        first_notice=sent[0] if sent else None,
        notice_counts=dict(Counter(s.kind for s in sent)),
        incidents=int(incidents),
        events=total,
        notices=tuple(sent),
    )


def _sent(notice: Notice, seconds: float) -> Sent:
    fired = notice.details.get("fired") or [{}]
    return Sent(
        kind=notice.kind.value,
        severity=notice.severity.value,
        action=notice.action,
        seconds=seconds,
        version=notice.version,
        rule=fired[0].get("rule"),
    )
