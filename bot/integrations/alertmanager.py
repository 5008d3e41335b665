"""Alertmanager's webhook as a trigger: each alert about a prompt version becomes a verdict.

Teams that already alert on prompt metrics in Prometheus keep their rules; the bot acts on the
alerts through the same incident lifecycle as its own verdicts. Pure: payload in, verdicts out.

Mapping (docs/alertmanager.md): the `prompt` and `version` labels (names configurable) say
which version; `severity` gives the severity (critical; high, page or error; medium or
warning), and `action` the action if set, else the severity's default as in the runbook's
table: critical → rollback, high → page, medium → observe. A rollback becomes a page where the
prompt's policy has `auto_rollback: false`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bot.judging.verdict import Decision, Fired
from bot.models import Action, Severity
from bot.policy import PolicySet

SEVERITIES = {
    "critical": Severity.CRITICAL,
    "high": Severity.HIGH,
    "page": Severity.HIGH,
    "error": Severity.HIGH,
    "medium": Severity.MEDIUM,
    "warning": Severity.MEDIUM,
}
DEFAULT_ACTION = {
    Severity.CRITICAL: Action.ROLLBACK,
    Severity.HIGH: Action.PAGE,
    Severity.MEDIUM: Action.OBSERVE,
}
ACTIONS = {a.value: a for a in (Action.OBSERVE, Action.ALERT, Action.PAGE, Action.ROLLBACK)}


class Alert(BaseModel):
    """One alert of the webhook payload (Alertmanager's documented format, version 4)."""

    model_config = ConfigDict(extra="ignore")

    status: str
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = ""


class Payload(BaseModel):
    """The webhook body."""

    model_config = ConfigDict(extra="ignore")

    version: str = "4"
    status: str = "firing"
    receiver: str = ""
    alerts: list[Alert] = Field(default_factory=list, max_length=10_000)
    externalURL: str = ""


@dataclass(frozen=True)
class AlertVerdict:
    """What one alert asks for."""

    prompt: str
    version: str
    alert: str  # the alert's name, as the incident's rule
    firing: bool
    decision: Decision | None  # for a firing alert


def rule_name(alert: Alert) -> str:
    """The alert's name as a rule name (snake_case)."""
    name = alert.labels.get("alertname", "alert")
    return (
        re.sub(r"[^a-z0-9_]+", "_", re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()).strip("_")[:64]
        or "alert"
    )


def verdicts(
    payload: Payload, policies: PolicySet, *, prompt_label: str, version_label: str
) -> tuple[list[AlertVerdict], list[str]]:
    """The verdicts the payload asks for, and a line for each alert it cannot be about."""
    found: list[AlertVerdict] = []
    skipped: list[str] = []
    for alert in payload.alerts:
        name = alert.labels.get("alertname", "?")
        prompt, version = alert.labels.get(prompt_label), alert.labels.get(version_label)
        if not prompt or not version:
            skipped.append(f"{name}: no {prompt_label!r} and {version_label!r} labels")
            continue
        rule = rule_name(alert)
        if alert.status != "firing":
            found.append(AlertVerdict(prompt, version, rule, firing=False, decision=None))
            continue
        raw = alert.labels.get("severity", "").lower()
        severity = SEVERITIES.get(raw, Severity.HIGH)  # unknown: a person looks at it
        action = ACTIONS.get(alert.labels.get("action", "").lower(), DEFAULT_ACTION[severity])
        note = alert.annotations.get("summary") or alert.annotations.get("description") or None
        if action == Action.ROLLBACK and not policies.for_prompt(prompt).settings.auto_rollback:
            action, note = Action.PAGE, "automatic rollback is off for this prompt"
        fired = Fired(
            rule=rule,
            metric="alert",
            value=1.0,
            threshold=0.0,
            severity=severity,
            action=action,
            runbook=alert.annotations.get("runbook_url") or None,
            note=note,
        )
        figures: dict[str, Any] = {"source": "alertmanager", "generator_url": alert.generatorURL}
        decision = Decision(
            prompt,
            version,
            severity,
            action,
            fired=(fired,),
            figures=figures,
            reason=f"Alertmanager: {fired.describe()}",
        )
        found.append(AlertVerdict(prompt, version, rule, firing=True, decision=decision))
    return found, skipped
