"""The `rollback-bot` command line: errors become one line on stderr and exit code 2."""

from __future__ import annotations

import sys

import click
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from bot.cli import detection_cmds, ops, registry_cmds, rollout_cmds
from bot.cli.context import cli
from bot.db import describe, is_transient
from bot.errors import BotError

cli.add_command(ops.serve)
cli.add_command(ops.db)
cli.add_command(ops.token)
cli.add_command(ops.init)
cli.add_command(ops.demo)
cli.add_command(detection_cmds.policy)
cli.add_command(detection_cmds.check)
cli.add_command(detection_cmds.incidents)
cli.add_command(registry_cmds.prompts)
cli.add_command(registry_cmds.rollback)
cli.add_command(rollout_cmds.rollouts_group)

USAGE_EXIT = 2


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    try:
        cli.main(args=argv, prog_name="rollback-bot", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(USAGE_EXIT)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except BotError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(USAGE_EXIT)
    except DBAPIError as exc:
        # Down, read-only or busy (transient), or not a database at all: one line either way.
        said = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else repr(exc)
        text = describe(exc) if is_transient(exc) else f"the database refused it: {said}"
        if "file is not a database" in str(exc.orig):
            text = "DATABASE_URL: that file is not a SQLite database (point it at another path)"
        click.echo(f"error: {text}", err=True)
        sys.exit(USAGE_EXIT)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "input"
        click.echo(f"error: invalid {field}: {first['msg']}", err=True)
        sys.exit(USAGE_EXIT)
