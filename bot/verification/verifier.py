"""After every rollback: check the restored version on a schedule; recovered, or escalate.

The schedule lives in the `verification` table (written with the rollback), so a restart
resumes it and a second replica does not repeat it (each check claims its row first).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from bot.db import write_session
from bot.faults import failpoint
from bot.integrations.pagerduty import PagerDuty
from bot.judging.analysis import Outcome, measure_and_assess
from bot.judging.targets import verification_target
from bot.metrics import MetricsSource
from bot.models import (
    Action,
    Incident,
    IncidentStatus,
    PromptVersion,
    Severity,
    Verification,
    VerificationStatus,
    VersionSeen,
    utcnow,
)
from bot.notify import Notice, NoticeKind, Notifier, deliver
from bot.policy import PolicySet
from bot.runtime.claims import claim_due

log = logging.getLogger(__name__)

CLAIM_FOR = timedelta(seconds=30)
MIN_REQUESTS = 20  # fewer requests in the window: "waiting for traffic", never "recovered"


class CheckOutcome(enum.StrEnum):
    """What one check found (kept in last_figures["outcome"])."""

    RECOVERED = "recovered"
    FAILING = "failing"  # judged, not recovered yet
    NO_TRAFFIC = "no_traffic"  # too few requests since the switch to judge
    UNAVAILABLE = "unavailable"  # the metrics source did not answer


UNJUDGED = frozenset({CheckOutcome.NO_TRAFFIC, CheckOutcome.UNAVAILABLE})
SWITCH_QUIET = timedelta(seconds=2)  # rolled-back version unseen this long: apps switched


class Verifier:
    """Runs due verification checks and reports each one."""

    def __init__(
        self,
        *,
        engine: Engine,
        policies: PolicySet,
        sources: Mapping[str, MetricsSource],
        notifier: Notifier,
        pager: PagerDuty | None = None,
        clock: Callable[[], datetime] = utcnow,
        claim_for: timedelta = CLAIM_FOR,
    ) -> None:
        self.engine, self.policies, self.sources = engine, policies, sources
        self.notifier, self.pager, self.clock = notifier, pager, clock
        self.claim_for = claim_for

    def run_due(self) -> int:
        """Run every check that is due now; returns how many ran."""
        now = self.clock()
        due = self._claim(now)
        for verification in due:
            failpoint("verify.claimed")
            self._check(verification, now)
        return len(due)

    def _claim(self, now: datetime) -> list[Verification]:
        with write_session(self.engine) as session:
            return claim_due(
                session,
                Verification,
                due=[
                    col(Verification.status) == VerificationStatus.RUNNING,
                    col(Verification.next_check_at) <= now,
                ],
                now=now,
                claim_for=self.claim_for,
                also=lambda row: col(Verification.checks_done) == row.checks_done,
            )

    def _check(self, v: Verification, now: datetime) -> None:
        settings = self.policies.for_prompt(v.prompt).settings
        total = v.checks_total or max(1, round(settings.verify_for / settings.verify_every))
        number = v.checks_done + 1
        switch = None if v.switch_reported else self._switch(v, now)
        line, outcome, figures = self._measure(v, now)
        figures = {**figures, "outcome": outcome.value}
        text = f"Check {number}/{total}: {line}"
        recovered = outcome == CheckOutcome.RECOVERED
        finished = recovered or number >= total
        status = (
            VerificationStatus.RECOVERED
            if recovered
            else VerificationStatus.RUNNING
            if not finished
            else VerificationStatus.NOT_JUDGED
            if outcome in UNJUDGED
            else VerificationStatus.ESCALATED
        )
        # "Waiting for traffic" is said once, not at every check, until something changes.
        repeated = outcome in UNJUDGED and v.last_figures.get("outcome") == outcome.value
        pages = status == VerificationStatus.ESCALATED or (
            status == VerificationStatus.NOT_JUDGED and settings.page_when_not_judged
        )
        if pages:
            # Paged before the check commits: if this process dies in between, the check runs
            # again and PagerDuty folds the repeat into the same alert (same dedup key).
            self._page(v, self._escalation_text(v, line, figures), figures)
        with write_session(self.engine) as session:
            written = session.execute(
                update(Verification)
                .where(
                    col(Verification.id) == v.id,
                    col(Verification.checks_done) == v.checks_done,
                    col(Verification.status) == VerificationStatus.RUNNING,  # not superseded
                )
                .values(
                    switch_reported=v.switch_reported or switch is not None,
                    checks_done=number,
                    checks_total=total,
                    last_figures=figures,
                    next_check_at=now + settings.verify_every,
                    claimed_until=None,
                    status=status,
                    finished_at=now if finished else None,
                )
                .execution_options(synchronize_session=False)
            )
            if written.rowcount != 1:  # type: ignore[attr-defined]
                return  # another replica recorded this check after our claim lapsed
            incident = _incident_of(session, v)
            notices = (
                []
                if repeated and not finished
                else [self._notice(NoticeKind.VERIFICATION_CHECK, v, incident, text, figures)]
            )
            if switch is not None:
                kind, switch_text = switch
                notices.insert(
                    0,
                    self._notice(
                        kind,
                        v,
                        incident,
                        switch_text,
                        figures,
                        severity=Severity.HIGH
                        if kind == NoticeKind.SWITCH_LAGGING
                        else Severity.NONE,
                        action=Action.PAGE if kind == NoticeKind.SWITCH_LAGGING else None,
                    ),
                )
            if status == VerificationStatus.RECOVERED:
                notices.append(self._recovered(v, incident, now, figures))
            elif finished:
                notices.append(self._escalated(v, incident, now, figures, line, paged=pages))
            session.flush()
            for notice in notices:  # queued with the check they report: once, or not at all
                deliver(self.notifier, notice, session)
            failpoint("verify.checked")

    def _switch(self, v: Verification, now: datetime) -> tuple[NoticeKind, str] | None:
        """Have the reporting apps moved off the rolled-back version? None: not known yet."""
        settings = self.policies.for_prompt(v.prompt).settings
        with write_session(self.engine) as session:
            rows = session.exec(
                select(PromptVersion.label, VersionSeen.last_event_at)
                .join(VersionSeen, col(VersionSeen.version_id) == PromptVersion.id)
                .where(
                    PromptVersion.prompt_id == v.prompt_id,
                    col(PromptVersion.label).in_([v.version, v.from_version or ""]),
                )
            ).all()
        seen = dict(rows)
        bad, good = seen.get(v.from_version or ""), seen.get(v.version)
        bad_after = bad is not None and bad > v.started_at
        if bad_after and bad is not None and bad - v.started_at > settings.switch_deadline:
            late = (bad - v.started_at).total_seconds()
            return (
                NoticeKind.SWITCH_LAGGING,
                f"Apps still serve {v.from_version}: it got traffic {late:.0f} s after the "
                f"rollback (deadline {settings.switch_deadline.total_seconds():.0f} s). "
                "Check the serving apps' prompt clients.",
            )
        quiet = bad is None or now - bad >= SWITCH_QUIET
        if good is not None and good > v.started_at and quiet:
            lag = max(0.0, (bad - v.started_at).total_seconds()) if bad_after and bad else 0.0
            return (
                NoticeKind.SWITCH_CONFIRMED,
                f"All reporting traffic on {v.version} {lag:.1f} s after the rollback.",
            )
        return None

    def _measure(self, v: Verification, now: datetime) -> tuple[str, CheckOutcome, dict[str, Any]]:
        policy = self.policies.for_prompt(v.prompt)
        with write_session(self.engine) as session:
            version = session.exec(
                select(PromptVersion).where(
                    PromptVersion.prompt_id == v.prompt_id, PromptVersion.label == v.version
                )
            ).one()
        target = verification_target(v, version.id or 0, policy.settings)
        found = measure_and_assess(
            self.sources, target, policy, now, age=None, min_requests=MIN_REQUESTS
        )
        figures = found.figures()
        if found.outcome == Outcome.UNAVAILABLE:
            reason = found.decision.reason
            return f"metrics unavailable ({reason})", CheckOutcome.UNAVAILABLE, figures
        if found.outcome == Outcome.NOT_ENOUGH_DATA:
            line = f"waiting for traffic on {v.version} since the rollback (n={found.requests})"
            return line, CheckOutcome.NO_TRAFFIC, figures
        rate = found.error_rate_pct
        breach = found.outcome == Outcome.BREACH
        recovered = rate < policy.settings.recovered_error_rate_pct and not breach
        extra = f"; still breaching: {found.decision.reason}" if breach else ""
        outcome = CheckOutcome.RECOVERED if recovered else CheckOutcome.FAILING
        return f"error rate {rate:.1f}% (n={found.requests}){extra}", outcome, figures

    def _recovered(
        self, v: Verification, incident: Incident | None, now: datetime, figures: dict[str, Any]
    ) -> Notice:
        since = incident.opened_at if incident is not None else v.started_at
        seconds = int((now - since).total_seconds())
        what = "detection" if incident is not None else "the rollback"
        rate = figures.get("error_rate_pct") or 0.0
        text = (
            f"Recovered: {v.version} is healthy ({rate:.1f}% errors, "
            f"n={figures.get('requests')}); {seconds} s from {what} to recovery."
        )
        if incident is not None and incident.status == IncidentStatus.ROLLED_BACK:
            incident.status = IncidentStatus.RESOLVED
            incident.updated_at = incident.closed_at = now
            incident.summary = f"{incident.summary}; recovered {seconds} s after detection"[:2000]
        return self._notice(NoticeKind.VERIFICATION_RECOVERED, v, incident, text, figures)

    def _escalated(
        self,
        v: Verification,
        incident: Incident | None,
        now: datetime,
        figures: dict[str, Any],
        line: str,
        *,
        paged: bool,
    ) -> Notice:
        """The end without recovery: not recovered (CRITICAL, paged), or not judged for lack
        of traffic or figures (HIGH, told in the thread; paged only if the policy says so)."""
        text = self._escalation_text(v, line, figures)
        judged = figures.get("outcome") not in UNJUDGED
        if incident is not None:
            incident.updated_at = now
            if paged:
                incident.escalated_at = now
            what = "not recovered after rollback" if judged else "not verified: no traffic"
            incident.summary = f"{incident.summary}; {what}"[:2000]
        return self._notice(
            NoticeKind.VERIFICATION_FAILED if judged else NoticeKind.VERIFICATION_NOT_JUDGED,
            v,
            incident,
            text,
            figures,
            severity=Severity.CRITICAL if judged else Severity.HIGH,
            action=Action.PAGE if paged else None,
        )

    def _notice(
        self,
        kind: NoticeKind,
        v: Verification,
        incident: Incident | None,
        text: str,
        figures: dict[str, Any],
        severity: Severity = Severity.NONE,
        action: Action | None = None,
    ) -> Notice:
        return Notice(
            kind=kind,
            severity=severity,
            title=f"{v.prompt} {v.version}",
            text=text,
            prompt=v.prompt,
            version=v.version,
            incident_id=incident.id if incident is not None else None,
            action=action,
            details={
                "audit_id": v.audit_id,
                "from_version": v.from_version,
                "to_version": v.version,
                "figures": figures,
                "check": v.checks_done + 1,
            },
        )

    @staticmethod
    def _escalation_text(v: Verification, line: str, figures: dict[str, Any]) -> str:
        checks = v.checks_done + 1
        if figures.get("outcome") in UNJUDGED:
            # Not "still fails": nothing could be measured, which on-call must hear as such.
            return (
                f"Not verified: {v.version} could not be judged in {checks} checks ({line}). "
                "Check that the serving apps switched and report their outcomes."
            )
        return (
            f"Not recovered: {v.version} still fails after {checks} checks. Escalating to on-call."
        )

    def _page(self, v: Verification, text: str, figures: dict[str, Any]) -> None:
        if self.pager is None:
            return
        self.pager.trigger(
            dedup_key=f"prompt-rollback-bot/{v.prompt}/rollback-{v.audit_id}",
            summary=f"{v.prompt}: rollback to {v.version} did not recover ({text})",
            source="prompt-rollback-bot",
            severity="critical",
            details={
                "prompt": v.prompt,
                "rolled_back_from": v.from_version,
                "restored_version": v.version,
                "figures": figures,
            },
        )


def _incident_of(session: Session, v: Verification) -> Incident | None:
    return session.exec(select(Incident).where(Incident.rollback_audit_id == v.audit_id)).first()
