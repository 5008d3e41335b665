"""`rollback-bot check --once`: one pass from the command line."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine

from bot import registry
from bot.cli import main
from bot.db import read_session
from bot.models import utcnow
from tests.conftest import make_prompt
from tests.detection_kit import traffic


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exited:
        code = int(exited.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def critical(engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setenv("DATABASE_URL", db_url)
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    traffic(engine, version="v2.0.0", n=1000, errors=80, at=utcnow())
    return engine


def _active(engine: Engine) -> str | None:
    with read_session(engine) as session:
        return registry.prompt_detail(session=session, name="customer-support").active_version


def test_dry_run_judges_and_changes_nothing(critical: Engine, capsys) -> None:
    code, out, _ = _run(capsys, "check", "--once", "--dry-run")
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split()[:4] == ["PROMPT", "VERSION", "SEVERITY", "ACTION"]
    assert row.split()[:6] == ["customer-support", "v2.0.0", "critical", "rollback", "1000", "8.00"]
    assert _active(critical) == "v2.0.0"


def test_once_acts_and_reports_json(critical: Engine, capsys) -> None:
    code, out, _ = _run(capsys, "check", "--once", "--json")
    assert code == 0
    body = json.loads(out)
    [decision] = body["decisions"]
    assert (decision["severity"], decision["action"]) == ("critical", "rollback")
    assert decision["figures"]["requests"] == 1000
    assert decision["fired"][0]["rule"] == "error_rate_critical"
    assert body["rollbacks"] == ["customer-support: v2.0.0 → v1.9.0"]
    assert _active(critical) == "v1.9.0"


def test_check_requires_once(capsys) -> None:
    code, _, err = _run(capsys, "check")
    assert code == 2
    assert "--once" in err
