"""The checker end to end on a real database: incidents, automatic rollback, observation."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import select

from bot import registry
from bot.db import read_session
from bot.judging.targets import load_live_versions
from bot.metrics.builtin import BuiltinSource
from bot.models import Action, Health, Incident, IncidentStatus, Severity
from bot.notify import NoticeKind
from bot.policy import load_policies
from bot.policy.schema import SettingsPatch
from tests.conftest import make_prompt, roll_back
from tests.detection_kit import POLICY_DIR, Clock, activated_at, make_checker, traffic


def _incidents(engine: Engine) -> list[Incident]:
    with read_session(engine) as session:
        return list(session.exec(select(Incident).order_by(Incident.id)))


def _active(engine: Engine) -> str | None:
    with read_session(engine) as session:
        return registry.prompt_detail(session=session, name="customer-support").active_version


def _deployed(engine: Engine) -> Clock:
    """v1.9.0 served an hour cleanly, then v2.0.0 took over; the clock is 2 min after."""
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"), deploy=("v1.9.0", "v2.0.0"))
    switched = activated_at(engine)
    for minutes in range(5, 60, 10):
        traffic(engine, version="v1.9.0", n=500, errors=2, at=switched - timedelta(minutes=minutes))
    return Clock(switched + timedelta(minutes=2))


def test_critical_error_rate_rolls_back_in_the_same_pass(engine: Engine) -> None:
    clock = _deployed(engine)
    traffic(engine, version="v2.0.0", n=1000, errors=80, at=clock.now)
    checker, notifier = make_checker(engine, clock)
    report = checker.tick()
    assert [(r.from_version, r.to_version) for r in report.rollbacks] == [("v2.0.0", "v1.9.0")]
    assert _active(engine) == "v1.9.0"
    with read_session(engine) as session:
        entry = registry.history(session=session, name="customer-support")[0]
    assert (entry.kind, entry.operator, entry.trigger, entry.rule) == (
        "rollback",
        "system",
        "automatic",
        "error_rate_critical",
    )
    assert "error_rate_pct 8.0 > 5" in entry.reason
    [incident] = _incidents(engine)
    assert (incident.status, incident.severity) == (IncidentStatus.ROLLED_BACK, Severity.CRITICAL)
    assert incident.rollback_audit_id == entry.id
    assert incident.decision["figures"]["requests"] == 1000
    assert [n.kind for n in notifier.sent] == [NoticeKind.ROLLED_BACK]
    # The next pass judges v1.9.0, which has no traffic yet: nothing more happens.
    assert checker.tick().rollbacks == []
    assert len(_incidents(engine)) == 1


def test_high_severity_pages_once_and_updates_the_incident(engine: Engine) -> None:
    clock = _deployed(engine)
    traffic(engine, version="v2.0.0", n=1000, errors=30, at=clock.now)
    checker, notifier = make_checker(engine, clock)
    checker.tick()
    clock.advance(seconds=30)
    checker.tick()
    [incident] = _incidents(engine)
    assert (incident.status, incident.severity, incident.action) == (
        IncidentStatus.OPEN,
        Severity.HIGH,
        Action.PAGE,
    )
    assert incident.breaches == 2
    assert [n.kind for n in notifier.sent] == [NoticeKind.INCIDENT_OPENED]
    assert notifier.sent[0].action == "page"
    assert _active(engine) == "v2.0.0"


def test_escalation_from_page_to_automatic_rollback(engine: Engine) -> None:
    clock = _deployed(engine)
    traffic(engine, version="v2.0.0", n=1000, errors=30, at=clock.now)
    checker, notifier = make_checker(engine, clock)
    checker.tick()
    clock.advance(seconds=30)
    traffic(engine, version="v2.0.0", n=2000, errors=300, at=clock.now)
    report = checker.tick()
    assert len(report.rollbacks) == 1
    [incident] = _incidents(engine)
    assert incident.status == IncidentStatus.ROLLED_BACK
    assert [n.kind for n in notifier.sent] == [NoticeKind.INCIDENT_OPENED, NoticeKind.ROLLED_BACK]


def test_quality_drop_observation_survives_a_restart_and_escalates(engine: Engine) -> None:
    clock = _deployed(engine)
    clock.advance(hours=2)  # a mature version: only the table applies
    traffic(engine, version="v2.0.0", n=500, quality=0.68, at=clock.now)  # -15% vs 0.8
    checker, notifier = make_checker(engine, clock)
    checker.tick()
    [incident] = _incidents(engine)
    assert incident.status == IncidentStatus.OBSERVING
    assert incident.observe_until == clock.now + timedelta(hours=1)
    assert [n.kind for n in notifier.sent] == [NoticeKind.INCIDENT_OPENED]

    clock.advance(minutes=61)
    traffic(engine, version="v2.0.0", n=500, quality=0.68, at=clock.now)
    restarted, notifier = make_checker(engine, clock)  # a new process: state comes from the DB
    restarted.tick()
    [incident] = _incidents(engine)
    assert (incident.status, incident.action, incident.severity) == (
        IncidentStatus.OPEN,
        Action.ALERT,
        Severity.HIGH,
    )
    assert [n.kind for n in notifier.sent] == [NoticeKind.OBSERVATION_ENDED]
    assert "persists" in notifier.sent[0].text
    assert _active(engine) == "v2.0.0"  # a person decides


def test_observation_that_recovers_closes_the_incident(engine: Engine) -> None:
    clock = _deployed(engine)
    clock.advance(hours=2)
    traffic(engine, version="v2.0.0", n=500, quality=0.68, at=clock.now)
    checker, notifier = make_checker(engine, clock)
    checker.tick()
    clock.advance(minutes=61)
    traffic(engine, version="v2.0.0", n=500, quality=0.79, at=clock.now)
    checker.tick()
    [incident] = _incidents(engine)
    assert incident.status == IncidentStatus.RESOLVED
    assert notifier.sent[-1].kind == NoticeKind.OBSERVATION_ENDED
    assert "back within policy" in notifier.sent[-1].text


def test_insufficient_data_opens_nothing(engine: Engine) -> None:
    clock = _deployed(engine)
    traffic(engine, version="v2.0.0", n=3, errors=1, at=clock.now)
    checker, notifier = make_checker(engine, clock)
    report = checker.tick()
    [decision] = report.decisions
    assert decision.action == Action.INSUFFICIENT_DATA
    assert _incidents(engine) == []
    assert notifier.sent == []


class BrokenSource:
    """Times out four times, then answers with the built-in figures."""

    name = "prometheus"

    def __init__(self, engine: Engine) -> None:
        self.calls = 0
        self.real = BuiltinSource(engine)

    def collect(self, targets, now):
        self.calls += 1
        if self.calls <= 4:
            raise TimeoutError("prometheus timed out after 5s")
        return self.real.collect(targets, now)


def test_failing_source_never_crashes_or_rolls_back_and_alerts_once(engine: Engine) -> None:
    clock = _deployed(engine)
    traffic(engine, version="v2.0.0", n=1000, errors=500, at=clock.now)  # would be critical
    policies = load_policies(POLICY_DIR)
    policies = policies.model_copy(
        update={"prompts": {"customer-support": SettingsPatch(source="prometheus")}}
    )
    source = BrokenSource(engine)
    checker, notifier = make_checker(engine, clock, policies, prometheus=source)
    for _ in range(4):
        report = checker.tick()
        assert [d.action for d in report.decisions] == [Action.METRICS_UNAVAILABLE]
        assert report.rollbacks == []
    assert [n.kind for n in notifier.sent] == [NoticeKind.METRICS_SOURCE_DOWN]
    assert "timed out" in notifier.sent[0].text
    checker.tick()  # the source answers again: recovered, and the breach is acted on
    assert NoticeKind.METRICS_SOURCE_RECOVERED in [n.kind for n in notifier.sent]


class RollbackWhileReading:
    """The built-in figures, but someone rolls the prompt back while they are being read."""

    name = "builtin"

    def __init__(self, engine: Engine) -> None:
        self.engine, self.real = engine, BuiltinSource(engine)

    def collect(self, targets, now):
        figures = self.real.collect(targets, now)
        roll_back(self.engine)
        return figures


def test_a_version_rolled_back_while_judged_gets_no_incident(engine: Engine) -> None:
    clock = _deployed(engine)
    traffic(engine, version="v2.0.0", n=1000, errors=30, at=clock.now)  # high: would page
    checker, notifier = make_checker(engine, clock)
    checker.sources["builtin"] = RollbackWhileReading(engine)
    report = checker.tick()
    assert [d.action for d in report.decisions] == [Action.PAGE]  # judged on what it read...
    assert _incidents(engine) == []  # ... but v2.0.0 no longer serves: nobody is paged for it
    assert notifier.sent == []
    assert _active(engine) == "v1.9.0"


def test_clean_version_is_marked_known_good_after_its_first_hour(engine: Engine) -> None:
    clock = _deployed(engine)
    traffic(engine, version="v2.0.0", n=500, at=clock.now)
    checker, _ = make_checker(engine, clock)
    checker.tick()
    with read_session(engine) as session:
        health = {
            v.version: v.health
            for v in registry.prompt_detail(session=session, name="customer-support").versions
        }
    assert health["v2.0.0"] == Health.UNKNOWN  # two minutes old: not yet
    clock.advance(minutes=61)
    traffic(engine, version="v2.0.0", n=500, at=clock.now)
    checker.tick()
    with read_session(engine) as session:
        detail = registry.prompt_detail(session=session, name="customer-support")
        entry = registry.history(session=session, name="customer-support")[0]
    assert {v.version: v.health for v in detail.versions}["v2.0.0"] == Health.GOOD
    assert (entry.kind, entry.rule) == ("health", "served_cleanly")


def test_baseline_is_the_previous_version_before_the_switch(engine: Engine) -> None:
    clock = _deployed(engine)
    traffic(engine, version="v2.0.0", n=500, at=clock.now)
    checker, _ = make_checker(engine, clock)
    [decision] = checker.tick().decisions
    baseline = decision.figures["baseline"]
    assert baseline["source"] == "v1.9.0 over the 60 min before v2.0.0 took over"
    assert baseline["requests"] == 3000
    assert abs(baseline["error_rate_pct"] - 0.4) < 1e-9


def test_restored_version_is_not_judged_against_the_bad_one(engine: Engine) -> None:
    clock = _deployed(engine)
    traffic(engine, version="v2.0.0", n=1000, errors=80, latency_ms=100, at=clock.now)
    checker, notifier = make_checker(engine, clock)
    assert len(checker.tick().rollbacks) == 1
    clock.advance(seconds=30)
    # v1.9.0 is slower than the failed v2.0.0 was: no baseline from it, no first-hour limits.
    traffic(engine, version="v1.9.0", n=600, latency_ms=400, at=clock.now)
    [decision] = checker.tick().decisions
    assert decision.version == "v1.9.0"
    assert decision.action == Action.NONE
    assert decision.figures["baseline"] is None
    assert "age_s" not in decision.figures
    assert [n.kind for n in notifier.sent] == [NoticeKind.ROLLED_BACK]


def test_investigate_keeps_escalations_quiet(engine: Engine) -> None:
    from bot.db import write_session
    from bot.incidents.actions import acknowledge

    clock = _deployed(engine)
    clock.advance(hours=2)
    traffic(engine, version="v2.0.0", n=500, quality=0.68, at=clock.now)  # medium: observe
    checker, notifier = make_checker(engine, clock)
    checker.tick()
    [incident] = _incidents(engine)
    with write_session(engine) as session:
        acknowledge(
            session=session,
            incident_id=incident.id,
            user="U1",
            quiet=timedelta(minutes=30),
            now=clock.now,
        )
    clock.advance(seconds=30)
    traffic(engine, version="v2.0.0", n=1000, errors=45, quality=0.68, at=clock.now)  # 3%: page
    checker.tick()
    [incident] = _incidents(engine)
    assert (incident.severity, incident.action, incident.investigator) == (
        Severity.HIGH,
        Action.PAGE,
        "U1",
    )
    assert [n.kind for n in notifier.sent] == [NoticeKind.INCIDENT_OPENED]  # no new alert


def test_high_severity_is_paged_again_when_nobody_acts(engine: Engine) -> None:
    clock = _deployed(engine)
    checker, notifier = make_checker(engine, clock)
    for _ in range(12):  # a pass every 30 s for 6 min, the breach still there
        traffic(engine, version="v2.0.0", n=300, errors=9, at=clock.now)  # 3%: page
        checker.tick()
        clock.advance(seconds=30)
    kinds = [n.kind for n in notifier.sent]
    assert kinds == [NoticeKind.INCIDENT_OPENED, NoticeKind.INCIDENT_ESCALATED]
    repage = notifier.sent[1]
    assert repage.action == "page"
    assert (
        "Nobody has acted for 5 min (runbook limit 5 min); paging on-call again (page 2)"
        in repage.text
    )
    [incident] = _incidents(engine)
    assert incident.pages == 2


def test_no_repage_once_someone_investigates(engine: Engine) -> None:
    from bot.db import write_session
    from bot.incidents.actions import acknowledge

    clock = _deployed(engine)
    checker, notifier = make_checker(engine, clock)
    traffic(engine, version="v2.0.0", n=300, errors=9, at=clock.now)
    checker.tick()
    [incident] = _incidents(engine)
    with write_session(engine) as session:
        acknowledge(
            session=session,
            incident_id=incident.id,
            user="U1",
            quiet=timedelta(minutes=30),
            now=clock.now,
        )
    for _ in range(12):
        clock.advance(seconds=30)
        traffic(engine, version="v2.0.0", n=300, errors=9, at=clock.now)
        checker.tick()
    assert [n.kind for n in notifier.sent] == [NoticeKind.INCIDENT_OPENED]


def test_a_failed_automatic_rollback_is_a_critical_incident_of_its_own(engine: Engine) -> None:
    make_prompt(engine, versions=("v2.0.0",))  # nothing to roll back to
    clock = Clock(activated_at(engine) + timedelta(minutes=2))
    traffic(engine, version="v2.0.0", n=1000, errors=80, at=clock.now)
    checker, notifier = make_checker(engine, clock)
    assert checker.tick().rollbacks == []
    [notice] = notifier.sent
    assert (notice.kind, notice.severity, notice.action) == (
        NoticeKind.ROLLBACK_FAILED,
        Severity.CRITICAL,
        "page",
    )
    assert "Automatic rollback FAILED" in notice.text
    [incident] = _incidents(engine)
    assert (incident.status, incident.severity) == (IncidentStatus.OPEN, Severity.CRITICAL)
    assert incident.summary.startswith("automatic rollback failed")


def test_a_rollback_made_behind_the_flows_still_closes_and_links_the_incident(
    engine: Engine,
) -> None:
    """A change made straight in the registry (no lifecycle flow): the next pass closes the
    incident through the same flow, linked to that rollback, and tells its card."""
    clock = _deployed(engine)
    traffic(engine, version="v2.0.0", n=1000, errors=30, at=clock.now)  # HIGH: paged
    checker, notifier = make_checker(engine, clock)
    checker.tick()
    [incident] = _incidents(engine)
    assert incident.status == IncidentStatus.OPEN
    roll_back(engine)
    with read_session(engine) as session:
        entry = registry.history(session=session, name="customer-support")[0]
    checker.tick()
    [incident] = _incidents(engine)
    assert (incident.status, incident.rollback_audit_id) == (IncidentStatus.ROLLED_BACK, entry.id)
    assert notifier.sent[-1].kind == NoticeKind.ROLLED_BACK
    assert notifier.sent[-1].text.startswith("Rolled back v2.0.0 → v1.9.0 by ")


def test_live_versions_come_in_prompt_order_on_every_backend(engine: Engine) -> None:
    # Routing rows rewritten out of order (PostgreSQL moves an updated row to the end of its
    # table): a pass still judges, rolls back and announces prompt by prompt, in one order.
    names = [f"p{i}" for i in range(12)]  # p10 and p11 come before p2 by name
    for name in names:
        make_prompt(engine, name, versions=("v1", "v2"))
    for name in names[::3] + names[1::3]:
        roll_back(engine, name)
    with read_session(engine) as session:
        live = load_live_versions(session, load_policies(POLICY_DIR))
    seen = [lv.target.prompt for lv in live]
    assert seen == names, seen
