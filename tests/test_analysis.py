"""The one assessment the checker, the verifier and the rollout driver share. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.judging.analysis import Outcome, assess, measure
from bot.metrics import Baseline, MetricsUnavailable, Target, VersionMetrics, WindowStats
from bot.models import Action, Severity
from bot.policy import load_policies

POLICY = load_policies(Path(__file__).resolve().parent.parent / "policies").for_prompt("x")
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
TARGET = Target(
    prompt="x",
    version="v2",
    version_id=7,
    prompt_id=1,
    share_pct=100,
    serving_since=NOW - timedelta(hours=2),
    window=timedelta(minutes=5),
    baseline_window=timedelta(hours=1),
)
BASELINE = Baseline(source="v1", requests=5000, error_rate_pct=0.5, latency_p99_ms=1000)


def figures(requests: int, errors: int) -> VersionMetrics:
    return VersionMetrics(
        current=WindowStats(requests=requests, errors=errors, latency_p99_ms=900),
        baseline=BASELINE,
    )


@pytest.mark.parametrize(
    ("measured", "outcome", "action"),
    [
        (figures(1000, 2), Outcome.HEALTHY, Action.NONE),
        (figures(2000, 160), Outcome.BREACH, Action.ROLLBACK),
        (figures(10, 5), Outcome.NOT_ENOUGH_DATA, Action.INSUFFICIENT_DATA),
        (
            MetricsUnavailable("prometheus timed out"),
            Outcome.UNAVAILABLE,
            Action.METRICS_UNAVAILABLE,
        ),
    ],
)
def test_outcome_follows_the_verdict(measured, outcome, action) -> None:
    found = assess(TARGET, measured, POLICY, age=timedelta(hours=2))
    assert (found.outcome, found.decision.action) == (outcome, action)
    assert found.judged == (outcome in (Outcome.HEALTHY, Outcome.BREACH))


def test_breach_carries_severity_and_figures() -> None:
    found = assess(TARGET, figures(2000, 160), POLICY, age=timedelta(hours=2))
    assert found.decision.severity == Severity.CRITICAL
    assert found.requests == 2000 and found.error_rate_pct == pytest.approx(8.0)
    assert found.figures()["requests"] == 2000


def test_unavailable_has_no_figures_and_says_why() -> None:
    found = assess(TARGET, MetricsUnavailable("down"), POLICY, age=None)
    assert found.metrics is None and found.figures() == {} and found.requests == 0
    assert found.decision.reason == "down"


def test_a_smaller_sample_can_be_judged_when_asked() -> None:
    """A verification judges from fewer requests than the checker's policy needs."""
    thin = figures(30, 0)
    assert assess(TARGET, thin, POLICY, age=None).outcome == Outcome.NOT_ENOUGH_DATA
    assert assess(TARGET, thin, POLICY, age=None, min_requests=20).outcome == Outcome.HEALTHY


def test_measure_contains_a_missing_source() -> None:
    found = measure({}, "prometheus", [TARGET], NOW)
    assert isinstance(found[7], MetricsUnavailable)
    assert "not configured" in found[7].message


def test_one_severity_and_action_order() -> None:
    assert [s.rank for s in Severity] == [0, 1, 2, 3]
    assert Severity.CRITICAL.rank > Severity.HIGH.rank > Severity.MEDIUM.rank > Severity.NONE.rank
    assert Action.ROLLBACK.rank > Action.PAGE.rank > Action.ALERT.rank > Action.OBSERVE.rank
