"""One analysis for every loop that judges a version — the checker, the verifier after a
rollback and the rollout driver at each stage (as Argo Rollouts' AnalysisRun serves background
analysis, canary steps and post-rollout checks alike): measure a target over its window, then
assess the figures against the policy in one pure step."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bot.judging.verdict import Decision, decide
from bot.metrics import MetricsSource, MetricsUnavailable, Target, VersionMetrics, collect_safely
from bot.models import Action
from bot.policy import EffectivePolicy

Measured = VersionMetrics | MetricsUnavailable


class Outcome(enum.StrEnum):
    """What an assessment found, whatever asked for it."""

    HEALTHY = "healthy"  # enough traffic, no rule fires
    BREACH = "breach"  # a rule fires; the decision says how bad and what to do
    NOT_ENOUGH_DATA = "not_enough_data"  # too few requests in the window to judge
    UNAVAILABLE = "unavailable"  # the metrics source did not answer


@dataclass(frozen=True)
class Assessment:
    """One target judged once: the outcome, the verdict behind it and the figures read."""

    target: Target
    outcome: Outcome
    decision: Decision
    metrics: VersionMetrics | None

    @property
    def judged(self) -> bool:
        """Whether there were figures enough to say healthy or not."""
        return self.outcome in (Outcome.HEALTHY, Outcome.BREACH)

    @property
    def requests(self) -> int:
        """Requests in the window (0 without figures)."""
        return self.metrics.current.requests if self.metrics else 0

    @property
    def error_rate_pct(self) -> float:
        """The window's error rate in percent (0 without requests)."""
        return (self.metrics.current.error_rate_pct or 0.0) if self.metrics else 0.0

    def figures(self) -> dict[str, Any]:
        """The current window's figures, JSON-ready."""
        if self.metrics is None:
            return {}
        current = self.metrics.current
        return {
            "requests": current.requests,
            "error_rate_pct": current.error_rate_pct,
            "latency_p99_ms": current.latency_p99_ms,
            "quality": current.quality,
        }


def measure(
    sources: Mapping[str, MetricsSource], source: str, targets: Sequence[Target], now: datetime
) -> dict[int, Measured]:
    """Every target's figures from one source, by version id; a failing source yields
    MetricsUnavailable per target, never an exception."""
    return collect_safely(sources, source, targets, now)


def assess(
    target: Target,
    measured: Measured,
    policy: EffectivePolicy,
    *,
    age: timedelta | None,
    min_requests: int | None = None,
) -> Assessment:
    """The pure step: figures + policy (+ the version's age) -> outcome and verdict."""
    decision = decide(
        prompt=target.prompt,
        version=target.version,
        metrics=measured,
        policy=policy,
        age=age,
        min_requests=min_requests,
    )
    outcome = (
        Outcome.UNAVAILABLE
        if decision.action == Action.METRICS_UNAVAILABLE
        else Outcome.NOT_ENOUGH_DATA
        if decision.action == Action.INSUFFICIENT_DATA
        else Outcome.BREACH
        if decision.breach
        else Outcome.HEALTHY
    )
    metrics = measured if isinstance(measured, VersionMetrics) else None
    return Assessment(target, outcome, decision, metrics)


def measure_and_assess(
    sources: Mapping[str, MetricsSource],
    target: Target,
    policy: EffectivePolicy,
    now: datetime,
    *,
    age: timedelta | None,
    min_requests: int | None = None,
) -> Assessment:
    """One target, measured from its policy's source and assessed."""
    measured = measure(sources, policy.settings.source, [target], now)[target.version_id]
    return assess(target, measured, policy, age=age, min_requests=min_requests)
