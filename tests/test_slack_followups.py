"""After the decision, through Slack's protocol: verification, escalation, re-pages, rollouts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from bot.db import write_session
from bot.integrations.pagerduty import PagerDuty
from bot.judging.checker import Checker
from bot.metrics.builtin import BuiltinSource
from bot.models import RolloutKind, Trigger, utcnow
from bot.policy import load_policies
from bot.registry.changes import Actor
from bot.rollouts import stages as rollouts
from bot.rollouts.driver import RolloutDriver
from bot.verification.verifier import Verifier
from tests.conftest import make_prompt
from tests.detection_kit import POLICY_DIR, Clock, activated_at, traffic
from tests.pagerduty_kit import FakePagerDuty
from tests.slack_harness import Harness, running

ROUTING_KEY = "R0123456789abcdef0123456789abcde"


@pytest.fixture
def slack(engine: Engine, db_url: str) -> Iterator[Harness]:
    with running(engine, db_url) as harness:
        yield harness


def _sources(engine: Engine) -> dict:
    return {"builtin": BuiltinSource(engine)}


def _texts(slack: Harness, ts: str) -> list[str]:
    return [m["text"] for m in slack.fake.thread(ts)[1:]]


def _wait_thread(slack: Harness, predicate) -> list[str]:
    def find(_):
        for message in slack.fake.messages("C1"):
            texts = _texts(slack, message["ts"])
            if predicate(texts):
                return texts
        return None

    return slack.fake.wait_for(find, timeout=10)


def test_failed_verification_escalates_in_thread_dm_and_pagerduty(
    slack: Harness, engine: Engine
) -> None:
    pagerduty = FakePagerDuty()
    try:
        make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
        clock = Clock(activated_at(engine) + timedelta(minutes=2))
        traffic(engine, version="v2.0.0", n=1000, errors=80, at=clock.now)
        policies = load_policies(POLICY_DIR)
        Checker(
            engine=engine,
            policies=policies,
            sources=_sources(engine),
            notifier=slack.service.notifier,
            clock=clock,
        ).tick()
        first = Verifier(
            engine=engine,
            policies=policies,
            sources=_sources(engine),
            notifier=slack.service.notifier,
            clock=clock,
            pager=PagerDuty(routing_key=ROUTING_KEY, url=pagerduty.url),
        )
        for check in range(12):
            clock.advance(seconds=5)
            traffic(engine, version="v1.9.0", n=100, errors=6, at=clock.now)
            if check == 3:  # a restart mid-verification: a new verifier picks it up from the DB
                first = Verifier(
                    engine=engine,
                    policies=policies,
                    sources=_sources(engine),
                    notifier=slack.service.notifier,
                    clock=clock,
                    pager=PagerDuty(routing_key=ROUTING_KEY, url=pagerduty.url),
                )
            assert first.run_due() == 1
        texts = _wait_thread(slack, lambda t: any(x.startswith("Not recovered") for x in t))
        checks = [t for t in texts if t.startswith("Check ")]
        assert [c.split(":")[0] for c in checks] == [f"Check {i}/12" for i in range(1, 13)]
        dms = slack.fake.wait_for(
            lambda _: [m for m in slack.fake.messages("U1") if "Not recovered" in m["text"]] or None
        )
        assert "CRITICAL" in dms[0]["text"]
        assert len(pagerduty.events) == 1
        assert pagerduty.events[0]["payload"]["severity"] == "critical"
    finally:
        pagerduty.close()


def test_high_severity_repage_sends_a_second_dm(slack: Harness, engine: Engine) -> None:
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    clock = Clock(activated_at(engine) + timedelta(minutes=2))
    checker = Checker(
        engine=engine,
        policies=load_policies(POLICY_DIR),
        sources=_sources(engine),
        notifier=slack.service.notifier,
        clock=clock,
    )
    for _ in range(12):
        traffic(engine, version="v2.0.0", n=300, errors=9, at=clock.now)
        checker.tick()
        clock.advance(seconds=30)
    dms = slack.fake.wait_for(
        lambda _: slack.fake.messages("U1") if len(slack.fake.messages("U1")) >= 2 else None
    )
    assert "Nobody has acted for 5 min" in json.dumps(dms[1]["blocks"])


def _driver(engine: Engine, slack: Harness, clock: Clock) -> RolloutDriver:
    return RolloutDriver(
        engine=engine,
        policies=load_policies(POLICY_DIR),
        sources=_sources(engine),
        notifier=slack.service.notifier,
        clock=clock,
    )


def test_gradual_rollback_pause_is_paged_and_posted(slack: Harness, engine: Engine) -> None:
    make_prompt(engine)
    clock = Clock(utcnow())
    with write_session(engine) as session:
        rollouts.start(
            session=session,
            prompt="customer-support",
            kind=RolloutKind.GRADUAL_ROLLBACK,
            version=None,
            actor=Actor("U1", Trigger.SLACK),
            stage_seconds=60,
            now=clock.now,
        )
    traffic(engine, version="v2.0.0", n=300, errors=15, at=clock.now)
    _driver(engine, slack, clock).run_due()
    texts = _wait_thread(slack, lambda t: any("Paused at" in x for x in t))
    assert "above 2%" in texts[0]
    dm = slack.fake.wait_for(lambda _: slack.fake.messages("U1") or None)[0]
    assert "Paused at gradual rollback" in dm["text"]


def test_canary_promoted_and_canary_aborted_are_reported(slack: Harness, engine: Engine) -> None:
    make_prompt(engine, deploy=("v1.8.0", "v1.9.0"))
    make_prompt(engine, name="billing", versions=("b1", "b2", "b3"), deploy=("b1", "b2"))
    clock = Clock(utcnow())
    with write_session(engine) as session:
        for prompt, version in (("customer-support", "v2.0.0"), ("billing", "b3")):
            rollouts.start(
                session=session,
                prompt=prompt,
                kind=RolloutKind.CANARY,
                version=version,
                actor=Actor("U1", Trigger.SLACK),
                stage_seconds=60,
                now=clock.now,
            )
    driver = _driver(engine, slack, clock)
    traffic(engine, prompt="billing", version="b3", n=400, errors=20, at=clock.now)  # breach
    traffic(engine, prompt="billing", version="b2", n=2000, at=clock.now)
    for _ in range(3):
        clock.advance(seconds=60)
        traffic(engine, version="v2.0.0", n=200, at=clock.now)
        traffic(engine, version="v1.9.0", n=600, at=clock.now)
        driver.run_due()
    aborted = _wait_thread(slack, lambda t: any("Canary aborted" in x for x in t))
    assert "All traffic is back on b2" in aborted[-1]
    completed = _wait_thread(slack, lambda t: any(x.startswith("Completed") for x in t))
    assert [t.split(":")[0] for t in completed] == ["Stage 2/4", "Stage 3/4", "Completed"]
    announcement = next(
        m for m in slack.fake.messages("C1") if "Canary of customer-support" in m["text"]
    )
    assert "Finish now" not in json.dumps(slack.fake.message(announcement["ts"])["blocks"])
