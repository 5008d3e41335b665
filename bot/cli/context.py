"""The root command group and what its subcommands share: settings, engine, output format."""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from bot import __version__

if TYPE_CHECKING:
    from pydantic import BaseModel
    from sqlalchemy import Engine

    from bot.config import Settings
    from bot.notify import Notifier

# What a subcommand needs is imported where it is used, so `rollback-bot --version`, `token new`
# or a read-only command loads only its own part (see tests/test_cli_imports.py).

log = logging.getLogger(__name__)


@dataclass
class CliState:
    """Lazily built resources for one CLI invocation."""

    overrides: dict[str, Any] = field(default_factory=dict)
    _settings: Settings | None = None
    _engine: Engine | None = None
    _notifier: Notifier | None = None

    @property
    def settings(self) -> Settings:
        """The settings (a bad value stops here with one line naming the variable)."""
        if self._settings is None:
            from bot.config import load_settings

            self._settings = load_settings(**self.overrides)
        return self._settings

    def notifier(self) -> Notifier:
        """Where a change made here is told: the Slack outbox when Slack is configured (the
        running server delivers it), else the log; built once per invocation."""
        if self._notifier is None:
            self._notifier = self._build_notifier()
        return self._notifier

    def _build_notifier(self) -> Notifier:
        from bot.notify import LogNotifier

        settings = self.settings
        if settings.slack_bot_token is None:
            return LogNotifier()
        from bot.policy import PolicyError, load_policies
        from bot.slack.app import SlackService

        try:
            policies = load_policies(settings.rollback_policy_dir)
        except PolicyError as exc:
            log.warning("incident cards not updated: %s", exc.message.splitlines()[0])
            return LogNotifier()
        return SlackService(settings=settings, engine=self.engine(), policies=policies).notifier

    def engine(self, *, migrate: bool = True) -> Engine:
        """The database engine; SQLite is brought up to date, PostgreSQL must already be."""
        if self._engine is None:
            from bot.db import make_engine
            from bot.migrate import ensure_current

            s = self.settings
            self._engine = make_engine(
                s.database_url, pool_size=s.db_pool_size, max_overflow=s.db_max_overflow
            )
            if migrate:
                ensure_current(self._engine, auto_upgrade=self._engine.dialect.name == "sqlite")
        return self._engine


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when one is run or listed (click's LazyGroup
    pattern): `lazy` maps a command name to "module:attribute". `--help` still lists every
    command with its help text (it loads them all to do so)."""

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


COMMANDS = {
    "serve": "bot.cli.ops:serve",
    "db": "bot.cli.ops:db",
    "token": "bot.cli.ops:token",
    "init": "bot.cli.ops:init",
    "demo": "bot.cli.ops:demo",
    "policy": "bot.cli.detection_cmds:policy",
    "check": "bot.cli.detection_cmds:check",
    "incidents": "bot.cli.detection_cmds:incidents",
    "prompts": "bot.cli.registry_cmds:prompts",
    "rollback": "bot.cli.registry_cmds:rollback",
    "rollouts": "bot.cli.rollout_cmds:rollouts_group",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rollback-bot")
@click.option("--database-url", envvar="DATABASE_URL", default=None, help="Overrides DATABASE_URL.")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None) -> None:
    """Register prompt versions, deploy them, and roll bad ones back."""
    overrides = {"database_url": database_url} if database_url else {}
    ctx.obj = CliState(overrides=overrides)


pass_state = click.make_pass_decorator(CliState)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def emit_json(data: BaseModel | Sequence[BaseModel]) -> None:
    """Print a model or list of models as JSON."""
    from pydantic import BaseModel

    if isinstance(data, BaseModel):
        click.echo(data.model_dump_json(indent=2))
    else:
        click.echo(json.dumps([item.model_dump(mode="json") for item in data], indent=2))


def fmt(value: object) -> str:
    """Render one table cell."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}%" for k, v in value.items())
    return str(getattr(value, "value", value))


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows as an aligned plain-text table."""
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
