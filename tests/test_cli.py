"""The CLI as a user runs it: a real process on DATABASE_URL, tables or JSON, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from bot import registry
from bot.cli import main
from bot.db import read_session
from tests.conftest import make_prompt

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, db_url: str, env: dict[str, str] | None = None, stdin: str | None = None):
    environment = {**os.environ, "DATABASE_URL": db_url, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        capture_output=True,
        text=True,
        env=environment,
        input=stdin,
        cwd=ROOT,
        timeout=60,
    )


def _history(engine: Engine) -> list[object]:
    with read_session(engine) as session:
        return list(registry.history(session=session, name="customer-support"))


def test_registry_from_the_command_line(db_url: str, tmp_path: Path) -> None:
    template = tmp_path / "v2.txt"
    template.write_text("You are a support agent v2. {question}")
    assert (
        run(
            "prompts", "add", "customer-support", "v1.9.0", "--template", "v1.9 {q}", db_url=db_url
        ).returncode
        == 0
    )
    added = run(
        "prompts",
        "add",
        "customer-support",
        "v2.0.0",
        "--file",
        str(template),
        "--baseline",
        "quality=0.82",
        "--json",
        db_url=db_url,
    )
    assert json.loads(added.stdout)["baseline"] == {"quality": 0.82}
    assert run("prompts", "deploy", "customer-support", "v1.9.0", db_url=db_url).returncode == 0
    deployed = run(
        "prompts", "deploy", "customer-support", "v2.0.0", "--operator", "bob", db_url=db_url
    )
    assert "deploy v1.9.0 → v2.0.0" in deployed.stdout

    rolled = run("rollback", "customer-support", "--reason", "errors 8%", "--json", db_url=db_url)
    assert rolled.returncode == 0, rolled.stderr
    body = json.loads(rolled.stdout)
    assert (body["success"], body["from_version"], body["to_version"]) == (True, "v2.0.0", "v1.9.0")

    shown = run("prompts", "show", "customer-support", db_url=db_url).stdout
    assert "active v1.9.0" in shown
    assert "bad" in shown and "errors 8%" in shown
    history = json.loads(
        run("prompts", "history", "customer-support", "--json", db_url=db_url).stdout
    )
    assert [(e["kind"], e["trigger"]) for e in history] == [
        ("rollback", "cli"),
        ("deploy", "cli"),
        ("deploy", "cli"),
    ]
    assert history[1]["operator"] == "bob"
    listing = run("prompts", "list", db_url=db_url).stdout.splitlines()
    assert listing[0].split() == ["PROMPT", "ACTIVE", "SPLIT", "VERSIONS", "UPDATED"]
    assert listing[1].split()[:4] == ["customer-support", "v1.9.0", "-", "2"]

    split = run(
        "prompts", "split", "customer-support", "v1.9.0=95", "v2.0.0=5", "--force", db_url=db_url
    )
    assert split.returncode == 0, split.stderr
    assert "v1.9.0=95%, v2.0.0=5%" in split.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("rollback", "nope"), "error: no prompt named 'nope'"),
        (("rollback", "customer-support", "v9"), "recent versions: v2.0.0, v1.9.0"),
        (("rollback", "customer-support", "v2.0.0"), "already the active version"),
        (("prompts", "add", "customer-support", "v3"), "exactly one of --template or --file"),
        (
            ("prompts", "add", "customer-support", "v 3", "--template", "t"),
            "error: invalid version",
        ),
        (("prompts", "add", "c", "v3", "--template", "t", "--baseline", "q"), "is not KEY=NUMBER"),
        (("prompts", "split", "customer-support", "v1.9.0=50"), "sum to 100"),
        (("prompts", "split", "customer-support", "v1.9.0"), "is not VERSION=PERCENT"),
        (("prompts", "history", "customer-support", "--limit", "0"), "Invalid value"),
        (("rollback",), "Missing argument 'PROMPT'"),
    ],
)
def test_errors_are_one_line_exit_2_and_change_nothing(
    db_url: str,
    engine: Engine,
    args: tuple[str, ...],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # In-process through the same entry point as the console script, to keep the matrix fast.
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    before = _history(engine)
    monkeypatch.setenv("DATABASE_URL", db_url)
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert _history(engine) == before


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL: must start with sqlite:// or postgresql://"),
        ({"ROLLBACK_API_TOKEN": "changeme"}, "ROLLBACK_API_TOKEN: looks like a placeholder"),
        ({"ROLLBACK_API_TOKEN": "short"}, "ROLLBACK_API_TOKEN: must be at least 16 characters"),
        ({"PORT": "99999"}, "PORT: Input should be less than or equal to 65535"),
        ({"ROLLBACK_API_TOKENS": "ci"}, "ROLLBACK_API_TOKENS: each entry must be name=token"),
        (
            {"SLACK_BOT_TOKEN": "xoxb-0123456789abcdef"},
            "SLACK_SIGNING_SECRET is required with SLACK_BOT_TOKEN",
        ),
        ({"SLACK_BOT_TOKEN": "abc-0123456789abcdef"}, "SLACK_BOT_TOKEN: must start with xoxb-"),
        ({"SLACK_SIGNING_SECRET": "changeme"}, "SLACK_SIGNING_SECRET: looks like a placeholder"),
        ({"SLACK_ONCALL_USERS": "alice"}, "SLACK_ONCALL_USERS: 'alice' is not a Slack user ID"),
        ({"ROLLBACK_API_TOKENS": "ci=abc"}, "ROLLBACK_API_TOKENS: token 'ci' must be at least 16"),
    ],
)
def test_bad_settings_stop_with_one_line(tmp_path: Path, env: dict[str, str], message: str) -> None:
    db = f"sqlite:///{tmp_path}/x.db"
    result = run("serve", db_url=env.pop("DATABASE_URL", db), env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {message}"] or message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_database_down_is_one_line() -> None:
    result = run("prompts", "list", db_url="postgresql://postgres@127.0.0.1:1/none")
    assert result.returncode == 2
    assert result.stderr.startswith("error: database unavailable")
    assert len(result.stderr.strip().splitlines()) == 1


def test_token_new_prints_a_usable_token(tmp_path: Path) -> None:
    token = run("token", "new", db_url="sqlite://").stdout.strip()
    assert len(token) >= 40
    ok = run(
        "prompts", "list", db_url=f"sqlite:///{tmp_path}/t.db", env={"ROLLBACK_API_TOKEN": token}
    )
    assert ok.returncode == 0
