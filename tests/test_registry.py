"""The registry's domain functions, on SQLite and PostgreSQL, without HTTP."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine

from bot import registry
from bot.db import read_session, write_session
from bot.errors import (
    AlreadyActive,
    AlreadyRolledBack,
    ConcurrentChange,
    InvalidRequest,
    PromptNotFound,
    VersionExists,
    VersionMarkedBad,
    VersionNotFound,
)
from bot.models import ChangeKind, Health, Trigger, utcnow
from bot.registry.changes import Actor
from tests.conftest import OPERATOR, make_prompt

ALICE = Actor(operator="U_ALICE", trigger=Trigger.SLACK)
SYSTEM = Actor(operator="system", trigger=Trigger.AUTOMATIC, rule="error_rate_critical")


def _rollback(engine: Engine, target: str | None = None, actor: Actor = ALICE, **kw: object):
    with write_session(engine) as session:
        return registry.rollback(
            session=session,
            prompt="customer-support",
            target=target,
            actor=actor,
            now=utcnow(),
            **kw,
        )


def _detail(engine: Engine, name: str = "customer-support"):
    with read_session(engine) as session:
        return registry.prompt_detail(session=session, name=name)


def _history(engine: Engine, name: str = "customer-support"):
    with read_session(engine) as session:
        return registry.history(session=session, name=name)


def _health(engine: Engine) -> dict[str, Health]:
    return {v.version: v.health for v in _detail(engine).versions}


def test_new_version_serves_nothing_until_deployed(engine: Engine) -> None:
    make_prompt(engine, deploy=())
    detail = _detail(engine)
    assert detail.active_version is None
    assert [v.version for v in detail.versions] == ["v2.0.0", "v1.9.0", "v1.8.0"]
    with pytest.raises(InvalidRequest, match="no active version yet"):
        _rollback(engine)


def test_rollback_defaults_to_previous_version_and_marks_the_bad_one(engine: Engine) -> None:
    make_prompt(engine)
    result = _rollback(engine, reason="error rate 8%")
    assert (result.from_version, result.to_version, result.kind) == (
        "v2.0.0",
        "v1.9.0",
        ChangeKind.ROLLBACK,
    )
    detail = _detail(engine)
    assert detail.active_version == "v1.9.0"
    assert _health(engine) == {"v2.0.0": Health.BAD, "v1.9.0": Health.GOOD, "v1.8.0": Health.GOOD}
    bad = next(v for v in detail.versions if v.version == "v2.0.0")
    assert bad.health_reason == "rolled back to v1.9.0: error rate 8%"
    entry = _history(engine)[0]
    assert (entry.kind, entry.from_version, entry.to_version) == ("rollback", "v2.0.0", "v1.9.0")
    assert (entry.operator, entry.trigger, entry.reason) == ("U_ALICE", "slack", "error rate 8%")
    assert entry.revision == result.revision == detail.revision


def test_automatic_rollback_records_the_rule(engine: Engine) -> None:
    make_prompt(engine)
    _rollback(engine, actor=SYSTEM, reason="Error rate 8.0% exceeds 5% threshold")
    entry = _history(engine)[0]
    assert (entry.operator, entry.trigger, entry.rule) == (
        "system",
        "automatic",
        "error_rate_critical",
    )


def test_default_target_skips_versions_marked_bad(engine: Engine) -> None:
    make_prompt(engine)
    with write_session(engine) as session:
        registry.mark_health(
            session=session,
            prompt="customer-support",
            version="v1.9.0",
            health=Health.BAD,
            actor=OPERATOR,
            now=utcnow(),
            reason="refund bug",
        )
    assert _rollback(engine).to_version == "v1.8.0"


def test_no_known_good_version_asks_for_a_target(engine: Engine) -> None:
    make_prompt(engine, versions=("v1",))
    with pytest.raises(InvalidRequest, match="name the version"):
        _rollback(engine)
    assert _detail(engine).active_version == "v1"


def test_second_untargeted_rollback_is_refused_as_duplicate(engine: Engine) -> None:
    make_prompt(engine)
    _rollback(engine)
    with pytest.raises(
        AlreadyRolledBack, match=r"already rolled back v2\.0\.0 → v1\.9\.0 by U_ALICE"
    ):
        _rollback(engine, actor=OPERATOR)
    assert _detail(engine).active_version == "v1.9.0"
    assert len(_history(engine)) == 4  # three deploys and one rollback


def test_untargeted_rollback_after_the_dedup_window_goes_further_back(engine: Engine) -> None:
    make_prompt(engine)
    _rollback(engine)
    result = _rollback(engine, dedup_window=timedelta(0))
    assert (result.from_version, result.to_version) == ("v1.9.0", "v1.8.0")


def test_explicit_target_rolls_back_further(engine: Engine) -> None:
    make_prompt(engine)
    _rollback(engine)
    assert _rollback(engine, target="v1.8.0").to_version == "v1.8.0"


def test_rollback_to_a_version_other_than_the_previous(engine: Engine) -> None:
    make_prompt(engine)
    result = _rollback(engine, target="v1.8.0")
    assert (result.from_version, result.to_version) == ("v2.0.0", "v1.8.0")


def test_rollback_to_the_active_version_is_409(engine: Engine) -> None:
    make_prompt(engine)
    with pytest.raises(AlreadyActive, match="already the active version"):
        _rollback(engine, target="v2.0.0")
    assert len(_history(engine)) == 3


def test_repeated_targeted_rollback_says_who_did_it(engine: Engine) -> None:
    make_prompt(engine)
    _rollback(engine, target="v1.9.0")
    with pytest.raises(AlreadyRolledBack, match="by U_ALICE"):
        _rollback(engine, target="v1.9.0", actor=OPERATOR)


def test_rollback_to_bad_version_needs_force(engine: Engine) -> None:
    make_prompt(engine)
    _rollback(engine)
    with write_session(engine) as session:
        registry.deploy(
            session=session,
            prompt="customer-support",
            version="v1.8.0",
            actor=OPERATOR,
            now=utcnow(),
        )
    with pytest.raises(VersionMarkedBad, match="v2.0.0 is marked bad"):
        _rollback(engine, target="v2.0.0")
    assert _detail(engine).active_version == "v1.8.0"
    assert _rollback(engine, target="v2.0.0", force=True).to_version == "v2.0.0"


def test_deploy_of_bad_version_needs_force(engine: Engine) -> None:
    make_prompt(engine)
    _rollback(engine)
    with write_session(engine) as session, pytest.raises(VersionMarkedBad):
        registry.deploy(
            session=session,
            prompt="customer-support",
            version="v2.0.0",
            actor=OPERATOR,
            now=utcnow(),
        )


def test_expected_version_mismatch_reports_the_rollback(engine: Engine) -> None:
    make_prompt(engine)
    _rollback(engine, target="v1.9.0")
    with pytest.raises(AlreadyRolledBack, match=r"v2\.0\.0 → v1\.9\.0 by U_ALICE"):
        _rollback(engine, target="v1.8.0", expected_version="v2.0.0")
    with write_session(engine) as session:
        registry.deploy(
            session=session,
            prompt="customer-support",
            version="v1.8.0",
            actor=OPERATOR,
            now=utcnow(),
        )
    with pytest.raises(ConcurrentChange, match="no longer on v1.9.0: now on v1.8.0"):
        _rollback(engine, expected_version="v1.9.0")


def test_unknown_prompt_suggests_close_names(engine: Engine) -> None:
    make_prompt(engine)
    with pytest.raises(PromptNotFound, match="did you mean customer-support"):
        with write_session(engine) as session:
            registry.rollback(
                session=session, prompt="customer-suport", target=None, actor=ALICE, now=utcnow()
            )


def test_unknown_version_lists_recent_versions(engine: Engine) -> None:
    make_prompt(engine)
    with pytest.raises(VersionNotFound) as info:
        _rollback(engine, target="v9.9.9")
    assert info.value.recent_versions == ["v2.0.0", "v1.9.0", "v1.8.0"]
    assert "recent versions: v2.0.0, v1.9.0, v1.8.0" in info.value.message


def test_versions_are_immutable(engine: Engine) -> None:
    make_prompt(engine)
    with write_session(engine) as session, pytest.raises(VersionExists):
        registry.create_version(
            session=session,
            prompt="customer-support",
            version="v1.9.0",
            template="x",
            created_by="t",
            now=utcnow(),
        )


@pytest.mark.parametrize("name", ["", "has space", "-leading", "x" * 101, "slash/name"])
def test_bad_prompt_names_are_refused(engine: Engine, name: str) -> None:
    with write_session(engine) as session, pytest.raises(InvalidRequest, match="prompt name"):
        registry.create_version(
            session=session, prompt=name, version="v1", template="x", created_by="t", now=utcnow()
        )
    with read_session(engine) as session:
        assert registry.list_prompts(session=session) == []


def test_failed_change_leaves_nothing_behind(engine: Engine) -> None:
    make_prompt(engine)
    before = _detail(engine)
    with pytest.raises(VersionNotFound):
        _rollback(engine, target="v0")
    assert _detail(engine) == before
    assert len(_history(engine)) == 3


def test_canary_split_and_rollback_from_it(engine: Engine) -> None:
    make_prompt(engine, deploy=("v1.9.0",))
    with write_session(engine) as session:
        result = registry.set_split(
            session=session,
            prompt="customer-support",
            split={"v1.9.0": 90, "v2.0.0": 10},
            actor=OPERATOR,
            now=utcnow(),
            reason="canary",
        )
    assert result.split == {"v1.9.0": 90, "v2.0.0": 10}
    detail = _detail(engine)
    assert (detail.active_version, detail.split) == ("v1.9.0", {"v1.9.0": 90, "v2.0.0": 10})
    rolled = _rollback(engine, reason="canary errors")
    assert (rolled.from_version, rolled.to_version, rolled.split) == ("v2.0.0", "v1.9.0", None)
    detail = _detail(engine)
    assert (detail.active_version, detail.split) == ("v1.9.0", None)
    assert _health(engine)["v2.0.0"] == Health.BAD


def test_split_to_one_version_is_a_full_switch(engine: Engine) -> None:
    make_prompt(engine, deploy=("v1.9.0",))
    with write_session(engine) as session:
        registry.set_split(
            session=session,
            prompt="customer-support",
            split={"v1.9.0": 0, "v2.0.0": 100},
            actor=OPERATOR,
            now=utcnow(),
        )
    detail = _detail(engine)
    assert (detail.active_version, detail.split) == ("v2.0.0", None)


def test_split_must_sum_to_100_and_name_known_versions(engine: Engine) -> None:
    make_prompt(engine)
    with write_session(engine) as session, pytest.raises(InvalidRequest, match="sum to 100"):
        registry.set_split(
            session=session,
            prompt="customer-support",
            split={"v1.9.0": 50},
            actor=OPERATOR,
            now=utcnow(),
        )
    with write_session(engine) as session, pytest.raises(VersionNotFound):
        registry.set_split(
            session=session,
            prompt="customer-support",
            split={"v1.9.0": 50, "v7": 50},
            actor=OPERATOR,
            now=utcnow(),
        )
    assert _detail(engine).split is None


def test_history_is_newest_first_and_pages(engine: Engine) -> None:
    make_prompt(engine)
    entries = _history(engine)
    assert [e.to_version for e in entries] == ["v2.0.0", "v1.9.0", "v1.8.0"]
    with read_session(engine) as session:
        older = registry.history(
            session=session, name="customer-support", limit=1, before_id=entries[0].id
        )
    assert [e.to_version for e in older] == ["v1.9.0"]


def test_list_prompts(engine: Engine) -> None:
    make_prompt(engine)
    make_prompt(engine, name="billing", versions=("a1",), deploy=())
    with read_session(engine) as session:
        listing = registry.list_prompts(session=session)
    assert [(p.name, p.active_version, p.version_count) for p in listing] == [
        ("billing", None, 1),
        ("customer-support", "v2.0.0", 3),
    ]
