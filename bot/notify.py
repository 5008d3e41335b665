"""What the checker tells people, and the console notifier (the Slack one replaces it)."""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlmodel import Session

from bot.models import Action, Severity

log = logging.getLogger("bot.notify")


class NoticeKind(enum.StrEnum):
    """Kinds of notice, each a moment on-call cares about."""

    INCIDENT_OPENED = "incident_opened"
    INCIDENT_ESCALATED = "incident_escalated"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    OBSERVATION_ENDED = "observation_ended"
    INCIDENT_RESOLVED = "incident_resolved"
    VERIFICATION_CHECK = "verification_check"
    VERIFICATION_RECOVERED = "verification_recovered"
    VERIFICATION_FAILED = "verification_failed"
    VERIFICATION_NOT_JUDGED = "verification_not_judged"  # no traffic to judge: not a page
    SWITCH_CONFIRMED = "switch_confirmed"  # every reporting app serves the restored version
    SWITCH_LAGGING = "switch_lagging"  # apps still serve the rolled-back version past the deadline
    ROLLOUT_STARTED = "rollout_started"
    ROLLOUT_STAGE = "rollout_stage"
    ROLLOUT_PAUSED = "rollout_paused"
    ROLLOUT_COMPLETED = "rollout_completed"
    ROLLOUT_ABORTED = "rollout_aborted"
    ROLLOUT_SUPERSEDED = "rollout_superseded"  # a person's change replaced the rollout's split
    ROLLOUT_FOR_INCIDENT = "rollout_for_incident"  # told in the thread of the incident it treats
    METRICS_SOURCE_DOWN = "metrics_source_down"
    METRICS_SOURCE_RECOVERED = "metrics_source_recovered"
    POLICY_REJECTED = "policy_rejected"  # an edited policy is invalid: the last good one stays


@dataclass(frozen=True)
class Notice:
    """One message for people: what happened, how bad, and the figures behind it."""

    kind: NoticeKind
    severity: Severity
    title: str
    text: str
    prompt: str | None = None
    version: str | None = None
    incident_id: int | None = None
    action: Action | None = None  # page / alert / observe / rollback: who should be told how
    details: dict[str, Any] = field(default_factory=dict)
    headline: str | None = None  # the first line for a person paged about it, in plain words
    key: str | None = None  # posts once per key (replicas seeing the same thing say it once)


class Notifier(Protocol):
    """Delivers notices; must not raise for delivery problems it can retry itself."""

    def send(self, notice: Notice, session: Session | None = None) -> None:
        """Deliver one notice; with `session`, queue it in that transaction (the change's own)."""
        ...


def deliver(notifier: Notifier, notice: Notice, session: Session | None = None) -> None:
    """Send `notice` without letting a notifier failure undo or stop the change it reports.

    With `session` the notice commits with the change it reports (a crash loses neither or
    both); a failing notifier is rolled back to a savepoint and logged, the change still commits.
    """
    if not isinstance(notifier, LogNotifier):  # that one writes its own line
        log.info(
            "notice %s [%s] %s: %s",
            notice.kind.value,
            notice.severity.value,
            notice.title,
            notice.text[:300],
            extra={"incident": notice.incident_id, "prompt": notice.prompt},
        )
    try:
        if session is None:
            notifier.send(notice)
            return
        with session.begin_nested():
            notifier.send(notice, session)
    except Exception:
        log.exception(
            "notifier failed for %s", notice.kind.value, extra={"incident": notice.incident_id}
        )


class LogNotifier:
    """Writes each notice as one log line (and keeps them, for `check --once` and tests)."""

    def __init__(self) -> None:
        self.sent: list[Notice] = []

    def send(self, notice: Notice, session: Session | None = None) -> None:
        """Log the notice at a level matching its severity."""
        self.sent.append(notice)
        level = (
            logging.WARNING
            if notice.severity in (Severity.HIGH, Severity.CRITICAL)
            else logging.INFO
        )
        log.log(
            level,
            "%s [%s] %s: %s %s",
            notice.kind.value,
            notice.severity.value,
            notice.title,
            notice.text,
            json.dumps({"incident": notice.incident_id, "action": notice.action}),
            extra={
                "incident": notice.incident_id,
                "prompt": notice.prompt,
                "version": notice.version,
            },
        )
