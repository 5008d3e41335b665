"""The CLI loads only what a command needs (issue 17): a read-only command imports neither the
web stack, the scheduler, Slack, the charts nor Alembic; the schema check that replaced
Alembic's on that path agrees with Alembic. Nothing here is timed (benchmarks/cli_startup.py
measures the start-up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from sqlalchemy import Engine, text

from bot.cli.context import COMMANDS, cli
from bot.migrate import alembic_config, head_revision, shipped_revisions
from tests.conftest import make_prompt

ROOT = Path(__file__).resolve().parent.parent

# Runs the CLI in-process as the console script does, then writes the exit code and every
# module the command left in sys.modules to the file named by its first argument.
PROBE = """
import json, sys
from bot.cli import main
out, args = sys.argv[1], sys.argv[2:]
try:
    main(args)
    code = 0
except SystemExit as exc:
    code = exc.code
with open(out, "w") as handle:
    json.dump({"code": code, "modules": sorted(sys.modules)}, handle)
"""

HEAVY = ("apscheduler", "httpx", "alembic", "fastapi", "uvicorn", "slack_bolt", "matplotlib")
ALSO_NOT_FOR_THE_REGISTRY = ("starlette", "slack_sdk", "prometheus_client", "jinja2", "yaml")


def loaded_by(tmp_path: Path, *args: str, db_url: str | None = None) -> tuple[int, set[str]]:
    """(exit code, top-level packages imported) of `rollback-bot ARGS` in a fresh process;
    its stderr is left in tmp_path/stderr."""
    out = tmp_path / "modules.json"
    env = {**os.environ, "ROLLBACK_POLICY_DIR": str(ROOT / "policies")}
    if db_url is not None:
        env["DATABASE_URL"] = db_url
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert out.exists(), done.stderr
    (tmp_path / "stderr").write_text(done.stderr)
    report = json.loads(out.read_text())
    return report["code"], {name.partition(".")[0] for name in report["modules"]}


def test_prompts_list_imports_only_the_registry(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    make_prompt(engine)
    code, packages = loaded_by(tmp_path, "prompts", "list", db_url=db_url)
    assert code == 0
    assert "sqlalchemy" in packages and "bot" in packages  # the probe did run the command
    assert packages.isdisjoint(HEAVY + ALSO_NOT_FOR_THE_REGISTRY), sorted(
        packages & {*HEAVY, *ALSO_NOT_FOR_THE_REGISTRY}
    )


@pytest.mark.parametrize(
    "args",
    [
        ("prompts", "show", "customer-support"),
        ("prompts", "history", "customer-support"),
        ("incidents", "list"),
        ("rollouts", "list"),
        ("policy", "check"),
        ("check", "--once", "--dry-run"),
        ("db", "current"),
    ],
    ids=" ".join,
)
def test_other_read_only_commands_leave_the_heavy_packages_alone(
    engine: Engine, db_url: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    make_prompt(engine, deploy=("v1.9.0",))
    code, packages = loaded_by(tmp_path, *args, db_url=db_url)
    assert code == 0
    assert packages.isdisjoint(HEAVY), sorted(packages & set(HEAVY))


@pytest.mark.parametrize("args", [("--version",), ("token", "new"), ("--help",)], ids=" ".join)
def test_commands_without_a_database_load_no_database(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    code, packages = loaded_by(tmp_path, *args)
    assert code == 0
    assert packages.isdisjoint({"sqlalchemy", "sqlmodel", "pydantic_settings", *HEAVY}) or (
        args == ("--help",)  # --help loads every command to print its help text
    )


def test_help_lists_every_command_with_its_help_text() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("Commands:", 1)[1]
    context = click.Context(cli)
    assert cli.list_commands(context) == sorted(COMMANDS)
    for name in COMMANDS:
        command = cli.get_command(context, name)
        assert command is not None and command.name == name
        summary = command.get_short_help_str(limit=1000)
        assert summary, f"{name} has no help text"
        shown = [line.split(None, 1) for line in listed.splitlines() if line.strip()]
        texts = [parts[1].removesuffix("...") for parts in shown if parts[0] == name]
        assert texts and summary.startswith(texts[0]), f"{name}: {summary!r} not in {listed}"


def test_the_cheap_schema_check_agrees_with_alembic() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config())
    assert head_revision() == scripts.get_current_head()
    assert shipped_revisions() == {
        script.revision: script.down_revision for script in scripts.walk_revisions()
    }


def test_a_database_from_a_later_release_is_refused_in_one_line(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0042_from_the_future'"))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bot", "prompts", "list"],
            capture_output=True,
            text=True,
            env={**os.environ, "DATABASE_URL": db_url},
            cwd=ROOT,
            timeout=60,
        )
    finally:
        with engine.begin() as conn:  # leave a shared test schema as it was
            conn.execute(
                text("UPDATE alembic_version SET version_num = :head"), {"head": head_revision()}
            )
    assert done.returncode == 2
    assert done.stderr.startswith("error: the database schema is at 0042_from_the_future, newer")
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_database_behind_the_release_is_upgraded_or_refused(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    """SQLite is brought up to date by the first command; PostgreSQL must be upgraded first."""
    from alembic import command

    previous = shipped_revisions()[head_revision()]
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, previous or "base")
    try:
        code, packages = loaded_by(tmp_path, "prompts", "list", db_url=db_url)
    finally:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    if engine.dialect.name == "sqlite":
        assert code == 0
        assert "alembic" in packages  # the upgrade, and only then
    else:
        assert code == 2
        assert (tmp_path / "stderr").read_text() == (
            "error: the database schema is not up to date; run `rollback-bot db upgrade` first\n"
        )
        assert "alembic" not in packages
