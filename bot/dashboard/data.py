"""What the dashboard shows, read in a few set-based queries: no HTML here."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, or_
from sqlalchemy import select as rows_of
from sqlmodel import Session, col, select

from bot.judging.verdict import wilson_interval
from bot.metrics.histogram import percentile
from bot.models import (
    ACTIVE_ROLLOUT,
    HISTOGRAM_COLUMNS,
    AuditEntry,
    ChangeKind,
    Incident,
    IncidentStatus,
    Prompt,
    PromptVersion,
    Rollout,
    Routing,
    Verification,
    VerificationStatus,
    metric_bucket,
)
from bot.policy import PolicySet
from bot.rollouts.stages import describe

WINDOW = timedelta(minutes=5)
RANGES = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
# Incidents the overview shows: waiting for people, observed, or rolled back and not yet
# resolved (verification running, or it ended without recovery less than a day ago).
SHOWN = (IncidentStatus.OPEN, IncidentStatus.OBSERVING, IncidentStatus.ROLLED_BACK)
KEEP_ROLLED_BACK = timedelta(hours=24)  # a rolled-back incident stays this long after its check
VERIFYING = {
    VerificationStatus.RUNNING: "verifying",
    VerificationStatus.ESCALATED: "not recovered",
    VerificationStatus.NOT_JUDGED: "not verified",
}


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
    incident_version: str | None = None
    verification: str | None = None  # "verifying (check 2/5)", "not recovered", …
    rollout: str | None = None
    min_requests: int = 50
    confidence: float = 0.95

    @property
    def error_rate(self) -> float | None:
        return None if not self.requests else 100 * self.errors / self.requests

    @property
    def error_rate_text(self) -> str:
        """'8.0% (6.7 to 9.5)': the rate and its Wilson bounds at the policy's confidence, the
        interval the checker judges by (check --once prints the same)."""
        if self.error_rate is None:
            return "—"
        low, high = wilson_interval(self.errors, self.requests, self.confidence)
        return f"{self.error_rate:.1f}% ({low:.1f} to {high:.1f})"

    @property
    def serving(self) -> str:
        if self.split:
            return ", ".join(f"{v} {p}%" for v, p in self.split.items())
        return self.active or "—"

    @property
    def verdict(self) -> str:
        """What can truthfully be said at a glance."""
        if self.incident_severity is not None:
            status = (self.incident_status or "").replace("_", " ")
            after = f", {self.verification}" if self.verification else ""
            return f"{self.incident_severity} incident on {self.incident_version} ({status}{after})"
        if self.active is None and not self.split:
            return "not serving"
        if self.requests < self.min_requests:
            return f"not enough data ({self.requests} of {self.min_requests} requests)"
        return "no open incident"

    def public(self) -> dict[str, object]:
        """The row as the page shows it (the live update sends the same texts)."""
        return {
            "prompt": self.prompt,
            "revision": self.revision,
            "serving": self.serving,
            "requests": f"{self.requests:,}",
            "error_rate": self.error_rate_text,
            "verdict": self.verdict,
            "incident_id": self.incident_id,
            "severity": self.incident_severity,
            "rollout": self.rollout,
        }


def overview(session: Session, policies: PolicySet, now: datetime) -> list[Row]:
    """Every prompt: routing, the last 5 minutes' figures of its live versions, its incident
    (with its verification, if rolled back) and its running rollout."""
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
        settings = policies.for_prompt(name).settings
        rows[prompt_id or 0] = Row(
            name,
            revision,
            active,
            split,
            min_requests=settings.min_requests,
            confidence=settings.confidence,
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
    incidents = session.execute(
        rows_of(Incident, Verification)
        .join(
            Verification,
            col(Verification.audit_id) == Incident.rollback_audit_id,
            isouter=True,
        )
        .where(col(Incident.status).in_(SHOWN))
        .order_by(col(Incident.id))
    ).all()
    for incident, verification in incidents:
        row = rows.get(incident.prompt_id)
        ended = verification.finished_at if verification is not None else None
        if row is None or (ended is not None and ended < now - KEEP_ROLLED_BACK):
            continue
        row.incident_id = incident.id
        row.incident_severity = incident.severity.value
        row.incident_status = incident.status.value
        row.incident_version = incident.version
        row.verification = _verifying(verification)
    running = session.exec(select(Rollout).where(col(Rollout.status).in_(ACTIVE_ROLLOUT))).all()
    for rollout in running:
        row = rows.get(rollout.prompt_id)
        if row is not None:
            row.rollout = describe(rollout)
    return list(rows.values())


def _verifying(v: Verification | None) -> str | None:
    if v is None or v.status not in VERIFYING:
        return None
    if v.status == VerificationStatus.RUNNING and v.checks_total:
        return f"verifying, check {v.checks_done}/{v.checks_total} done"
    return VERIFYING[v.status]


@dataclass
class Series:
    """One version's figures over time, a point per step."""

    version: str
    times: list[datetime] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    error_rate: list[float | None] = field(default_factory=list)
    quality: list[float | None] = field(default_factory=list)
    p99_ms: list[float | None] = field(default_factory=list)
    share: list[float | None] = field(default_factory=list)  # % of the prompt's requests


@dataclass
class Span:
    """An incident on the charts: from detection to its close (or still going)."""

    id: int
    version: str
    severity: str
    opened_at: datetime
    closed_at: datetime | None


@dataclass
class ChartData:
    """What one chart shows: a line per version, the routing changes, the incidents."""

    lines: list[Series]
    changes: list[AuditEntry]
    incidents: list[Span]


def chart_data(
    session: Session,
    prompt_id: int,
    since: datetime,
    step: timedelta,
    versions: Collection[str | None] | None = None,
) -> ChartData:
    """Everything a chart of the prompt since `since` draws (only `versions`' lines if given)."""
    lines = series(session, prompt_id, since, step)
    if versions is not None:
        lines = [line for line in lines if line.version in versions]
    return ChartData(
        lines, changes(session, prompt_id, since), incidents(session, prompt_id, since)
    )


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
    totals: dict[datetime, int] = defaultdict(int)
    for one in found:
        for slot, requests in zip(one.times, one.requests, strict=True):
            totals[slot] += requests
    for one in found:
        one.share = [
            100 * requests / totals[slot] if totals[slot] else None
            for slot, requests in zip(one.times, one.requests, strict=True)
        ]
    return found


def changes(session: Session, prompt_id: int, since: datetime) -> list[AuditEntry]:
    """Routing changes of the prompt since `since`, oldest first (the charts' markers)."""
    return list(
        session.exec(
            select(AuditEntry)
            .where(
                AuditEntry.prompt_id == prompt_id,
                col(AuditEntry.created_at) >= since,
                AuditEntry.kind != ChangeKind.HEALTH,
            )
            .order_by(col(AuditEntry.id))
        ).all()
    )


def incidents(session: Session, prompt_id: int, since: datetime) -> list[Span]:
    """The prompt's incidents open at any time since `since`, oldest first."""
    found = session.exec(
        select(Incident)
        .where(
            Incident.prompt_id == prompt_id,
            or_(col(Incident.closed_at).is_(None), col(Incident.closed_at) >= since),
        )
        .order_by(col(Incident.id))
    ).all()
    return [Span(i.id or 0, i.version, i.severity.value, i.opened_at, i.closed_at) for i in found]
