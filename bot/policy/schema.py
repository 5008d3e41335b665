"""The shape of a policy file, and the effective policy for one prompt after overrides."""

from __future__ import annotations

import enum
import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from bot.models import Action, Severity

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_duration(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            f"give a unit: {value:g}s, {value:g}m or {value:g}h (a bare number is ambiguous)"
        )
    raise ValueError("must be a duration such as 30s, 5m, 1h or 2d")


def _text(d: timedelta) -> str:
    seconds = d.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _bounded(low: str, high: str) -> Any:
    """A check that a duration lies within [low, high] (both as policy text, e.g. "10s")."""
    lo, hi = _parse_duration(low), _parse_duration(high)

    def check(value: timedelta) -> timedelta:
        if not lo <= value <= hi:
            raise ValueError(f"must be between {low} and {high} (got {_text(value)})")
        return value

    return AfterValidator(check)


_SERIALISE = PlainSerializer(
    lambda d: f"{d.total_seconds():.3f}".rstrip("0").rstrip(".") + "s",
    return_type=str,
    when_used="json",
)
Duration = Annotated[timedelta, BeforeValidator(_parse_duration), _SERIALISE]


# The documented bounds of every duration (docs/policies.md): outside them a value is a typo
# that would blind detection (a 5-second window) or stall it (a week-long verification).
Window = Annotated[Duration, _bounded("10s", "24h")]
BaselineWindow = Annotated[Duration, _bounded("1m", "7d")]
Observe = Annotated[Duration, _bounded("1m", "7d")]
ResolveAfter = Annotated[Duration, _bounded("1m", "7d")]
Quiet = Annotated[Duration, _bounded("0s", "24h")]
VerifyEvery = Annotated[Duration, _bounded("1s", "10m")]
VerifyFor = Annotated[Duration, _bounded("1s", "24h")]
VerifyWindow = Annotated[Duration, _bounded("10s", "1h")]
SwitchDeadline = Annotated[Duration, _bounded("1s", "1h")]
Stage = Annotated[Duration, _bounded("1s", "7d")]
ActWithin = Annotated[Duration, _bounded("10s", "7d")]
FirstHour = Annotated[Duration, _bounded("1m", "7d")]
Timeout = Annotated[Duration, _bounded("100ms", "1m")]


def _number(low: float, high: float, *, open_high: bool = False) -> Any:
    """A finite number (never a string or a boolean) in [low, high] (or [low, high))."""
    if open_high:
        return Field(strict=True, allow_inf_nan=False, ge=low, lt=high)
    return Field(strict=True, allow_inf_nan=False, ge=low, le=high)


Count = Annotated[int, Field(strict=True, ge=1, le=100_000)]
Flag = Annotated[bool, Field(strict=True)]


class Metric(enum.StrEnum):
    """Figures a rule can test (percentages are 0..100)."""

    ERROR_RATE_PCT = "error_rate_pct"
    QUALITY_DROP_PCT = "quality_drop_pct"
    LATENCY_INCREASE_PCT = "latency_increase_pct"
    LATENCY_P99_MS = "latency_p99_ms"
    QUALITY = "quality"


# What each metric's threshold may be: a value outside can never be crossed (the rule is
# switched off without a word) or is crossed by every healthy version.
LIMITS: dict[Metric, tuple[float, float, str]] = {
    Metric.ERROR_RATE_PCT: (0, 100, "a percentage: 0 to below 100"),
    Metric.QUALITY_DROP_PCT: (0, 100, "a percentage of the baseline: 0 to below 100"),
    Metric.LATENCY_INCREASE_PCT: (0, 100_000, "a percentage increase: 0 to 100000"),
    Metric.LATENCY_P99_MS: (1, 3_600_000, "milliseconds: 1 to 3600000"),
    Metric.QUALITY: (0, 1, "a quality score: above 0 up to 1"),
}
Threshold = Annotated[float, Field(strict=True, allow_inf_nan=False)]

