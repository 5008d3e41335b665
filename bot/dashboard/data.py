"""What the dashboard shows, read in a few set-based queries: no HTML here."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlalchemy import select as rows_of
from sqlmodel import Session, col, select

from bot.metrics.histogram import percentile
from bot.models import (
    HISTOGRAM_COLUMNS,
    AuditEntry,
    Incident,
    IncidentStatus,
    Prompt,
    PromptVersion,
    Routing,
    metric_bucket,
)
from bot.policy import PolicySet

WINDOW = timedelta(minutes=5)
RANGES = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
ACTIVE = (IncidentStatus.OPEN, IncidentStatus.OBSERVING)


@dataclass
class Row:
    """One prompt on the overview."""

    prompt: str
    revision: int
    active: str | None
    split: dict[str, int] | None
    requests: int = 0
    errors: int = 0
    incident_id: int | None = None
    incident_severity: str | None = None
    incident_status: str | None = None
    min_requests: int = 50

    @property
    def error_rate(self) -> float | None:
        return None if not self.requests else 100 * self.errors / self.requests

    @property
    def verdict(self) -> str:
        """What can truthfully be said at a glance."""
        if self.incident_severity is not None:
            return f"{self.incident_severity} incident ({self.incident_status})"
        if self.active is None:
            return "not serving"
        if self.requests < self.min_requests:
            return f"not enough data ({self.requests} of {self.min_requests} requests)"
        return "no open incident"


def overview(session: Session, policies: PolicySet, now: datetime) -> list[Row]:
    """Every prompt: routing, the last 5 minutes' figures of its live versions, its incident."""
    rows: dict[int, Row] = {}
    routing = session.execute(
        rows_of(
            col(Prompt.id),
            col(Prompt.name),
            col(Routing.revision),
            col(Routing.split),
            col(PromptVersion.label),
        )
        .join(Routing, col(Routing.prompt_id) == Prompt.id)
        .join(PromptVersion, col(PromptVersion.id) == Routing.active_version_id, isouter=True)
        .order_by(col(Prompt.name))
    ).all()
    for prompt_id, name, revision, split, active in routing:
        rows[prompt_id or 0] = Row(
            name,
            revision,
            active,
            split,
            min_requests=policies.for_prompt(name).settings.min_requests,
        )
    figures = session.execute(
        rows_of(
            col(PromptVersion.prompt_id),
            col(PromptVersion.label),
            func.sum(metric_bucket.c.requests),
            func.sum(metric_bucket.c.errors),
        )
        .join(metric_bucket, metric_bucket.c.version_id == PromptVersion.id)
        .where(metric_bucket.c.minute >= now - WINDOW)
        .group_by(col(PromptVersion.prompt_id), col(PromptVersion.label))
    ).all()
    for prompt_id, label, requests, errors in figures:
        row = rows.get(prompt_id)
        serving = row is not None and (label == row.active or label in (row.split or {}))
        if row is not None and serving:
            row.requests += int(requests or 0)
            row.errors += int(errors or 0)
    incidents = session.exec(
        select(Incident).where(col(Incident.status).in_(ACTIVE)).order_by(col(Incident.id))
    ).all()
    for incident in incidents:
        row = rows.get(incident.prompt_id)
        if row is not None:
            row.incident_id = incident.id
            row.incident_severity = incident.severity.value
            row.incident_status = incident.status.value
    return list(rows.values())


@dataclass
class Series:
    """One version's figures over time, a point per step."""

    version: str
    times: list[datetime] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    error_rate: list[float | None] = field(default_factory=list)
    quality: list[float | None] = field(default_factory=list)
    p99_ms: list[float | None] = field(default_factory=list)


def series(session: Session, prompt_id: int, since: datetime, step: timedelta) -> list[Series]:
    """Each version's error rate, quality and p99 since `since`, summed per `step`."""
    rows = session.execute(
        rows_of(
            col(PromptVersion.label),
            metric_bucket.c.minute,
            metric_bucket.c.requests,
            metric_bucket.c.errors,
            metric_bucket.c.quality_sum,
            metric_bucket.c.quality_count,
            *(metric_bucket.c[name] for name in HISTOGRAM_COLUMNS),
        )
        .join(metric_bucket, metric_bucket.c.version_id == PromptVersion.id)
        .where(col(PromptVersion.prompt_id) == prompt_id, metric_bucket.c.minute >= since)
        .order_by(metric_bucket.c.minute)
    ).all()
    seconds = step.total_seconds()
    sums: dict[str, dict[datetime, list[float]]] = defaultdict(dict)
    for label, minute, requests, errors, q_sum, q_count, *hist in rows:
        slot = datetime.fromtimestamp(minute.timestamp() // seconds * seconds, minute.tzinfo)
        acc = sums[label].setdefault(slot, [0.0] * (4 + len(HISTOGRAM_COLUMNS)))
        for i, value in enumerate((requests, errors, q_sum, q_count, *hist)):
            acc[i] += float(value or 0)
    found = []
    for label in sorted(sums):
        one = Series(label)
        for slot in sorted(sums[label]):
            requests, errors, q_sum, q_count, *hist = sums[label][slot]
            one.times.append(slot)
            one.requests.append(int(requests))
            one.error_rate.append(100 * errors / requests if requests else None)
            one.quality.append(q_sum / q_count if q_count else None)
            one.p99_ms.append(percentile([int(h) for h in hist], 0.99) if requests else None)
        found.append(one)
    return found


def changes(session: Session, prompt_id: int, since: datetime) -> list[AuditEntry]:
    """Routing changes of the prompt since `since`, oldest first (the charts' markers)."""
    return list(
        session.exec(
            select(AuditEntry)
            .where(AuditEntry.prompt_id == prompt_id, col(AuditEntry.created_at) >= since)
            .order_by(col(AuditEntry.id))
        ).all()
    )
