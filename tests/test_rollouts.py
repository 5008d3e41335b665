"""Gradual rollback and canary rollouts: staged, persisted, driven by the scheduler."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from bot import registry
from bot.db import read_session, write_session
from bot.errors import Conflict
from bot.incidents import lifecycle
from bot.metrics.builtin import BuiltinSource
from bot.models import Health, Rollout, RolloutKind, RolloutStatus, Trigger, utcnow
from bot.notify import LogNotifier, NoticeKind
from bot.policy import load_policies
from bot.registry.changes import Actor
from bot.rollouts import stages as rollouts
from bot.rollouts.driver import RolloutDriver
from tests.conftest import make_prompt
from tests.detection_kit import POLICY_DIR, Clock, traffic

ALICE = Actor("U1", Trigger.SLACK)
BOB = Actor("bob", Trigger.API)
STAGE = 60.0


def _start(engine: Engine, kind: RolloutKind, version: str | None, clock: Clock) -> int:
    with write_session(engine) as session:
        rollout, _ = rollouts.start(
            session=session,
            prompt="customer-support",
            kind=kind,
            version=version,
            actor=ALICE,
            stage_seconds=STAGE,
            now=clock.now,
        )
        return rollout.id or 0


def _driver(engine: Engine, clock: Clock) -> tuple[RolloutDriver, LogNotifier]:
    notifier = LogNotifier()
    return RolloutDriver(
        engine=engine,
        policies=load_policies(POLICY_DIR),
        sources={"builtin": BuiltinSource(engine)},
        notifier=notifier,
        clock=clock,
    ), notifier


def _routing(engine: Engine) -> tuple[str | None, dict | None]:
    with read_session(engine) as session:
        detail = registry.prompt_detail(session=session, name="customer-support")
    return detail.active_version, detail.split


def _rollout(engine: Engine, rollout_id: int) -> Rollout:
    with read_session(engine) as session:
        return rollouts.get_rollout(session, rollout_id)


def test_gradual_rollback_walks_75_50_25_0_and_ends_as_a_rollback(engine: Engine) -> None:
    make_prompt(engine)  # v2.0.0 active, v1.9.0 before it
    clock = Clock(utcnow())
    rid = _start(engine, RolloutKind.GRADUAL_ROLLBACK, None, clock)
    assert _routing(engine) == ("v2.0.0", {"v2.0.0": 75, "v1.9.0": 25})
    driver, notifier = _driver(engine, clock)
    shares = []
    for _ in range(3):
        traffic(engine, version="v2.0.0", n=300, errors=3, at=clock.now)  # 1%: below 2%
        traffic(engine, version="v1.9.0", n=100, at=clock.now)
        clock.advance(seconds=STAGE)
        driver.run_due()
        shares.append(_routing(engine)[1])
    assert shares == [{"v2.0.0": 50, "v1.9.0": 50}, {"v2.0.0": 25, "v1.9.0": 75}, None]
    assert _routing(engine)[0] == "v1.9.0"
    assert [n.kind for n in notifier.sent] == [
        NoticeKind.ROLLOUT_STAGE,
        NoticeKind.ROLLOUT_STAGE,
        NoticeKind.ROLLOUT_COMPLETED,
    ]
    assert _rollout(engine, rid).status == RolloutStatus.COMPLETED
    with read_session(engine) as session:
        history = registry.history(session=session, name="customer-support")
        health = {
            v.version: v.health
            for v in registry.prompt_detail(session=session, name="customer-support").versions
        }
    assert [e.kind.value for e in history[:4]] == ["rollback", "split", "split", "split"]
    assert history[0].rule == "gradual_rollback"
    assert health["v2.0.0"] == Health.BAD


def test_gradual_rollback_pauses_over_2_percent_and_can_be_finished(engine: Engine) -> None:
    make_prompt(engine)
    clock = Clock(utcnow())
    rid = _start(engine, RolloutKind.GRADUAL_ROLLBACK, "v1.9.0", clock)
    driver, notifier = _driver(engine, clock)
    traffic(engine, version="v2.0.0", n=300, errors=15, at=clock.now)  # 5% on the bad side
    traffic(engine, version="v1.9.0", n=100, at=clock.now)
    driver.run_due()
    assert _rollout(engine, rid).status == RolloutStatus.PAUSED
    [paused] = notifier.sent
    assert paused.kind == NoticeKind.ROLLOUT_PAUSED
    assert paused.action == "page"
    assert "above 2%" in paused.text
    clock.advance(seconds=STAGE * 3)
    driver.run_due()  # paused: nothing moves by itself
    assert _routing(engine)[1] == {"v2.0.0": 75, "v1.9.0": 25}
    with write_session(engine) as session:
        rollouts.finish(
            session=session, rollout=rollouts.get_rollout(session, rid), actor=ALICE, now=clock.now
        )
    assert _routing(engine) == ("v1.9.0", None)


def test_canary_is_promoted_stage_by_stage_when_healthy(engine: Engine) -> None:
    make_prompt(engine, deploy=("v1.8.0", "v1.9.0"))
    clock = Clock(utcnow())
    rid = _start(engine, RolloutKind.CANARY, "v2.0.0", clock)
    assert _routing(engine) == ("v1.9.0", {"v1.9.0": 99, "v2.0.0": 1})
    driver, notifier = _driver(engine, clock)
    for _ in range(3):
        clock.advance(seconds=STAGE)
        traffic(engine, version="v2.0.0", n=200, at=clock.now)
        traffic(engine, version="v1.9.0", n=600, at=clock.now)
        driver.run_due()
    assert _routing(engine) == ("v2.0.0", None)
    assert [n.kind for n in notifier.sent][-1] == NoticeKind.ROLLOUT_COMPLETED
    assert _rollout(engine, rid).status == RolloutStatus.COMPLETED


def test_canary_waits_for_enough_samples(engine: Engine) -> None:
    make_prompt(engine, deploy=("v1.8.0", "v1.9.0"))
    clock = Clock(utcnow())
    _start(engine, RolloutKind.CANARY, "v2.0.0", clock)
    driver, _ = _driver(engine, clock)
    clock.advance(seconds=STAGE * 5)
    traffic(engine, version="v2.0.0", n=10, at=clock.now)  # 10 requests: not enough to judge
    driver.run_due()
    assert _routing(engine)[1] == {"v1.9.0": 99, "v2.0.0": 1}


def test_canary_breach_aborts_back_to_the_stable_version(engine: Engine) -> None:
    make_prompt(engine, deploy=("v1.8.0", "v1.9.0"))
    clock = Clock(utcnow())
    rid = _start(engine, RolloutKind.CANARY, "v2.0.0", clock)
    driver, notifier = _driver(engine, clock)
    traffic(engine, version="v2.0.0", n=400, errors=20, at=clock.now)  # 5% in its first hour
    traffic(engine, version="v1.9.0", n=2000, at=clock.now)
    driver.run_due()
    assert _routing(engine) == ("v1.9.0", None)
    assert _rollout(engine, rid).status == RolloutStatus.ABORTED
    [aborted] = notifier.sent
    assert aborted.kind == NoticeKind.ROLLOUT_ABORTED
    assert "All traffic is back on v1.9.0" in aborted.text
    with read_session(engine) as session:
        entry = registry.history(session=session, name="customer-support")[0]
    assert (entry.kind.value, entry.to_version, entry.rule) == ("rollback", "v1.9.0", "canary")


def test_one_rollout_per_prompt_and_bad_starts_refused(engine: Engine) -> None:
    make_prompt(engine)
    clock = Clock(utcnow())
    _start(engine, RolloutKind.GRADUAL_ROLLBACK, None, clock)
    with pytest.raises(Conflict, match="already"):
        _start(engine, RolloutKind.CANARY, "v1.8.0", clock)
    make_prompt(engine, name="billing", versions=("b1",))
    with write_session(engine) as session, pytest.raises(Conflict, match="already the active"):
        rollouts.start(
            session=session,
            prompt="billing",
            kind=RolloutKind.CANARY,
            version="b1",
            actor=ALICE,
            stage_seconds=STAGE,
            now=clock.now,
        )


def test_a_restart_resumes_the_stage(engine: Engine) -> None:
    make_prompt(engine)
    clock = Clock(utcnow())
    _start(engine, RolloutKind.GRADUAL_ROLLBACK, None, clock)
    clock.advance(seconds=STAGE)
    traffic(engine, version="v2.0.0", n=300, at=clock.now)
    fresh, _ = _driver(engine, clock)  # a new process: everything comes from the database
    assert fresh.run_due() == 1
    assert _routing(engine)[1] == {"v2.0.0": 50, "v1.9.0": 50}
    second, _ = _driver(engine, clock)
    assert second.run_due() == 1  # judged again, but the stage has just started: no move
    assert _routing(engine)[1] == {"v2.0.0": 50, "v1.9.0": 50}


def test_rollouts_over_the_api(client, engine: Engine) -> None:
    make_prompt(engine, deploy=("v1.8.0", "v1.9.0"))
    r = client.post(
        "/api/prompts/customer-support/rollouts",
        json={"kind": "canary", "version": "v2.0.0", "stage_seconds": 30},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert (
        body["kind"],
        body["from_version"],
        body["to_version"],
        body["stages"],
        body["status"],
    ) == (
        "canary",
        "v1.9.0",
        "v2.0.0",
        [1, 5, 25, 100],
        "running",
    )
    again = client.post("/api/prompts/customer-support/rollouts", json={"kind": "gradual_rollback"})
    assert (again.status_code, again.json()["error"]) == (409, "conflict")
    assert client.get(f"/api/rollouts/{body['id']}").json()["stage"] == 0
    aborted = client.post(f"/api/rollouts/{body['id']}/abort")
    assert aborted.json()["status"] == "aborted"
    assert _routing(engine) == ("v1.9.0", None)
    assert client.post(f"/api/rollouts/{body['id']}/finish").status_code == 409
    assert client.get("/api/rollouts/999").status_code == 404
    bad = client.post("/api/prompts/customer-support/rollouts", json={"kind": "sideways"})
    assert bad.status_code == 422


def test_gradual_rollback_and_canary_from_the_cli(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli import main

    monkeypatch.setenv("DATABASE_URL", db_url)
    make_prompt(engine)
    main(["rollback", "customer-support", "--gradual", "--reason", "quality -12%"])
    assert (
        "gradual rollback of customer-support v2.0.0 → v1.9.0, stage 1/4" in capsys.readouterr().out
    )
    assert _routing(engine)[1] == {"v2.0.0": 75, "v1.9.0": 25}
    with pytest.raises(SystemExit) as exited:
        main(["prompts", "deploy", "customer-support", "v1.8.0", "--canary"])
    assert exited.value.code == 2
    assert "already running" in capsys.readouterr().err
    main(["rollouts", "list"])
    listed = capsys.readouterr().out
    assert "running" in listed and "gradual rollback of customer-support" in listed
    rollout_id = listed.splitlines()[1].split()[0]
    main(["rollouts", "finish", rollout_id, "--operator", "dana"])
    assert f"#{rollout_id} finished" in capsys.readouterr().out
    assert _routing(engine) == ("v1.9.0", None)
    main(["rollouts", "show", rollout_id])
    shown = capsys.readouterr().out
    assert "completed" in shown and "finished by dana via the CLI" in shown
    main(["rollouts", "list"])
    assert capsys.readouterr().out.strip() == "ID  STATUS  ROLLOUT  NOTE"


# --- people's changes during a rollout stand ----------------------------------------------


def _canary_at_5_percent(engine: Engine, clock: Clock) -> int:
    """v1.9.0 stable, a canary of v2.0.0 moved on to 5%."""
    rid = _start(engine, RolloutKind.CANARY, "v2.0.0", clock)
    traffic(engine, version="v2.0.0", n=400, at=clock.now)
    traffic(engine, version="v1.9.0", n=400, at=clock.now)
    clock.advance(seconds=STAGE)
    _driver(engine, clock)[0].run_due()
    assert _routing(engine)[1] == {"v1.9.0": 95, "v2.0.0": 5}
    return rid


@pytest.mark.parametrize("change", ["deploy", "rollback"])
def test_a_persons_change_during_a_canary_ends_it_and_stands(engine: Engine, change: str) -> None:
    make_prompt(engine, versions=("v1.9.0", "v2.0.0", "v2.1.0"), deploy=("v1.9.0",))
    clock = Clock(utcnow())
    rid = _canary_at_5_percent(engine, clock)
    notifier = LogNotifier()
    with write_session(engine) as session:
        if change == "deploy":
            lifecycle.deploy(
                session,
                prompt="customer-support",
                version="v2.1.0",
                actor=BOB,
                now=utcnow(),
                notifier=notifier,
            )
        else:
            lifecycle.rollback(
                session,
                prompt="customer-support",
                target=None,
                actor=BOB,
                now=utcnow(),
                notifier=notifier,
            )
    stands = ("v2.1.0", None) if change == "deploy" else ("v1.9.0", None)
    assert _routing(engine) == stands
    rollout = _rollout(engine, rid)
    assert rollout.status == RolloutStatus.SUPERSEDED
    assert f"{change} to {stands[0]} by bob via the API" in (rollout.note or ""), rollout.note
    assert [n.kind for n in notifier.sent if n.kind == NoticeKind.ROLLOUT_SUPERSEDED]
    driver, _ = _driver(engine, clock)
    for _ in range(4):  # the driver never moves traffic again
        traffic(engine, version="v2.0.0", n=400, at=clock.now)
        clock.advance(seconds=STAGE)
        driver.run_due()
    assert _routing(engine) == stands
    with write_session(engine) as session:  # and the next rollout may start
        rollouts.start(
            session=session,
            prompt="customer-support",
            kind=RolloutKind.CANARY,
            version="v2.1.0" if change == "rollback" else "v1.9.0",
            actor=ALICE,
            stage_seconds=STAGE,
            now=clock.now,
            reason="again",
        )


def test_a_rollback_during_a_canary_of_an_older_version_returns_to_the_stable_one(
    engine: Engine,
) -> None:
    """The canary's version was registered before the stable one: the suspect is the canary,
    not the newest version registered."""
    make_prompt(engine, versions=("v2.0.0", "v1.9.0"), deploy=("v1.9.0",))  # canary older
    clock = Clock(utcnow())
    _canary_at_5_percent(engine, clock)
    with write_session(engine) as session:
        result = lifecycle.rollback(
            session,
            prompt="customer-support",
            target=None,
            actor=BOB,
            now=utcnow(),
            notifier=LogNotifier(),
        )
    assert (result.from_version, result.to_version) == ("v2.0.0", "v1.9.0")
    assert _routing(engine) == ("v1.9.0", None)


def test_a_change_behind_the_flows_back_supersedes_the_rollout_too(engine: Engine) -> None:
    """Even a change made straight in the registry (no lifecycle flow) is never overwritten:
    the driver compares the routing revision with the one the rollout last wrote."""
    make_prompt(engine, versions=("v1.9.0", "v2.0.0", "v2.1.0"), deploy=("v1.9.0",))
    clock = Clock(utcnow())
    rid = _canary_at_5_percent(engine, clock)
    with write_session(engine) as session:
        registry.deploy(
            session=session, prompt="customer-support", version="v2.1.0", actor=BOB, now=utcnow()
        )
    clock.advance(seconds=STAGE)
    traffic(engine, version="v2.0.0", n=400, at=clock.now)
    driver, notifier = _driver(engine, clock)
    driver.run_due()
    assert _routing(engine) == ("v2.1.0", None)
    assert _rollout(engine, rid).status == RolloutStatus.SUPERSEDED
    assert [n.kind for n in notifier.sent] == [NoticeKind.ROLLOUT_SUPERSEDED]


def test_the_rollouts_cli_names_a_rollout_that_does_not_exist(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli import main

    monkeypatch.setenv("DATABASE_URL", db_url)
    for command in (["show", "999"], ["finish", "999"], ["abort", "999"], ["show", "x"]):
        with pytest.raises(SystemExit) as exited:
            main(["rollouts", *command])
        assert exited.value.code == 2, command
        err = capsys.readouterr().err
        assert "no rollout #999" in err or "'x' is not a valid integer" in err, err
        assert "Traceback" not in err