RuleName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
RULE_ACTIONS = (Action.OBSERVE, Action.ALERT, Action.PAGE, Action.ROLLBACK)
RULE_SEVERITIES = (Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)


def _one_of(value: Any, allowed: tuple[enum.Enum, ...], field: str) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"{field} must be {', '.join(str(a.value) for a in allowed)}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Strict):
    """A trigger: when `metric` is above `above` (or, for the quality score, below `below`),
    the verdict gets `severity` and `action`."""

    name: RuleName
    metric: Metric
    above: Threshold | None = None
    below: Threshold | None = None
    severity: Severity
    action: Action
    runbook: AnyHttpUrl | None = None
    enabled: Flag = True
    # The runbook's time limit: with nobody acting on the incident by then, page again.
    act_within: ActWithin | None = None

    @model_validator(mode="after")
    def _known_kinds(self) -> Rule:
        _one_of(self.severity, RULE_SEVERITIES, "severity")
        _one_of(self.action, RULE_ACTIONS, "action")
        if self.severity == Severity.CRITICAL and self.action != Action.ROLLBACK:
            # A critical rule that only pages would quietly keep a failing version serving;
            # the one switch for "people decide" is auto_rollback, which the verdict honours.
            raise ValueError(
                f"a critical rule rolls back: action must be rollback, not {self.action.value} "
                "(to page on-call instead of rolling back, set auto_rollback: false)"
            )
        check_threshold(self.metric, self.above, self.below)
        return self

    @property
    def limit(self) -> float:
        """The threshold, whichever side it is on."""
        return (
            self.below
            if self.metric == Metric.QUALITY and self.below is not None
            else (self.above or 0.0)
        )

    def crossed(self, value: float) -> bool:
        """Whether `value` is strictly past the threshold."""
        return value < self.limit if self.metric == Metric.QUALITY else value > self.limit


def check_threshold(metric: Metric, above: float | None, below: float | None) -> None:
    """`above` for every metric but the quality score, which is higher-is-better and takes
    `below`; the value inside the metric's range."""
    low, high, words = LIMITS[metric]
    if metric == Metric.QUALITY:
        if above is not None:
            raise ValueError(
                "quality is a score where higher is better: use `below:` (a floor) instead of "
                "`above:`, or quality_drop_pct for a drop against the baseline"
            )
        if below is None:
            raise ValueError("a quality rule needs `below:` (the floor, 0 to 1)")
        if not low < below <= high:
            raise ValueError(f"below: {below:g} is outside {words}")
        return
    if below is not None:
        raise ValueError(f"`below:` is only for the quality score; {metric.value} takes `above:`")
    if above is None:
        raise ValueError("a rule needs `above:` (the threshold)")
    inside = (
        low <= above < high
        if metric in (Metric.ERROR_RATE_PCT, Metric.QUALITY_DROP_PCT)
        else (low <= above <= high)
    )
    if not inside:
        raise ValueError(f"above: {above:g} is outside {words}")


class RulePatch(_Strict):
    """A per-prompt change to a rule of the same name (or a new rule when `metric` is given)."""

    name: RuleName
    metric: Metric | None = None
    above: Threshold | None = None
    below: Threshold | None = None
    severity: Severity | None = None
    action: Action | None = None
    runbook: AnyHttpUrl | None = None
    enabled: Flag | None = None
    act_within: ActWithin | None = None

    @model_validator(mode="after")
    def _known_kinds(self) -> RulePatch:
        _one_of(self.severity, RULE_SEVERITIES, "severity")
        _one_of(self.action, RULE_ACTIONS, "action")
        return self


FIRST_HOUR_SEVERITIES = (Severity.MEDIUM,)
FIRST_HOUR_ACTIONS = (Action.OBSERVE, Action.ALERT)
PERSIST_ACTIONS = (Action.ALERT, Action.PAGE, Action.ROLLBACK)
Confidence = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.8, le=0.999)]
UserGroup = Annotated[str, Field(pattern=r"^S[A-Z0-9]+$")]


