"""The decision: metrics + policy + age -> a verdict. Pure; no I/O, no clock."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from statistics import NormalDist
from typing import Any

from bot.metrics import MetricsUnavailable, VersionMetrics
from bot.models import Action, Severity
from bot.policy.schema import EffectivePolicy, Metric, Rule

BREACH_ACTIONS = (Action.OBSERVE, Action.ALERT, Action.PAGE, Action.ROLLBACK)
# The figures' names, read once: an enum member's `.value` is a Python-level lookup, and
# every version's figures use them.
ERROR_RATE_PCT = Metric.ERROR_RATE_PCT.value
LATENCY_P99_MS = Metric.LATENCY_P99_MS.value
QUALITY = Metric.QUALITY.value
QUALITY_DROP_PCT = Metric.QUALITY_DROP_PCT.value
LATENCY_INCREASE_PCT = Metric.LATENCY_INCREASE_PCT.value


@dataclass(frozen=True)
class Fired:
    """A rule that fired, with the figures that made it fire."""

    rule: str
    metric: str
    value: float
    threshold: float
    severity: Severity
    action: Action
    runbook: str | None = None
    note: str | None = None

    def describe(self) -> str:
        """'error_rate_pct 8.0 > 5.0' plus any note."""
        if self.metric == "alert":  # an Alertmanager alert: firing is the whole story
            text = f"{self.rule}: alert firing"
        elif self.metric == "quality":  # a score where higher is better: its rules are floors
            text = f"{self.rule}: {self.metric} {self.value:.3f} < {self.threshold:g}"
        else:
            text = f"{self.rule}: {self.metric} {self.value:.1f} > {self.threshold:g}"
        return f"{text} ({self.note})" if self.note else text


@dataclass(frozen=True)
class Decision:
    """The verdict on one version: severity, action, every rule that fired, and the figures."""

    prompt: str
    version: str
    severity: Severity
    action: Action
    fired: tuple[Fired, ...] = ()
    figures: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def breach(self) -> bool:
        """True when the verdict asks for more than watching."""
        return self.action in BREACH_ACTIONS

    @property
    def rule(self) -> str | None:
        """The name of the rule that decided, if any."""
        return self.fired[0].rule if self.fired else None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form, stored on incidents and printed by `check --json`."""
        # Written out rather than dataclasses.asdict, which costs ~100 µs a decision (each
        # pass stores one on every active incident); the figures are copied as deeply.
        return {
            "prompt": self.prompt,
            "version": self.version,
            "severity": self.severity.value,
            "action": self.action.value,
            "fired": [
                {
                    "rule": f.rule,
                    "metric": f.metric,
                    "value": f.value,
                    "threshold": f.threshold,
                    "severity": f.severity.value,
                    "action": f.action.value,
                    "runbook": f.runbook,
                    "note": f.note,
                }
                for f in self.fired
            ],
            "figures": _copied(self.figures),
            "reason": self.reason,
        }


_ATOMIC = (str, int, float, bool, type(None))


def _copied(value: Any) -> Any:
    """A deep copy of JSON-like data (what dataclasses.asdict does to a field's value)."""
    if isinstance(value, _ATOMIC):
        return value
    if isinstance(value, dict):
        return {_copied(k): _copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copied(v) for v in value]
    return copy.deepcopy(value)


def wilson_interval(errors: int, requests: int, confidence: float) -> tuple[float, float]:
    """One-sided Wilson bounds for an error proportion, in percent.

    Each end is a one-sided bound at `confidence`: "the rate is above the lower end" holds with
    95% confidence, which is the question an automatic rollback asks.
    """
    if requests == 0:
        return (0.0, 100.0)
    z = _z(confidence)
    p = errors / requests
    denominator = 1 + z * z / requests
    centre = (p + z * z / (2 * requests)) / denominator
    half = z * ((p * (1 - p) / requests + z * z / (4 * requests * requests)) ** 0.5) / denominator
    return (max(0.0, centre - half) * 100, min(1.0, centre + half) * 100)


@lru_cache(maxsize=64)
def _z(confidence: float) -> float:
    """The one-sided normal quantile for `confidence` (a handful of distinct values)."""
    return NormalDist().inv_cdf(confidence)


