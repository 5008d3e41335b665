"""Verification after a rollback: recovered, escalated (DM + PagerDuty), resumed after a restart."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from bot import registry
from bot.db import read_session, write_session
from bot.incidents import lifecycle
from bot.integrations.pagerduty import PagerDuty
from bot.metrics.builtin import BuiltinSource
from bot.models import (
    Incident,
    IncidentStatus,
    Severity,
    Trigger,
    Verification,
    VerificationStatus,
    utcnow,
)
from bot.notify import LogNotifier, NoticeKind
from bot.policy import load_policies
from bot.registry.changes import Actor
from bot.verification.verifier import Verifier
from tests.conftest import OPERATOR, make_prompt
from tests.detection_kit import POLICY_DIR, Clock, activated_at, make_checker, traffic
from tests.pagerduty_kit import FakePagerDuty

ROUTING_KEY = "R0123456789abcdef0123456789abcde"  # 32 characters, like a PagerDuty integration key


@pytest.fixture
def pagerduty() -> Iterator[FakePagerDuty]:
    fake = FakePagerDuty()
    yield fake
    fake.close()


def _rolled_back(engine: Engine) -> tuple[Clock, LogNotifier]:
    """v2.0.0 at 8% errors, rolled back by the checker; the clock is at the rollback."""
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    clock = Clock(activated_at(engine))
    # v2.0.0's traffic is stamped at the deploy, before the (real-time) rollback; the checker's
    # simulated clock runs two minutes ahead.
    traffic(engine, version="v2.0.0", n=1000, errors=80, at=clock.now)
    clock.advance(minutes=2)
    checker, notifier = make_checker(engine, clock)
    assert len(checker.tick().rollbacks) == 1
    return clock, notifier


def _verifier(
    engine: Engine, clock: Clock, pager: PagerDuty | None = None
) -> tuple[Verifier, LogNotifier]:
    notifier = LogNotifier()
    return Verifier(
        engine=engine,
        policies=load_policies(POLICY_DIR),
        sources={"builtin": BuiltinSource(engine)},
        notifier=notifier,
        pager=pager,
        clock=clock,
    ), notifier


def _verification(engine: Engine) -> Verification:
    with read_session(engine) as session:
        return session.exec(select(Verification)).one()


def test_every_rollback_schedules_a_verification(engine: Engine) -> None:
    make_prompt(engine)
    with write_session(engine) as session:
        result = registry.rollback(
            session=session,
            prompt="customer-support",
            target=None,
            actor=Actor("bob", Trigger.CLI),
            now=utcnow(),
        )
    v = _verification(engine)
    assert (v.audit_id, v.version, v.from_version, v.status) == (
        result.audit_id,
        "v1.9.0",
        "v2.0.0",
        VerificationStatus.RUNNING,
    )


def test_recovered_closes_the_incident_with_time_to_recovery(engine: Engine) -> None:
    clock, _ = _rolled_back(engine)
    clock.advance(seconds=5)
    traffic(engine, version="v1.9.0", n=200, errors=1, at=clock.now)
    verifier, notifier = _verifier(engine, clock)
    assert verifier.run_due() == 1
    assert [n.kind for n in notifier.sent] == [
        NoticeKind.SWITCH_CONFIRMED,
        NoticeKind.VERIFICATION_CHECK,
        NoticeKind.VERIFICATION_RECOVERED,
    ]
    assert notifier.sent[0].text == "All reporting traffic on v1.9.0 0.0 s after the rollback."
    assert notifier.sent[1].text == "Check 1/12: error rate 0.5% (n=200)"
    assert "s from detection to recovery" in notifier.sent[2].text
    v = _verification(engine)
    assert (v.status, v.checks_done, v.checks_total) == (VerificationStatus.RECOVERED, 1, 12)
    with read_session(engine) as session:
        incident = session.exec(select(Incident)).one()
    assert incident.status == IncidentStatus.RESOLVED
    clock.advance(seconds=5)
    assert verifier.run_due() == 0  # finished: nothing more


def test_no_traffic_waits_and_never_counts_as_recovered(engine: Engine) -> None:
    clock, _ = _rolled_back(engine)
    verifier, notifier = _verifier(engine, clock)
    verifier.run_due()
    assert notifier.sent[0].text == (
        "Check 1/12: waiting for traffic on v1.9.0 since the rollback (n=0)"
    )
    assert _verification(engine).status == VerificationStatus.RUNNING


def test_no_traffic_at_all_says_so_once_and_ends_not_judged_without_a_page(
    engine: Engine,
) -> None:
    """A prompt with no traffic: one "waiting for traffic" reply (not one per check), then a
    HIGH "Not verified" that pages nobody (the policy can ask for a page)."""
    clock, _ = _rolled_back(engine)
    verifier, notifier = _verifier(engine, clock)
    for _ in range(12):
        clock.advance(seconds=5)
        assert verifier.run_due() == 1
    assert _verification(engine).status == VerificationStatus.NOT_JUDGED
    checks = [n.text for n in notifier.sent if n.kind == NoticeKind.VERIFICATION_CHECK]
    assert checks == [
        "Check 1/12: waiting for traffic on v1.9.0 since the rollback (n=0)",
        "Check 12/12: waiting for traffic on v1.9.0 since the rollback (n=0)",
    ]
    last = notifier.sent[-1]
    assert last.kind == NoticeKind.VERIFICATION_NOT_JUDGED
    assert (last.severity, last.action) == (Severity.HIGH, None)
    assert last.text == (
        "Not verified: v1.9.0 could not be judged in 12 checks (waiting for traffic on v1.9.0 "
        "since the rollback (n=0)). Check that the serving apps switched and report their "
        "outcomes."
    )


def test_not_recovered_escalates_once_with_dm_and_pagerduty(
    engine: Engine, pagerduty: FakePagerDuty
) -> None:
    clock, _ = _rolled_back(engine)
    pager = PagerDuty(routing_key=ROUTING_KEY, url=pagerduty.url)
    verifier, notifier = _verifier(engine, clock, pager)
    for _ in range(12):
        clock.advance(seconds=5)
        traffic(engine, version="v1.9.0", n=100, errors=6, at=clock.now)  # still 6%
        assert verifier.run_due() == 1
    clock.advance(seconds=5)
    assert verifier.run_due() == 0
    kinds = [n.kind for n in notifier.sent]
    assert kinds.count(NoticeKind.VERIFICATION_CHECK) == 12
    assert kinds[-1] == NoticeKind.VERIFICATION_FAILED
    assert notifier.sent[-1].action == "page"
    assert "still breaching" in notifier.sent[-2].text
    assert _verification(engine).status == VerificationStatus.ESCALATED
    assert pagerduty.refused == []
    [event] = pagerduty.events
    assert event["event_action"] == "trigger"
    assert event["payload"]["severity"] == "critical"
    assert "customer-support: rollback to v1.9.0 did not recover" in event["payload"]["summary"]
    assert event["dedup_key"].startswith("prompt-rollback-bot/customer-support/rollback-")


def test_restart_mid_verification_resumes_where_it_was(engine: Engine) -> None:
    clock, _ = _rolled_back(engine)
    first, _ = _verifier(engine, clock)
    for _ in range(3):
        clock.advance(seconds=5)
        first.run_due()
    restarted, notifier = _verifier(engine, clock)  # a new process: state from the database
    assert restarted.run_due() == 0  # the next check is not due yet
    clock.advance(seconds=5)
    traffic(engine, version="v1.9.0", n=100, errors=6, at=clock.now)  # judged: a reply
    assert restarted.run_due() == 1
    checks = [n.text for n in notifier.sent if n.kind == NoticeKind.VERIFICATION_CHECK]
    assert checks[0].startswith("Check 4/12:"), checks


def test_a_second_replica_does_not_repeat_a_check(engine: Engine) -> None:
    clock, _ = _rolled_back(engine)
    one, sent_one = _verifier(engine, clock)
    two, sent_two = _verifier(engine, clock)
    assert one.run_due() + two.run_due() == 1
    assert len(sent_one.sent) + len(sent_two.sent) == 1


def test_postmortem_draft_from_the_record(
    engine: Engine, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    from bot.cli import main
    from bot.incidents.postmortem import postmortem

    clock, _ = _rolled_back(engine)
    clock.advance(seconds=5)
    traffic(engine, version="v1.9.0", n=200, at=clock.now)
    _verifier(engine, clock)[0].run_due()
    with read_session(engine) as session:
        incident = session.exec(select(Incident)).one()
        draft = postmortem(session=session, incident_id=incident.id)
    assert draft.startswith(
        f"# Post-mortem draft: customer-support v2.0.0 (incident #{incident.id})"
    )
    assert "- **Deployed**" in draft
    assert "v2.0.0 by tester" in draft
    assert "- **Detected**" in draft
    assert "(+2 min 0 s)" in draft
    assert "rolled back v2.0.0 → v1.9.0 by system (automatic)" in draft
    assert "- **Verified**" in draft
    assert "recovered after 1 checks" in draft
    assert "`error_rate_critical`: error_rate_pct 8.0 > 5.0" in draft
    assert "Did it pass A/B tests?" in draft
    monkeypatch.setenv("DATABASE_URL", db_url)
    main(["incidents", "show", str(incident.id), "--markdown"])
    assert capsys.readouterr().out.strip() == draft
    # The same record in Slack mrkdwn: the same timeline, Slack's emphasis, no headings.
    with read_session(engine) as session:
        slack = postmortem(session=session, incident_id=incident.id, style="slack")
    assert slack.startswith(
        f"*Post-mortem draft: customer-support v2.0.0 (incident #{incident.id})*"
    )
    assert "- *Deployed*" in slack and "- *Verified*" in slack and "*Timeline*" in slack
    assert "**" not in slack and "\n#" not in slack
    assert [line.split(" ", 2)[-1] for line in slack.splitlines() if line.startswith("- ")] == [
        line.split(" ", 2)[-1].replace("**", "*")
        for line in draft.splitlines()
        if line.startswith("- ")
    ]


def test_apps_still_serving_the_bad_version_after_the_deadline_are_reported(
    engine: Engine,
) -> None:
    clock, _ = _rolled_back(engine)
    with read_session(engine) as session:
        started = session.exec(select(Verification)).one().started_at
    traffic(engine, version="v1.9.0", n=50, at=started + timedelta(seconds=1))
    traffic(engine, version="v2.0.0", n=5, at=started + timedelta(seconds=40))  # a stale app
    verifier, notifier = _verifier(engine, clock)
    verifier.run_due()
    lagging = notifier.sent[0]
    assert (lagging.kind, lagging.action) == (NoticeKind.SWITCH_LAGGING, "page")
    assert lagging.text.startswith(
        "Apps still serve v2.0.0: it got traffic 40 s after the rollback"
    )
    clock.advance(seconds=5)
    verifier.run_due()
    assert [n.kind for n in notifier.sent].count(NoticeKind.SWITCH_LAGGING) == 1  # said once


def test_traffic_from_before_the_rollback_never_counts_as_recovery(engine: Engine) -> None:
    """600 healthy v1.9.0 outcomes from before v2.0.0 was deployed, in the same minute as the
    rollback, and none after: verification waits for traffic instead of saying recovered; it
    says recovered once healthy traffic arrives after the switch."""
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"), deploy=("v1.9.0",))
    before = utcnow()
    traffic(engine, version="v1.9.0", n=600, errors=3, at=before)
    with write_session(engine) as session:
        registry.deploy(
            session=session,
            prompt="customer-support",
            version="v2.0.0",
            actor=OPERATOR,
            now=utcnow(),
        )
    with write_session(engine) as session:
        registry.rollback(
            session=session, prompt="customer-support", target=None, actor=OPERATOR, now=utcnow()
        )
    every = load_policies(POLICY_DIR).defaults.verify_every
    clock = Clock(utcnow() + timedelta(seconds=1))
    verifier, notifier = _verifier(engine, clock)
    for _ in range(2):
        verifier.run_due()
        clock.advance(seconds=every.total_seconds())
    v = _verification(engine)
    assert v.status == VerificationStatus.RUNNING and v.last_figures["requests"] == 0, v
    assert not [n for n in notifier.sent if n.kind == NoticeKind.VERIFICATION_RECOVERED]
    traffic(engine, version="v1.9.0", n=100, errors=0, at=clock.now)  # after the switch
    verifier.run_due()
    v = _verification(engine)
    assert v.status == VerificationStatus.RECOVERED and v.last_figures["requests"] == 100, v


def test_a_verification_superseded_by_a_later_rollback_ends_without_a_word(
    engine: Engine,
) -> None:
    make_prompt(engine)  # v1.8.0, v1.9.0, v2.0.0 live
    for target in (None, "v1.8.0"):  # back to v1.9.0, then further back to v1.8.0
        with write_session(engine) as session:
            result = registry.rollback(
                session=session,
                prompt="customer-support",
                target=target,
                actor=OPERATOR,
                now=utcnow(),
                force=True,
            )
            lifecycle.after(session, result, LogNotifier())
    clock = Clock(utcnow() + timedelta(seconds=1))
    verifier, notifier = _verifier(engine, clock)
    for _ in range(20):
        verifier.run_due()
        clock.advance(seconds=30)
    with read_session(engine) as session:
        rows = session.exec(select(Verification).order_by(Verification.id)).all()
    assert [(v.version, v.status) for v in rows] == [
        ("v1.9.0", VerificationStatus.SUPERSEDED),
        ("v1.8.0", VerificationStatus.NOT_JUDGED),  # no traffic at all
    ]
    assert not [n for n in notifier.sent if n.version == "v1.9.0"], notifier.sent