class NewVersionLimits(_Strict):
    """Stricter limits while a version is new (the seed's first-hour thresholds). They only
    ever open a medium incident that is observed or alerted: never a page or a rollback."""

    duration: FirstHour = timedelta(hours=1)
    severity: Severity = Severity.MEDIUM
    action: Action = Action.OBSERVE
    error_rate_pct: Annotated[float, _number(0, 100, open_high=True)] | None = 0.5
    latency_increase_pct: Annotated[float, _number(0, 100_000)] | None = 10.0
    quality_drop_pct: Annotated[float, _number(0, 100, open_high=True)] | None = 5.0
    runbook: AnyHttpUrl | None = None

    @model_validator(mode="after")
    def _observe_only(self) -> NewVersionLimits:
        _one_of(self.severity, FIRST_HOUR_SEVERITIES, "severity")
        _one_of(self.action, FIRST_HOUR_ACTIONS, "action")
        return self


class Settings(_Strict):
    """Per-prompt settings; `defaults` sets them for all, `prompts.NAME` overrides them."""

    source: Literal["builtin", "prometheus"] = "builtin"
    window: Window = timedelta(minutes=5)
    baseline_window: BaselineWindow = timedelta(hours=1)
    min_requests: Count = 50
    min_quality_samples: Count = 30
    min_latency_samples: Count = 500
    confidence: Confidence = 0.95
    auto_rollback: Flag = True
    # A verification that ends without enough traffic to judge pages on-call (default: it is
    # told in the thread only, as HIGH).
    page_when_not_judged: Flag = False
    observe: Observe = timedelta(hours=1)
    on_persist: Action = Action.ALERT
    resolve_after: ResolveAfter = timedelta(minutes=10)
    quiet: Quiet = timedelta(minutes=30)
    # After a rollback: check every `verify_every` for `verify_for` (the runbook: 5 s for 60 s),
    # over the last `verify_window` of traffic; recovered below `recovered_error_rate_pct`.
    verify_every: VerifyEvery = timedelta(seconds=5)
    verify_for: VerifyFor = timedelta(seconds=60)
    verify_window: VerifyWindow = timedelta(minutes=1)
    recovered_error_rate_pct: Annotated[float, _number(0, 100, open_high=True)] = 1.0
    # Serving apps still reporting the rolled-back version this long after the rollback: page.
    switch_deadline: SwitchDeadline = timedelta(seconds=30)
    # Staged moves: a gradual rollback (bad version 75 -> 50 -> 25 -> 0%) pauses when the
    # prompt's error rate passes `gradual_pause_error_rate_pct`; a canary (1 -> 5 -> 25 -> 100%)
    # is judged with the first-hour limits and aborted on any breach.
    gradual_stage: Stage = timedelta(minutes=10)
    gradual_pause_error_rate_pct: Annotated[float, _number(0, 100, open_high=True)] = 2.0
    canary_stage: Stage = timedelta(minutes=10)
    # URLs that receive every routing change of the prompt (signed with ROLLBACK_WEBHOOK_SECRET).
    webhooks: list[AnyHttpUrl] = []
    runbook: AnyHttpUrl | None = None
    # Slack routing: another channel for this prompt's incidents, and its own on-call group.
    slack_channel: str | None = None
    oncall_usergroup: UserGroup | None = None

    def rollout_stage(self, kind: str) -> timedelta:
        """How long each stage of a gradual rollback or a canary lasts."""
        return self.gradual_stage if kind == "gradual_rollback" else self.canary_stage

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        _one_of(self.on_persist, PERSIST_ACTIONS, "on_persist")
        if self.verify_for < self.verify_every:
            raise ValueError(
                f"verify_for ({_text(self.verify_for)}) is shorter than verify_every "
                f"({_text(self.verify_every)}): verification would never check"
            )
        return self


