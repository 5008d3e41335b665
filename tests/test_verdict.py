"""The decision function against the seed's trigger table, boundary by boundary. No I/O."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from bot.judging.verdict import decide, wilson_interval
from bot.metrics import Baseline, MetricsUnavailable, VersionMetrics, WindowStats
from bot.models import Action, Severity
from bot.policy import EffectivePolicy, load_policies
from bot.policy.schema import SettingsPatch

POLICIES = load_policies(Path(__file__).resolve().parent.parent / "policies")
MATURE = timedelta(hours=2)
NEW = timedelta(minutes=10)
BASELINE = Baseline(
    source="v1.9.0 over the hour before",
    requests=5000,
    error_rate_pct=0.5,
    latency_p50_ms=400,
    latency_p99_ms=1000,
    quality=0.80,
)


def judge(
    *,
    requests: int = 1000,
    errors: int = 0,
    p99: float = 1000,
    quality: float | None = 0.80,
    quality_count: int = 500,
    age: timedelta | None = MATURE,
    policy: EffectivePolicy | None = None,
    baseline: Baseline | None = BASELINE,
):
    metrics = VersionMetrics(
        current=WindowStats(
            requests=requests,
            errors=errors,
            latency_p50_ms=400,
            latency_p99_ms=p99,
            quality=quality,
            quality_count=quality_count,
        ),
        baseline=baseline,
    )
    return decide(
        prompt="customer-support",
        version="v2.0.0",
        metrics=metrics,
        policy=policy or POLICIES.for_prompt("customer-support"),
        age=age,
    )


@pytest.mark.parametrize(
    ("errors", "severity", "action", "rule"),
    [
        (80, Severity.CRITICAL, Action.ROLLBACK, "error_rate_critical"),  # 8%
        (51, Severity.HIGH, Action.PAGE, "error_rate_critical"),  # 5.1%: above, not significant
        (50, Severity.HIGH, Action.PAGE, "error_rate_high"),  # exactly 5%: not > 5
        (30, Severity.HIGH, Action.PAGE, "error_rate_high"),  # 3%
        (21, Severity.HIGH, Action.PAGE, "error_rate_high"),  # 2.1%
        (20, Severity.NONE, Action.NONE, None),  # exactly 2%: not > 2
        (5, Severity.NONE, Action.NONE, None),
    ],
)
def test_error_rate_rows_of_the_table(
    errors: int, severity: Severity, action: Action, rule: str | None
) -> None:
    decision = judge(errors=errors)
    assert (decision.severity, decision.action, decision.rule) == (severity, action, rule)
    assert decision.figures["requests"] == 1000
    low, high = decision.figures["error_rate_ci_pct"]
    assert low < errors / 10 < high


def test_significant_breach_of_5_percent_rolls_back_and_reports_the_interval() -> None:
    decision = judge(requests=5000, errors=300)  # 6% of 5000: lower bound ~5.4%
    assert decision.action == Action.ROLLBACK
    assert decision.figures["error_rate_ci_pct"][0] > 5
    assert "error_rate_pct 6.0 > 5" in decision.reason


def test_not_yet_significant_breach_pages_and_says_why() -> None:
    decision = judge(requests=60, errors=4)  # 6.7% of 60: lower bound well under 5%
    assert (decision.severity, decision.action) == (Severity.HIGH, Action.PAGE)
    assert "not yet significant" in decision.reason


@pytest.mark.parametrize(
    ("quality", "severity", "action", "rule"),
    [
        (0.60, Severity.HIGH, Action.ALERT, "quality_drop_high"),  # -25%
        (0.64, Severity.MEDIUM, Action.OBSERVE, "quality_drop_medium"),  # exactly -20%: not > 20
        (0.68, Severity.MEDIUM, Action.OBSERVE, "quality_drop_medium"),  # -15%
        (0.72, Severity.NONE, Action.NONE, None),  # exactly -10%
        (0.85, Severity.NONE, Action.NONE, None),  # better than baseline
    ],
)
def test_quality_rows_of_the_table(
    quality: float, severity: Severity, action: Action, rule: str | None
) -> None:
    decision = judge(quality=quality)
    assert (decision.severity, decision.action, decision.rule) == (severity, action, rule)


@pytest.mark.parametrize(
    ("p99", "action"), [(2500, Action.PAGE), (2000, Action.NONE), (1500, Action.NONE)]
)
def test_latency_p99_doubled_pages(p99: float, action: Action) -> None:
    decision = judge(p99=p99)
    assert decision.action == action
    if action == Action.PAGE:
        assert (decision.severity, decision.rule) == (Severity.HIGH, "latency_p99_doubled")


def test_every_fired_rule_is_reported_strongest_first() -> None:
    decision = judge(errors=80, quality=0.5, p99=3000)
    assert [f.rule for f in decision.fired] == [
        "error_rate_critical",
        "error_rate_high",
        "latency_p99_doubled",
        "quality_drop_high",
        "quality_drop_medium",
    ]


@pytest.mark.parametrize(("requests", "errors"), [(49, 49), (3, 1), (0, 0)])
def test_too_few_requests_is_insufficient_data_never_rollback(requests: int, errors: int) -> None:
    decision = judge(requests=requests, errors=errors)
    assert decision.action == Action.INSUFFICIENT_DATA
    assert f"{requests} requests in the window; 50 needed" in decision.reason


def test_too_few_quality_scores_are_not_judged() -> None:
    assert judge(quality=0.1, quality_count=29).action == Action.NONE


def test_unavailable_metrics_never_roll_back() -> None:
    decision = decide(
        prompt="p",
        version="v",
        metrics=MetricsUnavailable("prometheus down"),
        policy=POLICIES.for_prompt("p"),
        age=NEW,
    )
    assert (decision.action, decision.reason) == (Action.METRICS_UNAVAILABLE, "prometheus down")


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"errors": 15}, "new_version_error_rate"),  # 1.5% > 0.5%, significantly
        ({"p99": 1150}, "new_version_latency_increase"),  # +15% > +10%
        ({"quality": 0.74}, "new_version_quality_drop"),  # -7.5% > -5%
    ],
)
def test_new_versions_get_the_stricter_first_hour_limits(kwargs: dict, rule: str) -> None:
    young = judge(age=NEW, **kwargs)
    assert (young.severity, young.action, young.rule) == (Severity.MEDIUM, Action.OBSERVE, rule)
    assert judge(age=MATURE, **kwargs).action == Action.NONE


def test_first_hour_error_limit_needs_significance() -> None:
    assert judge(age=NEW, errors=8).action == Action.NONE  # 0.8% of 1000: lower bound < 0.5%


def test_table_rule_wins_over_first_hour_limit_on_the_same_metric() -> None:
    decision = judge(age=NEW, errors=80)
    assert decision.action == Action.ROLLBACK
    assert all(not f.rule.startswith("new_version_error") for f in decision.fired)


def test_prompt_override_can_turn_automatic_rollback_off() -> None:
    policies = POLICIES.model_copy(
        update={"prompts": {"customer-support": SettingsPatch(auto_rollback=False)}}
    )
    decision = judge(requests=5000, errors=400, policy=policies.for_prompt("customer-support"))
    assert (decision.severity, decision.action) == (Severity.CRITICAL, Action.PAGE)
    assert "automatic rollback is off" in decision.reason


def test_without_baseline_relative_rules_are_not_judged() -> None:
    decision = judge(quality=0.1, p99=90000, baseline=None)
    assert decision.action == Action.NONE
    assert decision.figures["quality_drop_pct"] is None


def test_wilson_interval() -> None:
    low, high = wilson_interval(1, 3, 0.95)
    assert 0 < low < 33.4 < high < 100
    assert wilson_interval(0, 0, 0.95) == (0.0, 100.0)
    low, high = wilson_interval(80, 1000, 0.95)
    assert 6.5 < low < 6.8  # one-sided 95% lower bound
    assert 9.3 < high < 9.6


def test_latency_is_not_judged_on_a_small_sample() -> None:
    assert judge(requests=400, p99=5000).action == Action.NONE
    assert judge(requests=500, p99=5000).action == Action.PAGE
