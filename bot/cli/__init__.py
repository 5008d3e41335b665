"""The `rollback-bot` command line: errors become one line on stderr and exit code 2.

Subcommands are loaded lazily (bot/cli/context.py's COMMANDS): `prompts list` imports the
registry, not the web server, scheduler, Slack app or Alembic.
"""

from __future__ import annotations

import sys

import click

from bot.cli.context import cli
from bot.errors import BotError

__all__ = ["cli", "main"]

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
    except Exception as exc:
        text = _one_line(exc)
        if text is None:
            raise
        click.echo(f"error: {text}", err=True)
        sys.exit(USAGE_EXIT)


def _one_line(exc: Exception) -> str | None:
    """The one line for a database or validation error, None for anything else (a bug: its
    traceback is shown). SQLAlchemy and pydantic are consulted only if the command loaded them
    (an exception of theirs cannot exist otherwise), so a command that needs neither never
    imports them."""
    if "sqlalchemy.exc" in sys.modules:
        from sqlalchemy.exc import DBAPIError

        if isinstance(exc, DBAPIError):
            from bot.db import describe, is_transient

            # Down, read-only or busy (transient), or not a database at all: one line either way.
            said = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else repr(exc)
            text = describe(exc) if is_transient(exc) else f"the database refused it: {said}"
            if "file is not a database" in str(exc.orig):
                text = "DATABASE_URL: that file is not a SQLite database (point it at another path)"
            return text
    if "pydantic" in sys.modules:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "input"
            return f"invalid {field}: {first['msg']}"
    return None