class SettingsPatch(_Strict):
    """The same fields as Settings, all optional, plus rule patches."""

    source: Literal["builtin", "prometheus"] | None = None
    window: Window | None = None
    baseline_window: BaselineWindow | None = None
    min_requests: Count | None = None
    min_quality_samples: Count | None = None
    min_latency_samples: Count | None = None
    confidence: Confidence | None = None
    auto_rollback: Flag | None = None
    page_when_not_judged: Flag | None = None
    observe: Observe | None = None
    on_persist: Action | None = None
    resolve_after: ResolveAfter | None = None
    quiet: Quiet | None = None
    verify_every: VerifyEvery | None = None
    verify_for: VerifyFor | None = None
    verify_window: VerifyWindow | None = None
    recovered_error_rate_pct: Annotated[float, _number(0, 100, open_high=True)] | None = None
    switch_deadline: SwitchDeadline | None = None
    gradual_stage: Stage | None = None
    gradual_pause_error_rate_pct: Annotated[float, _number(0, 100, open_high=True)] | None = None
    canary_stage: Stage | None = None
    webhooks: list[AnyHttpUrl] | None = None
    runbook: AnyHttpUrl | None = None
    slack_channel: str | None = None
    oncall_usergroup: UserGroup | None = None
    rules: list[RulePatch] = []
    new_version: NewVersionLimits | None = None

    @model_validator(mode="after")
    def _persist(self) -> SettingsPatch:
        _one_of(self.on_persist, PERSIST_ACTIONS, "on_persist")
        return self


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
    timeout: Timeout = timedelta(seconds=5)
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

    prompt: str | None  # None: the defaults, shared by every prompt without an override
    settings: Settings
    rules: tuple[Rule, ...]
    new_version: NewVersionLimits | None
    prometheus: PrometheusConfig | None


def rollback_limits(policy: EffectivePolicy) -> dict[str, float]:
    """Each metric's automatic-rollback threshold (the first enabled rule), for charts."""
    limits: dict[str, float] = {}
    for rule in policy.rules:
        if rule.enabled and rule.action == Action.ROLLBACK:
            limits.setdefault(rule.metric.value, rule.limit)
    return limits


class PolicySet(_Strict):
    """All loaded policies: defaults, rules, and per-prompt overrides."""

    defaults: Settings
    rules: tuple[Rule, ...]
    new_version: NewVersionLimits | None
    prometheus: PrometheusConfig | None
    prompts: dict[str, SettingsPatch]
    files: tuple[str, ...] = ()
    # Where each prompt override is written ("file:line"), for warnings about it.
    prompt_origins: dict[str, str] = {}

    def adopt(self, other: PolicySet) -> None:
        """Become `other` in place (a reload): every holder of this set sees the new policy.
        The one exception to this model being frozen; the fields change in one dict update,
        so a reader sees the old policy or the new one, never a mix."""
        self.__dict__.update(other.__dict__)

    def unknown_prompts(self, known: set[str]) -> list[str]:
        """A warning for each override naming a prompt the registry does not have (a typo
        there leaves the real prompt on the defaults without a word)."""
        return [
            f"{self.prompt_origins.get(name, 'policies')}: prompts.{name}: no prompt of that "
            f"name is registered; a typo? (registered: {', '.join(sorted(known)[:10]) or 'none'})"
            for name in sorted(self.prompts)
            if name not in known
        ]

    def lists_webhooks(self) -> bool:
        """Whether any prompt's changes go to webhooks."""
        return bool(self.defaults.webhooks) or any(p.webhooks for p in self.prompts.values())

    def for_prompt(self, prompt: str | None) -> EffectivePolicy:
        """The effective policy for `prompt`; None gives the defaults, which every prompt
        without an override shares."""
        patch = None if prompt is None else self.prompts.get(prompt)
        # The defaults and rules were validated when the files were loaded: validating them
        # again for every prompt only costs time. A patched prompt's merged settings are
        # checked here (their own validators run on the combination).
        if patch is None:
            return EffectivePolicy.model_construct(
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
