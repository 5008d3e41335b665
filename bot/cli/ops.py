"""Operating commands: `serve`, `db upgrade|current`, `token new`."""

from __future__ import annotations

import logging
import secrets
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bot import logs
from bot.cli.context import CliState, pass_state
from bot.errors import BotError, ConfigError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from bot.config import Settings
    from bot.policy import PolicySet

log = logging.getLogger("bot")


@click.command()
@click.option("--host", default=None, help="Interface to bind (default HOST or 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Default: PORT or 8000.")
@pass_state
def serve(state: CliState, host: str | None, port: int | None) -> None:
    """Run the HTTP API (SQLite databases are migrated on start)."""
    # Imported here so the registry commands start without loading the web stack.
    import uvicorn

    from bot.api.app import create_app
    from bot.notify import LogNotifier
    from bot.policy import load_policies
    from bot.policy.reload import PolicyReloader

    settings = state.settings
    logs.configure(settings.log_level)
    engine = state.engine()
    if not settings.api_tokens():
        log.warning(
            "ROLLBACK_API_TOKEN is not set: /api answers 503 until it is "
            "(generate one with `rollback-bot token new`)"
        )
    policies = load_policies(settings.rollback_policy_dir)  # an invalid policy stops start-up
    _warn_unknown_prompts(policies, engine)
    refusal = _webhooks_need_a_secret(policies, settings)
    if refusal is not None:
        raise ConfigError(refusal)
    slack = None
    if settings.slack_bot_token is None:
        log.warning("SLACK_BOT_TOKEN is not set: notices go to the log only")
    else:
        from bot.slack.app import start_slack  # Slack Bolt is loaded only when Slack is set up

        slack = start_slack(settings, engine, policies)
    notifier = slack.notifier if slack is not None else LogNotifier()
    reloader = PolicyReloader(
        directory=settings.rollback_policy_dir,
        policies=policies,
        notifier=notifier,
        accept=lambda new: _webhooks_need_a_secret(new, settings),
        applied=lambda new: _warn_unknown_prompts(new, engine),
        poll_seconds=settings.policy_poll_seconds,
    )
    reloader.start()
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reloader.request())
    checker = None
    if settings.checker_enabled:
        from bot.runtime.scheduler import CheckerService

        checker = CheckerService(
            engine=engine, settings=settings, policies=policies, notifier=notifier
        )
    app = create_app(settings, engine, checker=checker, slack=slack, policies=policies)
    uvicorn.run(
        app,
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # keep the bot's own handlers (JSON lines off a terminal)
        # Open /api/stream connections would otherwise hold a shutdown until they end.
        timeout_graceful_shutdown=3,
        proxy_headers=True,
    )


def _warn_unknown_prompts(policies: PolicySet, engine: Engine) -> None:
    """Log overrides for prompts the registry does not have (likely typos); never stops."""
    from bot.policy.known import unknown_prompt_warnings

    try:
        for warning in unknown_prompt_warnings(policies, engine):
            log.warning("policy: %s", warning)
    except BotError as exc:
        log.warning("policy overrides not compared with the registry: %s", exc.message)


def _webhooks_need_a_secret(policies: PolicySet, settings: Settings) -> str | None:
    if policies.lists_webhooks() and settings.rollback_webhook_secret is None:
        return (
            "ROLLBACK_WEBHOOK_SECRET: required because a policy lists webhooks "
            "(generate one with `rollback-bot token new`)"
        )
    return None


@click.command()
def demo() -> None:
    """Run the whole loop locally in under a minute: no Slack workspace, nothing to install."""
    logs.configure("ERROR", json_lines=False)
    from bot.demo.run import run_demo

    if not run_demo(click.echo):
        raise click.exceptions.Exit(1)


@click.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@pass_state
def db_upgrade(state: CliState) -> None:
    """Bring the database schema up to this release (safe to run twice)."""
    from bot.migrate import current_revision, upgrade

    engine = state.engine(migrate=False)
    before = current_revision(engine)
    upgrade(engine)
    after = current_revision(engine)
    if before == after:
        click.echo(f"database already at {after}")
    else:
        click.echo(f"database upgraded {before or 'empty'} → {after}")


@db.command("current")
@pass_state
def db_current(state: CliState) -> None:
    """Print the schema revision of the database and of this release."""
    from bot.migrate import current_revision, head_revision

    revision = current_revision(state.engine(migrate=False))
    click.echo(f"database: {revision or 'empty'}; this release: {head_revision()}")


@click.command()
@click.option("--env-file", default=".env", show_default=True, type=click.Path(dir_okay=False))
def init(env_file: str) -> None:
    """Create ENV_FILE with a fresh ROLLBACK_API_TOKEN unless it already sets one."""
    from pydantic import SecretStr

    from bot.config import check_secret

    path = Path(env_file)
    existing = path.read_text() if path.exists() else ""
    current = [
        line.partition("=")[2].strip().strip("'\"")
        for line in existing.splitlines()
        if line.startswith("ROLLBACK_API_TOKEN=")
    ]
    if current:
        click.echo(f"{env_file} already sets ROLLBACK_API_TOKEN; leaving it as it is")
        try:
            check_secret(SecretStr(current[-1]))
        except ValueError as exc:
            click.echo(
                f"warning: that ROLLBACK_API_TOKEN {exc}: `serve` will refuse it. Replace it "
                "with the output of `rollback-bot token new`",
                err=True,
            )
        return
    prefix = "" if not existing or existing.endswith("\n") else "\n"
    with path.open("a") as handle:
        handle.write(f"{prefix}ROLLBACK_API_TOKEN={secrets.token_urlsafe(32)}\n")
    path.chmod(0o600)
    click.echo(
        f"wrote a new ROLLBACK_API_TOKEN to {env_file} (mode 600); use it as the API's bearer token"
    )


@click.group()
def token() -> None:
    """API token helpers."""


@token.command("new")
def token_new() -> None:
    """Print a new random API token for ROLLBACK_API_TOKEN."""
    click.echo(secrets.token_urlsafe(32))
