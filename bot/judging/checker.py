"""One pass of the criteria checker: judge every live version, then act on the verdicts."""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from bot import registry, telemetry
from bot.db import read_session, write_session
from bot.errors import BotError, ConcurrentChange, Conflict, LeaseLost
from bot.faults import failpoint
from bot.incidents import lifecycle
from bot.incidents import records as inc
from bot.judging.analysis import Measured, assess, measure
from bot.judging.targets import LiveVersion, load_live_versions, routing_revisions
from bot.judging.verdict import Decision
from bot.metrics import MetricsSource, MetricsUnavailable
from bot.models import (
    Action,
    ChangeResult,
    Health,
    Incident,
    IncidentStatus,
    Severity,
    Trigger,
    utcnow,
)
from bot.notify import Notice, NoticeKind, Notifier, deliver
from bot.policy import PolicySet
from bot.registry.changes import Actor

log = logging.getLogger(__name__)

SYSTEM = "system"
KNOWN_GOOD_AFTER = timedelta(hours=1)
MARK_GOOD_PER_PASS = 200  # without a new_version section, "served cleanly" means this


@dataclass
class TickReport:
    """What one pass saw and did."""

    started_at: datetime
    duration_s: float = 0.0
    decisions: list[Decision] = field(default_factory=list)
    rollbacks: list[ChangeResult] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)


@dataclass
class _Plan:
    """Work found while reading incidents: rollbacks and marks run after the bookkeeping commits;
    `pending` notices are queued in that same transaction; `notices` lists all sent."""

    rollbacks: list[tuple[LiveVersion, Decision, int | None]] = field(default_factory=list)
    mark_good: list[LiveVersion] = field(default_factory=list)
    pending: list[Notice] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)


