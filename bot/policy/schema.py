"""The shape of a policy file, and the effective policy for one prompt after overrides."""

from __future__ import annotations

import enum
import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from bot.models import Action, Severity

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def _parse_duration(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    raise ValueError("must be a duration such as 30s, 5m, 1h or a number of seconds")


Duration = Annotated[
    timedelta,
    BeforeValidator(_parse_duration),
    PlainSerializer(
        lambda d: f"{d.total_seconds():.3f}".rstrip("0").rstrip(".") + "s",
        return_type=str,
        when_used="json",
    ),
]


class Metric(enum.StrEnum):
    """Figures a rule can test (percentages are 0..100)."""

    ERROR_RATE_PCT = "error_rate_pct"
    QUALITY_DROP_PCT = "quality_drop_pct"
    LATENCY_INCREASE_PCT = "latency_increase_pct"
    LATENCY_P99_MS = "latency_p99_ms"
    QUALITY = "quality"


RuleName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
RULE_ACTIONS = (Action.OBSERVE, Action.ALERT, Action.PAGE, Action.ROLLBACK)
RULE_SEVERITIES = (Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Strict):
    """A trigger: when `metric` is above `above`, the verdict gets `severity` and `action`."""

    name: RuleName
    metric: Metric
    above: float
    severity: Severity
    action: Action
    runbook: AnyHttpUrl | None = None
    enabled: bool = True
    # The runbook's time limit: with nobody acting on the incident by then, page again.
    act_within: Duration | None = None

    @model_validator(mode="after")
    def _known_kinds(self) -> Rule:
        if self.severity not in RULE_SEVERITIES:
            raise ValueError("severity must be medium, high or critical")
        if self.action not in RULE_ACTIONS:
            raise ValueError("action must be observe, alert, page or rollback")
        return self


class RulePatch(_Strict):
    """A per-prompt change to a rule of the same name (or a new rule when `metric` is given)."""

    name: RuleName
    metric: Metric | None = None
    above: float | None = None
    severity: Severity | None = None
    action: Action | None = None
    runbook: AnyHttpUrl | None = None
    enabled: bool | None = None
    act_within: Duration | None = None


class NewVersionLimits(_Strict):
    """Stricter limits while a version is new (the seed's first-hour thresholds)."""

    duration: Duration = timedelta(hours=1)
    severity: Severity = Severity.MEDIUM
    action: Action = Action.OBSERVE
    error_rate_pct: float | None = 0.5
    latency_increase_pct: float | None = 10.0
    quality_drop_pct: float | None = 5.0
    runbook: AnyHttpUrl | None = None


class Settings(_Strict):
    """Per-prompt settings; `defaults` sets them for all, `prompts.NAME` overrides them."""

    source: Literal["builtin", "prometheus"] = "builtin"
    window: Duration = timedelta(minutes=5)
    baseline_window: Duration = timedelta(hours=1)
    min_requests: Annotated[int, Field(ge=1)] = 50
    min_quality_samples: Annotated[int, Field(ge=1)] = 30
    min_latency_samples: Annotated[int, Field(ge=1)] = 500
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    auto_rollback: bool = True
    # A verification that ends without enough traffic to judge pages on-call (default: it is
    # told in the thread only, as HIGH).
    page_when_not_judged: bool = False
    observe: Duration = timedelta(hours=1)
    on_persist: Action = Action.ALERT
    resolve_after: Duration = timedelta(minutes=10)
    quiet: Duration = timedelta(minutes=30)
    # After a rollback: check every `verify_every` for `verify_for` (the runbook: 5 s for 60 s),
    # over the last `verify_window` of traffic; recovered below `recovered_error_rate_pct`.
    verify_every: Duration = timedelta(seconds=5)
    verify_for: Duration = timedelta(seconds=60)
    verify_window: Duration = timedelta(minutes=1)
    recovered_error_rate_pct: Annotated[float, Field(ge=0, le=100)] = 1.0
    # Serving apps still reporting the rolled-back version this long after the rollback: page.
    switch_deadline: Duration = timedelta(seconds=30)
    # Staged moves: a gradual rollback (bad version 75 -> 50 -> 25 -> 0%) pauses when the
    # prompt's error rate passes `gradual_pause_error_rate_pct`; a canary (1 -> 5 -> 25 -> 100%)
    # is judged with the first-hour limits and aborted on any breach.
    gradual_stage: Duration = timedelta(minutes=10)
    gradual_pause_error_rate_pct: Annotated[float, Field(ge=0, le=100)] = 2.0
    canary_stage: Duration = timedelta(minutes=10)
    # URLs that receive every routing change of the prompt (signed with ROLLBACK_WEBHOOK_SECRET).
    webhooks: list[AnyHttpUrl] = []
    runbook: AnyHttpUrl | None = None
    # Slack routing: another channel for this prompt's incidents, and its own on-call group.
    slack_channel: str | None = None
    oncall_usergroup: Annotated[str, Field(pattern=r"^S[A-Z0-9]+$")] | None = None

    def rollout_stage(self, kind: str) -> timedelta:
        """How long each stage of a gradual rollback or a canary lasts."""
        return self.gradual_stage if kind == "gradual_rollback" else self.canary_stage

    @model_validator(mode="after")
    def _persist_action(self) -> Settings:
        if self.on_persist not in (Action.ALERT, Action.PAGE, Action.ROLLBACK):
            raise ValueError("on_persist must be alert, page or rollback")
        return self


class SettingsPatch(_Strict):
    """The same fields as Settings, all optional, plus rule patches."""

    source: Literal["builtin", "prometheus"] | None = None
    window: Duration | None = None
    baseline_window: Duration | None = None
    min_requests: Annotated[int, Field(ge=1)] | None = None
    min_quality_samples: Annotated[int, Field(ge=1)] | None = None
    min_latency_samples: Annotated[int, Field(ge=1)] | None = None
    confidence: Annotated[float, Field(gt=0.5, lt=1)] | None = None
    auto_rollback: bool | None = None
    page_when_not_judged: bool | None = None
    observe: Duration | None = None
    on_persist: Action | None = None
    resolve_after: Duration | None = None
    quiet: Duration | None = None
    verify_every: Duration | None = None
    verify_for: Duration | None = None
    verify_window: Duration | None = None
    recovered_error_rate_pct: Annotated[float, Field(ge=0, le=100)] | None = None
    switch_deadline: Duration | None = None
    gradual_stage: Duration | None = None
    gradual_pause_error_rate_pct: Annotated[float, Field(ge=0, le=100)] | None = None
    canary_stage: Duration | None = None
    webhooks: list[AnyHttpUrl] | None = None
    runbook: AnyHttpUrl | None = None
    slack_channel: str | None = None
    oncall_usergroup: Annotated[str, Field(pattern=r"^S[A-Z0-9]+$")] | None = None
    rules: list[RulePatch] = []
    new_version: NewVersionLimits | None = None


class PrometheusQueries(_Strict):
    """PromQL per figure; `$prompt`, `$version` and `$window` (as seconds, `300s`) are filled in."""

    requests: str
    errors: str
    latency_p50_ms: str | None = None
    latency_p99_ms: str | None = None
    quality: str | None = None
    quality_count: str | None = None


class PrometheusConfig(_Strict):
    """Where Prometheus is and how to ask it."""

    url: AnyHttpUrl
    timeout: Duration = timedelta(seconds=5)
    queries: PrometheusQueries
    headers: dict[str, str] = {}


class PolicyFile(_Strict):
    """One YAML file; sections may be spread over several files but each appears once."""

    defaults: Settings | None = None
    rules: list[Rule] | None = None
    new_version: NewVersionLimits | None = None
    prometheus: PrometheusConfig | None = None
    prompts: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")], SettingsPatch
    ] = {}