def figures_of(metrics: VersionMetrics, policy: EffectivePolicy) -> dict[str, Any]:
    """Every figure the rules can test, plus sample sizes, interval and baseline."""
    current, baseline, settings = metrics.current, metrics.baseline, policy.settings
    requests, quality, p99 = current.requests, current.quality, current.latency_p99_ms
    confidence = settings.confidence
    low, high = wilson_interval(current.errors, requests, confidence)
    quality_drop = latency_increase = None
    enough_quality = current.quality_count >= settings.min_quality_samples
    if baseline is not None:
        if enough_quality and quality is not None and baseline.quality:
            quality_drop = (baseline.quality - quality) / baseline.quality * 100
        enough_latency = requests >= settings.min_latency_samples
        if enough_latency and p99 is not None and baseline.latency_p99_ms:
            latency_increase = (p99 - baseline.latency_p99_ms) / baseline.latency_p99_ms * 100
    # Rounded so that a figure exactly on a threshold (20% drop) is not pushed over by float error.
    quality_drop, latency_increase = _round(quality_drop), _round(latency_increase)
    return {
        "requests": requests,
        "errors": current.errors,
        ERROR_RATE_PCT: _round(current.error_rate_pct),
        "error_rate_ci_pct": [round(low, 3), round(high, 3)],
        "confidence": confidence,
        "latency_p50_ms": current.latency_p50_ms,
        LATENCY_P99_MS: p99,
        QUALITY: quality if enough_quality else None,
        "quality_samples": current.quality_count,
        QUALITY_DROP_PCT: quality_drop,
        LATENCY_INCREASE_PCT: latency_increase,
        "baseline": None
        if baseline is None
        else {
            "source": baseline.source,
            "requests": baseline.requests,
            "error_rate_pct": baseline.error_rate_pct,
            "latency_p99_ms": baseline.latency_p99_ms,
            "quality": baseline.quality,
        },
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def decide(
    *,
    prompt: str,
    version: str,
    metrics: VersionMetrics | MetricsUnavailable,
    policy: EffectivePolicy,
    age: timedelta | None,
    min_requests: int | None = None,
) -> Decision:
    """Judge one version. Missing or thin data never yields a rollback. `min_requests`
    overrides the policy's sample size (a verification judges from fewer requests)."""
    if isinstance(metrics, MetricsUnavailable):
        return Decision(
            prompt, version, Severity.NONE, Action.METRICS_UNAVAILABLE, reason=metrics.message
        )
    figures = figures_of(metrics, policy)
    if age is not None:
        figures["age_s"] = round(age.total_seconds())
    needed = policy.settings.min_requests if min_requests is None else min_requests
    if metrics.current.requests < needed:
        return Decision(
            prompt,
            version,
            Severity.NONE,
            Action.INSUFFICIENT_DATA,
            figures=figures,
            reason=f"{metrics.current.requests} requests in the window; {needed} needed to judge",
        )
    fired = [
        f for check in _checks(policy.rules) if (f := _fire(check, figures, policy)) is not None
    ]
    fired += _new_version_breaches(figures, policy, age, {f.metric for f in fired})
    if not fired:
        return Decision(
            prompt,
            version,
            Severity.NONE,
            Action.NONE,
            figures=figures,
            reason="all metrics within policy",
        )
    fired.sort(key=lambda f: (f.severity.rank, f.action.rank), reverse=True)
    top = fired[0]
    return Decision(
        prompt,
        version,
        top.severity,
        top.action,
        tuple(fired),
        figures,
        reason="; ".join(f.describe() for f in fired),
    )


# A rule as the verdict tests it: the rule, its figure's name, its threshold, and whether it
# is a floor (the quality score) rather than a ceiling. Rule.crossed, read once per rule.
_Check = tuple[Rule, str, float, bool]
# Each distinct rules tuple read once (most prompts share the defaults' tuple); the tuple is
# held so that its id cannot be reused while it is a key. Rules are frozen, so this never
# goes stale.
_CHECKS: dict[int, tuple[tuple[Rule, ...], tuple[_Check, ...]]] = {}


def _checks(rules: tuple[Rule, ...]) -> tuple[_Check, ...]:
    known = _CHECKS.get(id(rules))
    if known is not None and known[0] is rules:
        return known[1]
    checks = tuple(
        (rule, rule.metric.value, rule.limit, rule.metric == Metric.QUALITY)
        for rule in rules
        if rule.enabled
    )
    if len(_CHECKS) >= 256:  # prompts with their own rules get a new tuple each pass
        _CHECKS.clear()
    _CHECKS[id(rules)] = (rules, checks)
    return checks


def _fire(check: _Check, figures: dict[str, Any], policy: EffectivePolicy) -> Fired | None:
    rule, metric, limit, floor = check
    value = figures.get(metric)
    if value is None or not (value < limit if floor else value > limit):
        return None
    severity, action, note = rule.severity, rule.action, None
    runbook = str(rule.runbook or policy.settings.runbook or "") or None
    if action == Action.ROLLBACK:
        low = figures["error_rate_ci_pct"][0]
        if not policy.settings.auto_rollback:
            action, note = Action.PAGE, "automatic rollback is off for this prompt"
        elif rule.metric == Metric.ERROR_RATE_PCT and low <= limit:
            # Not yet significant: page a person instead of acting on noise.
            severity, action = Severity.HIGH, Action.PAGE
            note = (
                f"not yet significant: {figures['confidence']:.0%} lower bound {low:.2f}% "
                f"<= {limit:g}% (n={figures['requests']})"
            )
    return Fired(rule.name, metric, float(value), limit, severity, action, runbook, note)


def _new_version_breaches(
    figures: dict[str, Any], policy: EffectivePolicy, age: timedelta | None, covered: set[str]
) -> list[Fired]:
    limits = policy.new_version
    if limits is None or age is None or age >= limits.duration:
        return []
    found = []
    for metric in ("error_rate_pct", "latency_increase_pct", "quality_drop_pct"):
        limit, value = getattr(limits, metric), figures.get(metric)
        if limit is None or value is None or metric in covered or not value > limit:
            continue
        if metric == "error_rate_pct" and figures["error_rate_ci_pct"][0] <= limit:
            continue  # at first-hour limits a couple of errors is noise: require significance
        found.append(
            Fired(
                f"new_version_{metric.removesuffix('_pct')}",
                metric,
                float(value),
                float(limit),
                limits.severity,
                limits.action,
                str(limits.runbook or "") or None,
                note=f"version is {int(age.total_seconds() // 60)} min old; first-hour limit",
            )
        )
    return found
