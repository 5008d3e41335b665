"""Two replicas on one PostgreSQL, both with the checker and the Slack app; SIGKILL the leader.

An incident is alerted once, rolled back once and verified once; the replica holding the
checker lease is killed in the middle of the verification (or of a gradual rollback), the
other takes over, and no check or stage is lost or run twice.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from tests.conftest import PG_ONLY
from tests.reliability.kit import (
    FAST_POLICY,
    Bot,
    Ledger,
    assert_checks_told,
    assert_consistent,
    events,
    ledger,
    post_events,
    record,
    restored_traffic,
    seed_prompt,
    wait_rollback,
    wait_settled,
    wait_until,
    write_policy,
)
from tests.slack_kit import FakeSlack

pytestmark = pytest.mark.parametrize("db_url", PG_ONLY, indirect=True)

CHECKS = 10
LEASE_S = 2.0


@pytest.fixture
def pair(tmp_path: Path, make_bot: Callable[..., Bot]) -> tuple[Bot, Bot]:
    policy = FAST_POLICY.replace("verify_for: 5s", f"verify_for: {CHECKS}s")
    policies = write_policy(tmp_path / "policies-replicas", policy)
    first = make_bot("replica-a", policies=policies)
    second = make_bot("replica-b", policies=policies)
    first.start()
    wait_until(first.is_leader, timeout=10, what="replica-a to lead")
    second.start()
    return first, second


def _takeover(leader: Bot, standby: Bot) -> float:
    killed = time.monotonic()
    leader.kill()
    wait_until(standby.is_leader, timeout=15, every=0.02, what="the standby to take the lease")
    return time.monotonic() - killed


def test_alerted_once_rolled_back_once_verified_once_across_a_leader_sigkill(
    pair: tuple[Bot, Bot], engine: Engine, slack: FakeSlack
) -> None:
    first, second = pair
    seed_prompt(second)
    assert post_events(second, events("v2.0.0", 1000, 80)).status_code == 200
    with restored_traffic(second, first):  # every check judged, so every check is posted
        wait_until(
            lambda: ledger(engine, slack).count(f"Check 3/{CHECKS}:"), timeout=30, what="check 3"
        )
        killed_at = time.monotonic()
        takeover_s = _takeover(first, second)
        wait_until(
            lambda: ledger(engine, slack).count(f"Check 4/{CHECKS}:"), timeout=30, what="check 4"
        )
        next_check_s = time.monotonic() - killed_at
        found = wait_settled(engine, slack, timeout=60)
    counts = assert_consistent(found)
    assert found.active == "v1.9.0" and counts["rollbacks"] == 1
    assert len(found.incidents) == 1
    assert len([p for p in found.posted if p[0] == "C1" and p[1] is None]) == 1, "one card"
    assert found.count("Rolled back v2.0.0 → v1.9.0 automatically") == 1
    assert_checks_told(found, CHECKS)
    assert found.verifications[0].checks_done == CHECKS
    assert takeover_s < LEASE_S + 1.5
    record(
        "two replicas: verification across leader SIGKILL",
        lease_s=LEASE_S,
        takeover_s=round(takeover_s, 2),
        kill_to_next_check_s=round(next_check_s, 2),
        **counts,
    )


@pytest.fixture
def steady_traffic(pair: tuple[Bot, Bot]) -> Iterator[None]:
    """Healthy traffic on both versions, sent to whichever replica answers."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            for bot in pair:
                if bot.alive():
                    with contextlib.suppress(httpx.HTTPError):  # it may be dying right now
                        post_events(bot, events("v1.9.0", 40, 0) + events("v2.0.0", 40, 0))
                    break
            stop.wait(0.5)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=5)


def _every_stage_once(found: Ledger) -> dict[str, int]:
    """The ledger is consistent and the gradual rollback's stages 1-3, the final rollback and
    each stage's Slack post happened once each; returns the ledger's counts."""
    counts = assert_consistent(found)
    reasons = Counter(e.reason.split(":")[0] for e in found.audit if e.kind == "split")
    assert reasons == {f"gradual_rollback stage {n}/4": 1 for n in (1, 2, 3)}, reasons
    assert found.active == "v1.9.0" and counts["rollbacks"] == 1
    stage_posts = Counter(t for t in found.texts() if t.startswith("Stage "))
    assert all(n == 1 for n in stage_posts.values()), stage_posts
    return counts


