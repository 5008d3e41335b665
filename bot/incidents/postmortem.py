"""A post-mortem draft from what the bot recorded: timeline, the rule and figures, who did what.

One draft, two renderings: GitHub Markdown (`incidents show --markdown`, for a post-mortem
document) and Slack mrkdwn (the draft posted in the incident's thread: no `#` headings, `*bold*`,
people as mentions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlmodel import Session, col, select

from bot.incidents.records import get_incident
from bot.models import AuditEntry, ChangeKind, Incident, Trigger, Verification
from bot.people import mention


@dataclass(frozen=True)
class _Style:
    heading: Callable[[str], str]
    bold: Callable[[str], str]
    person: Callable[[str, Trigger | None], str]


STYLES: dict[str, _Style] = {
    "markdown": _Style(
        heading=lambda text: f"## {text}",
        bold=lambda text: f"**{text}**",
        person=lambda operator, trigger: operator,
    ),
    "slack": _Style(
        heading=lambda text: f"*{text}*",
        bold=lambda text: f"*{text}*",
        person=mention,
    ),
}

QUESTIONS = (
    "What changed in {version} that caused the regression?",
    "Did it pass A/B tests? If yes, why didn't they catch it?",
    "How do we prevent this next time (staging soak, canary steps, stricter first-hour limits)?",
)


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%SZ") if at else "—"


def _after(start: datetime | None, at: datetime | None) -> str:
    if start is None or at is None:
        return ""
    seconds = int((at - start).total_seconds())
    return f" (+{seconds // 60} min {seconds % 60} s)" if seconds >= 60 else f" (+{seconds} s)"


def _change_line(e: AuditEntry, style: _Style) -> str:
    reason = f": {e.reason}" if e.reason else ""
    return (
        f"- {_when(e.created_at)} {e.kind.value} {e.from_version or '-'} → "
        f"{e.to_version or '-'} by {style.person(e.operator, e.trigger)} "
        f"({e.trigger.value}){reason}"
    )


def postmortem(
    *, session: Session, incident_id: int, style: Literal["markdown", "slack"] = "markdown"
) -> str:
    """The draft, as GitHub Markdown or as Slack mrkdwn."""
    how = STYLES[style]
    incident: Incident = get_incident(session, incident_id)
    deployed = session.exec(
        select(AuditEntry)
        .where(
            AuditEntry.prompt_id == incident.prompt_id,
            AuditEntry.to_version == incident.version,
            col(AuditEntry.kind).in_([ChangeKind.DEPLOY, ChangeKind.SPLIT]),
            col(AuditEntry.created_at) <= incident.opened_at,
        )
        .order_by(col(AuditEntry.id).desc())
    ).first()
    rollback = session.get(AuditEntry, incident.rollback_audit_id or -1)
    verification = session.exec(
        select(Verification).where(Verification.audit_id == (incident.rollback_audit_id or -1))
    ).first()
    start = deployed.created_at if deployed else incident.opened_at
    changes = session.exec(
        select(AuditEntry)
        .where(AuditEntry.prompt_id == incident.prompt_id, col(AuditEntry.created_at) >= start)
        .order_by(col(AuditEntry.id))
    ).all()
    decision = incident.decision or {}
    figures = decision.get("figures", {})
    timeline = [
        (
            "Deployed",
            deployed.created_at if deployed else None,
            f"{incident.version} by {how.person(deployed.operator, deployed.trigger)}"
            if deployed
            else "not recorded",
        ),
        ("Detected", incident.opened_at, incident.summary.split("; ")[0]),
        (
            "Acted",
            rollback.created_at if rollback else None,
            f"rolled back {rollback.from_version} → {rollback.to_version} by "
            f"{how.person(rollback.operator, rollback.trigger)} ({rollback.trigger.value})"
            if rollback
            else "no rollback",
        ),
        (
            "Verified",
            verification.finished_at if verification else None,
            f"{verification.status.value} after {verification.checks_done} checks"
            if verification
            else "not verified",
        ),
        (
            "Closed",
            incident.closed_at if incident.status != "open" else None,
            incident.status.value,
        ),
    ]
    title = f"Post-mortem draft: {incident.prompt} {incident.version} (incident #{incident.id})"
    lines = [
        f"# {title}" if style == "markdown" else f"*{title}*",
        "",
        f"Severity {how.bold(incident.severity.value)}; status {incident.status.value}.",
        "",
        how.heading("Timeline"),
        *(
            f"- {how.bold(label)} {_when(at)}{_after(start, at)}: {what}"
            for label, at, what in timeline
        ),
        "",
        how.heading("What fired"),
        *(
            f"- `{f.get('rule')}`: {f.get('metric')} {float(f.get('value', 0)):.1f} > "
            f"{f.get('threshold')}" + (f" ({f['note']})" if f.get("note") else "")
            for f in decision.get("fired", [])
        ),
        f"- Sample: {figures.get('requests', 0)} requests; error rate "
        f"{figures.get('error_rate_pct')}%; baseline: "
        f"{(figures.get('baseline') or {}).get('source', 'none')}",
        "",
        how.heading("Who did what"),
        *(_change_line(e, how) for e in changes),
        *(
            [f"- {how.person(incident.investigator, Trigger.SLACK)} investigated"]
            if incident.investigator
            else []
        ),
        "",
        how.heading("Questions"),
        *(f"- {q.format(version=incident.version)}" for q in QUESTIONS),
    ]
    return "\n".join(lines)
