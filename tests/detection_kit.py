"""Builders for detection tests: traffic into the built-in store, a checker with a clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from bot.db import read_session, write_session
from bot.judging.checker import Checker
from bot.metrics.builtin import BuiltinSource
from bot.metrics.ingest import ingest
from bot.models import Event, EventBatch, Routing
from bot.notify import LogNotifier
from bot.policy import PolicySet, load_policies

POLICY_DIR = Path(__file__).resolve().parent.parent / "policies"


def traffic(
    engine: Engine,
    *,
    version: str,
    n: int,
    errors: int = 0,
    latency_ms: float = 400,
    slow: int = 0,
    slow_ms: float = 0,
    quality: float | None = 0.8,
    at: datetime,
    prompt: str = "customer-support",
) -> None:
    """Store n outcomes at `at`: the first `errors` failed, the next `slow` took slow_ms."""
    events = [
        Event(
            prompt=prompt,
            version=version,
            error=i < errors,
            latency_ms=slow_ms if errors <= i < errors + slow else latency_ms,
            quality=quality,
            ts=at,
        )
        for i in range(n)
    ]
    for start in range(0, n, 5000):
        with write_session(engine) as session:
            ingest(
                session=session,
                batch=EventBatch(events=events[start : start + 5000]),
                now=at,
                retention=timedelta(days=3),
            )


def activated_at(engine: Engine, prompt_id: int = 1) -> datetime:
    with read_session(engine) as session:
        routing = session.get(Routing, prompt_id)
        assert routing is not None
        assert routing.activated_at is not None
        return routing.activated_at


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def make_checker(
    engine: Engine, clock: Clock, policies: PolicySet | None = None, **sources: object
) -> tuple[Checker, LogNotifier]:
    notifier = LogNotifier()
    checker = Checker(
        engine=engine,
        policies=policies or load_policies(POLICY_DIR),
        sources={"builtin": BuiltinSource(engine), **sources},  # type: ignore[dict-item]
        notifier=notifier,
        clock=clock,
    )
    return checker, notifier