class Checker:
    """Judges live versions against their policies and acts: rollback, page, alert, observe."""

    def __init__(
        self,
        *,
        engine: Engine,
        policies: PolicySet,
        sources: Mapping[str, MetricsSource],
        notifier: Notifier,
        clock: Callable[[], datetime] = utcnow,
        source_down_after: int = 3,
        dedup_window: timedelta = timedelta(minutes=5),
    ) -> None:
        self.engine, self.policies, self.sources = engine, policies, sources
        self.notifier, self.clock = notifier, clock
        self.source_down_after, self.dedup_window = source_down_after, dedup_window
        self._failures: dict[str, int] = defaultdict(int)
        self._last_error: dict[str, str] = {}
        self._down: set[str] = set()

    def judge(self, now: datetime) -> list[tuple[LiveVersion, Decision]]:
        """Read every live version's metrics and decide; changes nothing."""
        with read_session(self.engine) as session:
            live = load_live_versions(session, self.policies)
        metrics = self._collect(live, now)
        return [
            (
                lv,
                assess(
                    lv.target,
                    metrics[lv.target.version_id],
                    lv.policy,
                    age=now - lv.age_reference if lv.age_reference else None,
                ).decision,
            )
            for lv in live
        ]

    def tick(self) -> TickReport:
        """One full pass: judge, record incidents, roll back criticals, tell people."""
        started = time.perf_counter()
        now = self.clock()
        report = TickReport(started_at=now)
        judged = self.judge(now)
        plan = _Plan()
        for notice in self._source_notices():
            self._tell(notice, plan)
        self._act(judged, now, report, plan)
        self._mark_known_good(plan.mark_good, now)
        report.duration_s = time.perf_counter() - started
        telemetry.CHECK_SECONDS.observe(report.duration_s)
        # Counted per kind first: one labelled increment per kind, not per version.
        kinds = Counter((decision.severity, decision.action) for decision in report.decisions)
        for (severity, action), count in kinds.items():
            telemetry.DECISIONS.labels(severity.value, action.value).inc(count)
        return report

    def act(self, judged: list[tuple[LiveVersion, Decision]], now: datetime) -> TickReport:
        """Act on verdicts reached elsewhere (an Alertmanager alert) exactly as on the pass's
        own: the same incidents, rollbacks, pages and cards."""
        report = TickReport(started_at=now)
        self._act(judged, now, report, _Plan())
        return report

    def resolve_alert(self, prompt: str, version: str, alert: str, now: datetime) -> bool:
        """Close the version's active incident when the alert `alert` opened it and has now
        resolved; True when one closed. An incident the bot's own figures opened stays open."""
        with write_session(self.engine) as session:
            incident = next(
                (
                    i
                    for i in inc.active_incidents(session).values()
                    if i.prompt == prompt and i.version == version
                ),
                None,
            )
            fired = (incident.decision.get("fired") or [{}])[0] if incident else {}
            if incident is None or (fired.get("metric"), fired.get("rule")) != ("alert", alert):
                return False
            inc.close(incident, status=IncidentStatus.RESOLVED, now=now, note=f"{alert} resolved")
            session.flush()
            decision = Decision(
                prompt, version, Severity.NONE, Action.NONE, reason=f"alert {alert} resolved"
            )
            resolved = _notice(NoticeKind.INCIDENT_RESOLVED, incident, decision)
            self._tell(resolved, _Plan(), session)
        return True

    def _act(
        self,
        judged: list[tuple[LiveVersion, Decision]],
        now: datetime,
        report: TickReport,
        plan: _Plan,
    ) -> None:
        report.decisions = [decision for _, decision in judged]
        self._record(judged, now, plan)
        for live, decision, incident_id in plan.rollbacks:
            self._roll_back(live, decision, incident_id, now, report, plan)
        report.notices = plan.notices

    # --- metrics ---------------------------------------------------------------------------

    def _collect(self, live: list[LiveVersion], now: datetime) -> dict[int, Measured]:
        by_source: dict[str, list[LiveVersion]] = defaultdict(list)
        for lv in live:
            by_source[lv.policy.settings.source].append(lv)
        result: dict[int, Measured] = {}
        for name, group in by_source.items():
            targets = [lv.target for lv in group]
            found = measure(self.sources, name, targets, now)
            failed = [m for m in found.values() if isinstance(m, MetricsUnavailable)]
            self._failures[name] = (
                self._failures[name] + 1 if failed and len(failed) == len(targets) else 0
            )
            if failed:
                self._last_error[name] = failed[0].message
            result.update(found)
        return result

    def _source_notices(self) -> list[Notice]:
        notices = []
        for name, failures in self._failures.items():
            if failures >= self.source_down_after and name not in self._down:
                self._down.add(name)
                notices.append(
                    Notice(
                        NoticeKind.METRICS_SOURCE_DOWN,
                        Severity.HIGH,
                        f"Metrics source {name} is down",
                        f"{failures} checks in a row could not read metrics "
                        f"({self._last_error.get(name, 'no detail')}); no version is judged "
                        "or rolled back automatically until it recovers.",
                        action=Action.PAGE,
                        details={"source": name, "failures": failures},
                    )
                )
            elif failures == 0 and name in self._down:
                self._down.discard(name)
                notices.append(
                    Notice(
                        NoticeKind.METRICS_SOURCE_RECOVERED,
                        Severity.NONE,
                        f"Metrics source {name} recovered",
                        "Checks are judging versions again.",
                        details={"source": name},
                    )
                )
        return notices

    # --- incidents ---------------------------------------------------------------------------

    def _record(
        self, judged: list[tuple[LiveVersion, Decision]], now: datetime, plan: _Plan
    ) -> None:
        with write_session(self.engine) as session:
            # A prompt whose routing changed since it was judged (someone rolled it back while
            # its metrics were read, say) is left to the next pass: no incident for a version
            # that no longer serves.
            breached = {lv.target.prompt_id for lv, d in judged if d.breach}
            now_at = routing_revisions(session, breached)
            active = inc.active_incidents(session)
            for lv, decision in judged:
                incident = active.pop(lv.target.version_id, None)
                if now_at.get(lv.target.prompt_id, lv.revision) != lv.revision:
                    continue
                self._judge_one(session, lv, decision, incident, now, plan)
            # Versions that stopped serving through a change that did not run the lifecycle
            # flow (every surface runs it; this catches anything else): the same flow closes
            # their incidents, links the rollback and updates their cards.
            for prompt in sorted({incident.prompt for incident in active.values()}):
                lifecycle.after_latest(session, prompt, self.notifier)
            session.flush()
            for notice in plan.pending:  # queued with the incidents they report, or not at all
                self._tell(notice, plan, session)
            plan.pending.clear()

    def _judge_one(
        self,
        session: Session,
        lv: LiveVersion,
        decision: Decision,
        incident: Incident | None,
        now: datetime,
        plan: _Plan,
    ) -> None:
        settings = lv.policy.settings
        if decision.action == Action.ROLLBACK:
            plan.rollbacks.append((lv, decision, incident.id if incident else None))
            return
        if decision.breach:
            if incident is None:
                observe_until = (
                    now + settings.observe if decision.action == Action.OBSERVE else None
                )
                incident = inc.open_incident(
                    session,
                    target=lv.target,
                    decision=decision,
                    now=now,
                    observe_until=observe_until,
                )
                if decision.action in (Action.PAGE, Action.ALERT):
                    incident.last_paged_at, incident.pages = now, 1
                plan.pending.append(_notice(NoticeKind.INCIDENT_OPENED, incident, decision))
                return
            stronger = inc.is_stronger(decision, incident)
            inc.record_breach(incident, decision, now)
            quiet = incident.quiet_until is not None and now < incident.quiet_until
            if stronger:
                inc.escalate(incident, severity=decision.severity, action=decision.action, now=now)
                if not quiet:  # someone said "Investigate": no new alert until the quiet ends
                    incident.last_paged_at = now
                    plan.pending.append(_notice(NoticeKind.INCIDENT_ESCALATED, incident, decision))
            elif not quiet and incident.investigator is None:
                self._repage_if_overdue(lv, decision, incident, now, plan)
        if incident is None:
            if decision.action == Action.NONE and lv.health == Health.UNKNOWN:
                plan.mark_good.append(lv)
            return
        if incident.status == IncidentStatus.OBSERVING:
            if incident.observe_until is not None and incident.observe_until <= now:
                self._end_observation(lv, decision, incident, now, plan)
            return
        if decision.action == Action.NONE:
            incident.healthy_since = incident.healthy_since or now
            if now - incident.healthy_since >= settings.resolve_after:
                inc.close(
                    incident,
                    status=IncidentStatus.RESOLVED,
                    now=now,
                    note="metrics back within policy",
                )
                plan.pending.append(_notice(NoticeKind.INCIDENT_RESOLVED, incident, decision))

    def _repage_if_overdue(
        self, lv: LiveVersion, decision: Decision, incident: Incident, now: datetime, plan: _Plan
    ) -> None:
        """Nobody acted within the deciding rule's `act_within`: page again, never drop it."""
        if incident.status != IncidentStatus.OPEN:
            return
        rule = next((r for r in lv.policy.rules if r.name == decision.rule), None)
        limit = rule.act_within if rule is not None else None
        last = incident.last_paged_at or incident.opened_at
        if limit is None or now - last < limit:
            return
        waited = int((now - incident.opened_at).total_seconds() // 60)
        incident.last_paged_at, incident.pages = now, incident.pages + 1
        overdue = (
            f"Nobody has acted for {waited} min (runbook limit {_minutes(limit)} min); "
            f"paging on-call again (page {incident.pages})."
        )
        plan.pending.append(
            replace(
                _notice(
                    NoticeKind.INCIDENT_ESCALATED,
                    incident,
                    decision,
                    f"{overdue} {decision.reason}",
                    action=Action.PAGE,
                ),
                headline=f"{overdue} Roll back, or acknowledge if you are on it.",
            )
        )

    def _end_observation(
        self, lv: LiveVersion, decision: Decision, incident: Incident, now: datetime, plan: _Plan
    ) -> None:
        if decision.action in (Action.INSUFFICIENT_DATA, Action.METRICS_UNAVAILABLE):
            return  # judge the end of observation on data, not on its absence
        if not decision.breach:
            inc.close(
                incident,
                status=IncidentStatus.RESOLVED,
                now=now,
                note="recovered during observation",
            )
            plan.pending.append(
                _notice(
                    NoticeKind.OBSERVATION_ENDED,
                    incident,
                    decision,
                    "Observation ended: metrics are back within policy.",
                )
            )
            return
        persist = lv.policy.settings.on_persist
        if persist == Action.ROLLBACK and lv.policy.settings.auto_rollback:
            plan.rollbacks.append((lv, decision, incident.id))
            return
        action = Action.PAGE if persist == Action.ROLLBACK else persist
        inc.escalate(
            incident,
            severity=max(incident.severity, Severity.HIGH, key=lambda s: s.rank),
            action=action,
            now=now,
        )
        plan.pending.append(
            _notice(
                NoticeKind.OBSERVATION_ENDED,
                incident,
                decision,
                "Observation ended and the breach persists: rollback recommended.",
            )
        )

    # --- acting ------------------------------------------------------------------------------

    def _roll_back(
        self,
        lv: LiveVersion,
        decision: Decision,
        incident_id: int | None,
        now: datetime,
        report: TickReport,
        plan: _Plan,
    ) -> None:
        actor = Actor(operator=SYSTEM, trigger=Trigger.AUTOMATIC, rule=decision.rule)
        try:
            with write_session(self.engine) as session:
                result = registry.rollback(
                    session=session,
                    prompt=lv.target.prompt,
                    target=None,
                    actor=actor,
                    now=now,
                    reason=decision.reason[:1000],
                    expected_version=lv.target.version,
                    dedup_window=self.dedup_window,
                )
                incident = self._incident_for(session, lv, decision, incident_id, now)
                incident.severity, incident.action = decision.severity, Action.ROLLBACK
                inc.close(
                    incident,
                    status=IncidentStatus.ROLLED_BACK,
                    now=now,
                    rollback_audit_id=result.audit_id,
                )
                session.flush()
                lifecycle.after(session, result, self.notifier)  # the prompt's other ones
                text = f"Rolled back {result.from_version} → {result.to_version} automatically."
                self._tell(_notice(NoticeKind.ROLLED_BACK, incident, decision, text), plan, session)
                failpoint("rollback.before_commit")
            failpoint("rollback.committed")
            report.rollbacks.append(result)
        except (ConcurrentChange, Conflict) as exc:
            # Someone (a person, another replica) acted first; the next pass sees the new state.
            log.info("automatic rollback of %s skipped: %s", lv.target.prompt, exc.message)
        except LeaseLost:
            raise  # no longer the leader: the new one judges again
        except BotError as exc:
            with write_session(self.engine) as session:
                incident = self._incident_for(session, lv, decision, incident_id, now)
                inc.escalate(incident, severity=Severity.CRITICAL, action=Action.PAGE, now=now)
                incident.summary = f"automatic rollback failed: {exc.message}; {incident.summary}"[
                    :2000
                ]
                session.flush()
                failed = _notice(
                    NoticeKind.ROLLBACK_FAILED,
                    incident,
                    decision,
                    f"Automatic rollback FAILED: {exc.message}. Roll back by hand now.",
                    severity=Severity.CRITICAL,
                )
                self._tell(failed, plan, session)

    def _incident_for(
        self,
        session: Session,
        lv: LiveVersion,
        decision: Decision,
        incident_id: int | None,
        now: datetime,
    ) -> Incident:
        found = session.get(Incident, incident_id) if incident_id else None
        if found is not None:
            inc.record_breach(found, decision, now)
            return found
        return inc.open_incident(
            session,
            target=lv.target,
            decision=decision,
            now=now,
            observe_until=None,
        )

    def _mark_known_good(self, candidates: list[LiveVersion], now: datetime) -> None:
        marked = 0
        for lv in candidates:
            if marked >= MARK_GOOD_PER_PASS:
                break  # spread a large backlog over passes rather than stall one
            limits = lv.policy.new_version
            clean_for = limits.duration if limits else KNOWN_GOOD_AFTER
            if lv.target.share_pct < 100 or lv.age_reference is None:
                continue
            if now - lv.age_reference < clean_for:
                continue
            try:
                with write_session(self.engine) as session:
                    registry.mark_health(
                        session=session,
                        prompt=lv.target.prompt,
                        version=lv.target.version,
                        health=Health.GOOD,
                        actor=Actor(
                            operator=SYSTEM,
                            trigger=Trigger.AUTOMATIC,
                            rule="served_cleanly",
                        ),
                        now=now,
                        reason=f"served cleanly for {int(clean_for.total_seconds() // 60)} min",
                    )
                marked += 1
            except LeaseLost:
                raise
            except BotError as exc:
                log.warning(
                    "could not mark %s %s good: %s",
                    lv.target.prompt,
                    lv.target.version,
                    exc.message,
                )

    def _tell(self, notice: Notice, plan: _Plan, session: Session | None = None) -> None:
        deliver(self.notifier, notice, session)
        plan.notices.append(notice)


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


def _notice(
    kind: NoticeKind,
    incident: Incident,
    decision: Decision,
    text: str | None = None,
    severity: Severity | None = None,
    action: Action | None = None,
) -> Notice:
    return Notice(
        kind=kind,
        severity=severity or incident.severity,
        title=f"{incident.prompt} {incident.version}",
        text=text or decision.reason,
        prompt=incident.prompt,
        version=incident.version,
        incident_id=incident.id,
        action=action or incident.action,
        details=decision.as_dict(),
    )