class EffectivePolicy(_Strict):
    """Everything that applies to one prompt, overrides applied."""

    prompt: str | None
    settings: Settings
    rules: tuple[Rule, ...]
    new_version: NewVersionLimits | None
    prometheus: PrometheusConfig | None


class PolicySet(_Strict):
    """All loaded policies: defaults, rules, and per-prompt overrides."""

    defaults: Settings
    rules: tuple[Rule, ...]
    new_version: NewVersionLimits | None
    prometheus: PrometheusConfig | None
    prompts: dict[str, SettingsPatch]
    files: tuple[str, ...] = ()

    def adopt(self, other: PolicySet) -> None:
        """Become `other` in place (a reload): every holder of this set sees the new policy.
        The one exception to this model being frozen; the fields change in one dict update,
        so a reader sees the old policy or the new one, never a mix."""
        self.__dict__.update(other.__dict__)

    def lists_webhooks(self) -> bool:
        """Whether any prompt's changes go to webhooks."""
        return bool(self.defaults.webhooks) or any(p.webhooks for p in self.prompts.values())

    def for_prompt(self, prompt: str) -> EffectivePolicy:
        """The effective policy for `prompt`."""
        patch = self.prompts.get(prompt)
        if patch is None:
            return EffectivePolicy(
                prompt=prompt,
                settings=self.defaults,
                rules=self.rules,
                new_version=self.new_version,
                prometheus=self.prometheus,
            )
        changes = patch.model_dump(exclude_unset=True, exclude={"rules", "new_version"})
        settings = self.defaults.model_copy(update=changes)
        return EffectivePolicy(
            prompt=prompt,
            settings=settings,
            rules=apply_rule_patches(self.rules, patch.rules),
            new_version=patch.new_version or self.new_version,
            prometheus=self.prometheus,
        )


def apply_rule_patches(rules: tuple[Rule, ...], patches: list[RulePatch]) -> tuple[Rule, ...]:
    """Rules with each patch applied by name; a patch with a new name adds a rule."""
    by_name = {rule.name: rule for rule in rules}
    for patch in patches:
        changes = patch.model_dump(exclude_unset=True)
        if patch.name in by_name:
            by_name[patch.name] = Rule.model_validate(
                {**by_name[patch.name].model_dump(), **changes}
            )
        else:
            by_name[patch.name] = Rule.model_validate(changes)
    return tuple(by_name.values())