def test_gradual_rollback_keeps_every_stage_once_across_a_leader_sigkill(
    pair: tuple[Bot, Bot], engine: Engine, slack: FakeSlack, steady_traffic: None
) -> None:
    first, second = pair
    seed_prompt(second)
    with second.api() as api:
        started = api.post(
            "/api/prompts/customer-support/rollouts",
            json={"kind": "gradual_rollback", "version": "v1.9.0", "stage_seconds": 3},
        )
    assert started.status_code == 201, started.text
    stage_two = "gradual_rollback stage 2/4"
    wait_until(
        lambda: any(stage_two in e.reason for e in ledger(engine, slack).audit),
        timeout=30,
        what="stage 2",
    )
    takeover_s = _takeover(first, second)
    wait_rollback(engine, slack, timeout=60)
    found = wait_settled(engine, slack)
    counts = _every_stage_once(found)
    record(
        "two replicas: gradual rollback across leader SIGKILL",
        takeover_s=round(takeover_s, 2),
        **counts,
    )


def _frozen(bot: Bot) -> bool:
    assert bot.proc is not None
    stat = Path(f"/proc/{bot.proc.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"  # stopped


def test_a_paused_ex_leader_never_applies_its_stale_stage(
    tmp_path: Path, engine: Engine, slack: FakeSlack, make_bot: Callable[..., Bot]
) -> None:
    """The leader freezes (SIGSTOP, as a GC pause or a VM freeze would) just after deciding
    that a gradual rollback's stage is due; the standby takes the lease and carries the rollback
    on; the old leader wakes (SIGCONT) long after and would apply its stale decision, cutting
    the standby's stage short. Its write is refused in its own transaction (the lease is re-read
    before commit): every stage happens once and lasts its full time."""
    policies = write_policy(tmp_path / "policies-paused", FAST_POLICY)
    first = make_bot("paused-a", policies=policies)
    second = make_bot("paused-b", policies=policies)
    first.start(failpoints="rollout.judged:stop")
    wait_until(first.is_leader, timeout=10, what="paused-a to lead")
    second.start()
    seed_prompt(second)
    stop = threading.Event()

    def traffic() -> None:  # to the standby only: the frozen leader answers nobody
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                post_events(second, events("v1.9.0", 40, 0) + events("v2.0.0", 40, 0))
            stop.wait(0.5)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        with second.api() as api:
            started = api.post(
                "/api/prompts/customer-support/rollouts",
                json={"kind": "gradual_rollback", "version": "v1.9.0", "stage_seconds": 3},
            )
        assert started.status_code == 201, started.text
        wait_until(lambda: _frozen(first), timeout=30, what="the leader to freeze mid-stage")
        frozen_at = time.monotonic()
        wait_until(second.is_leader, timeout=15, what="the standby to take the lease")
        takeover_s = time.monotonic() - frozen_at
        time.sleep(LEASE_S * 2)  # the old leader stays frozen well past its lease
        assert first.proc is not None
        first.proc.send_signal(signal.SIGCONT)
        wait_rollback(engine, slack, timeout=60)
        found = wait_settled(engine, slack)
    finally:
        stop.set()
        sender.join(timeout=5)
    counts = _every_stage_once(found)
    changes = [e.created_at for e in found.audit if e.kind in ("split", "rollback")]
    lasted = [round((b - a).total_seconds(), 2) for a, b in itertools.pairwise(changes)]
    assert min(lasted) >= 2.9, f"a stage was cut short: {lasted} s (stage_seconds 3)"
    assert first.alive() and "no longer holds the checker lease" in first.log_file.read_text()
    record(
        "two replicas: leader frozen mid-stage past its lease, then woken",
        takeover_s=round(takeover_s, 2),
        shortest_stage_s=min(lasted),
        stale_stages_applied=0,
        **counts,
    )
