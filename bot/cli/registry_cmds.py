"""`prompts ...` and `rollback`: the registry from the command line, straight on DATABASE_URL."""

from __future__ import annotations

import getpass
import sys
from datetime import timedelta

import click

from bot import registry
from bot.cli.context import CliState, emit_json, emit_table, json_option, pass_state
from bot.db import read_session, write_session
from bot.errors import InvalidRequest
from bot.models import (
    TEMPLATE_MAX,
    ChangeResult,
    DeployRequest,
    Health,
    HealthRequest,
    RollbackRequest,
    RolloutKind,
    RolloutPublic,
    SplitRequest,
    Trigger,
    VersionCreate,
    utcnow,
)
from bot.registry.changes import Actor

# The lifecycle (incidents, notices, policies) is imported by the commands that change
# routing, so the read-only ones (`list`, `show`, `history`) load only the registry.


def _default_operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


operator_option = click.option(
    "--operator", default=_default_operator, show_default="your login", help="Recorded as who."
)


def _actor(operator: str) -> Actor:
    return Actor(operator=operator, trigger=Trigger.CLI)


def _emit_change(result: ChangeResult, as_json: bool) -> None:
    if as_json:
        emit_json(result)
        return
    target = result.to_version if not result.split else registry_split_text(result.split)
    click.echo(
        f"{result.prompt}: {result.kind.value} {result.from_version or '-'} → {target} "
        f"(revision {result.revision}, audit #{result.audit_id})"
    )


def registry_split_text(split: dict[str, int]) -> str:
    """A split as `v1=90%, v2=10%`."""
    return ", ".join(f"{k}={v}%" for k, v in split.items())


@click.group()
def prompts() -> None:
    """Register, list, inspect and deploy prompt versions."""


@prompts.command("add")
@click.argument("name")
@click.argument("version")
@click.option("--template", "template_text", help="The template text.")
@click.option(
    "--file",
    "template_file",
    type=click.Path(allow_dash=True),
    help="Read the template ('-': stdin).",
)
@click.option(
    "--baseline", multiple=True, metavar="KEY=NUMBER", help="Baseline figure; repeatable."
)
@operator_option
@json_option
@pass_state
def add(
    state: CliState,
    name: str,
    version: str,
    template_text: str | None,
    template_file: str | None,
    baseline: tuple[str, ...],
    operator: str,
    as_json: bool,
) -> None:
    """Register VERSION of prompt NAME (creating NAME if new)."""
    if (template_text is None) == (template_file is None):
        raise click.UsageError("give the template with exactly one of --template or --file")
    text = template_text if template_text is not None else _read_template(template_file or "-")
    figures = _figures(baseline)
    body = VersionCreate(
        version=version, template=text, baseline=figures or None, created_by=operator
    )
    with write_session(state.engine()) as session:
        created = registry.create_version(
            session=session,
            prompt=name,
            version=body.version,
            template=body.template,
            created_by=operator,
            now=utcnow(),
            baseline=body.baseline.figures() if body.baseline else None,
        )
    if as_json:
        emit_json(created)
    else:
        click.echo(f"{name}: registered {created.version} (not serving until deployed)")


def _read_template(path: str) -> str:
    """The template file's text: UTF-8, readable, at most TEMPLATE_MAX characters' worth."""
    limit = 4 * TEMPLATE_MAX + 1  # bytes: enough for the longest template in UTF-8
    try:
        with click.open_file(path, "rb") as handle:
            data: bytes = handle.read(limit)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path}: {exc.strerror or exc}", param_hint="--file"
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.BadParameter(
            f"{path} is not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x}); save it "
            "as UTF-8",
            param_hint="--file",
        ) from None


def _figures(items: tuple[str, ...]) -> dict[str, float]:
    figures: dict[str, float] = {}
    for item in items:
        key, sep, number = item.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError(item)
            figures[key.strip()] = float(number)
        except ValueError:
            raise click.BadParameter(
                f"{item!r} is not KEY=NUMBER", param_hint="--baseline"
            ) from None
    return figures


@prompts.command("list")
@json_option
@pass_state
def list_(state: CliState, as_json: bool) -> None:
    """List prompts with their active version."""
    with read_session(state.engine()) as session:
        items = registry.list_prompts(session=session)
    if as_json:
        emit_json(items)
        return
    emit_table(
        ["prompt", "active", "split", "versions", "updated"],
        [(p.name, p.active_version, p.split, p.version_count, p.updated_at) for p in items],
    )


@prompts.command("show")
@click.argument("name")
@json_option
@pass_state
def show(state: CliState, name: str, as_json: bool) -> None:
    """Show a prompt's routing and versions."""
    with read_session(state.engine()) as session:
        detail = registry.prompt_detail(session=session, name=name)
    if as_json:
        emit_json(detail)
        return
    click.echo(
        f"{detail.name}: active {detail.active_version or '-'}"
        + (f", split {registry_split_text(detail.split)}" if detail.split else "")
        + f" (revision {detail.revision})"
    )
    emit_table(
        ["version", "health", "reason", "created by", "created", "last active"],
        [
            (v.version, v.health, v.health_reason, v.created_by, v.created_at, v.last_active_at)
            for v in detail.versions
        ],
    )


@prompts.command("deploy")
@click.argument("name")
@click.argument("version")
@click.option("--reason", default="", help="Why; kept in the audit log.")
@click.option("--force", is_flag=True, help="Deploy even if the version is marked bad.")
@click.option("--canary", is_flag=True, help="Roll out in stages: 1% → 5% → 25% → 100%.")
@operator_option
@json_option
@pass_state
def deploy(
    state: CliState,
    name: str,
    version: str,
    reason: str,
    force: bool,
    canary: bool,
    operator: str,
    as_json: bool,
) -> None:
    """Make VERSION serve all of NAME's traffic (or start a canary of it)."""
    if canary:
        _start_rollout(state, RolloutKind.CANARY, name, version, operator, reason, as_json)
        return
    from bot.incidents import lifecycle

    body = DeployRequest(version=version, reason=reason, force=force)
    with write_session(state.engine()) as session:
        result = lifecycle.deploy(
            session,
            prompt=name,
            version=body.version,
            actor=_actor(operator),
            now=utcnow(),
            notifier=state.notifier(),
            reason=body.reason,
            force=body.force,
        )
    _emit_change(result, as_json)


@prompts.command("split")
@click.argument("name")
@click.argument("shares", nargs=-1, required=True, metavar="VERSION=PERCENT...")
@click.option("--reason", default="", help="Why; kept in the audit log.")
@click.option("--force", is_flag=True, help="Allow versions marked bad.")
@operator_option
@json_option
@pass_state
def split(
    state: CliState,
    name: str,
    shares: tuple[str, ...],
    reason: str,
    force: bool,
    operator: str,
    as_json: bool,
) -> None:
    """Share NAME's traffic, e.g. `split customer-support v1.9.0=90 v2.0.0=10`."""
    parsed: dict[str, int] = {}
    for share in shares:
        label, sep, pct = share.partition("=")
        if not sep or not pct.strip().isdigit():
            raise InvalidRequest(f"{share!r} is not VERSION=PERCENT")
        if label.strip() in parsed:
            raise InvalidRequest(f"{label.strip()} given twice; name each version once")
        parsed[label.strip()] = int(pct)
    from bot.incidents import lifecycle

    body = SplitRequest(split=parsed, reason=reason, force=force)
    with write_session(state.engine()) as session:
        result = lifecycle.split(
            session,
            prompt=name,
            shares=body.split,
            actor=_actor(operator),
            now=utcnow(),
            notifier=state.notifier(),
            reason=body.reason,
            force=body.force,
        )
    _emit_change(result, as_json)


@prompts.command("mark")
@click.argument("name")
@click.argument("version")
@click.argument("health", type=click.Choice([h.value for h in Health]))
@click.option("--reason", default="", help="Why; kept in the audit log.")
@operator_option
@json_option
@pass_state
def mark(
    state: CliState, name: str, version: str, health: str, reason: str, operator: str, as_json: bool
) -> None:
    """Mark VERSION of NAME good, bad or unknown."""
    body = HealthRequest(health=Health(health), reason=reason)
    with write_session(state.engine()) as session:
        result = registry.mark_health(
            session=session,
            prompt=name,
            version=version,
            health=body.health,
            actor=_actor(operator),
            now=utcnow(),
            reason=body.reason,
        )
    if as_json:
        emit_json(result)
    else:
        click.echo(f"{name}: {version} marked {result.health.value}")


@prompts.command("history")
@click.argument("name")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500))
@json_option
@pass_state
def history(state: CliState, name: str, limit: int, as_json: bool) -> None:
    """Show NAME's audit log, newest first."""
    with read_session(state.engine()) as session:
        entries = registry.history(session=session, name=name, limit=limit)
    if as_json:
        emit_json(entries)
        return
    emit_table(
        ["#", "when", "kind", "from", "to", "operator", "trigger", "reason"],
        [
            (
                e.id,
                e.timestamp,
                e.kind,
                e.from_version,
                e.to_version if not e.split else e.split,
                e.operator,
                e.trigger if not e.rule else f"{e.trigger.value}:{e.rule}",
                e.reason,
            )
            for e in entries
        ],
    )


@click.command("rollback")
@click.argument("prompt")
@click.argument("version", required=False)
@click.option("--reason", default="", help="Why; kept in the audit log.")
@click.option("--force", is_flag=True, help="Roll back even to a version marked bad.")
@click.option("--expected", default=None, help="Refuse unless this version is the one serving.")
@click.option("--gradual", is_flag=True, help="In stages: the bad version 75% → 50% → 25% → 0%.")
@operator_option
@json_option
@pass_state
def rollback(
    state: CliState,
    prompt: str,
    version: str | None,
    reason: str,
    force: bool,
    expected: str | None,
    gradual: bool,
    operator: str,
    as_json: bool,
) -> None:
    """Roll PROMPT back to VERSION, or to its previous known-good version."""
    if gradual:
        _start_rollout(
            state, RolloutKind.GRADUAL_ROLLBACK, prompt, version, operator, reason, as_json
        )
        return
    from bot.incidents import lifecycle

    body = RollbackRequest(
        prompt=prompt, target_version=version, reason=reason, force=force, expected_version=expected
    )
    dedup = timedelta(seconds=state.settings.rollback_dedup_seconds)
    with write_session(state.engine()) as session:
        result = lifecycle.rollback(
            session,
            prompt=body.prompt,
            target=body.target_version,
            actor=_actor(operator),
            now=utcnow(),
            notifier=state.notifier(),
            reason=body.reason,
            force=body.force,
            expected_version=body.expected_version,
            dedup_window=dedup,
        )
    _emit_change(result, as_json)
    sys.stdout.flush()


def _start_rollout(
    state: CliState,
    kind: RolloutKind,
    prompt: str,
    version: str | None,
    operator: str,
    reason: str,
    as_json: bool,
) -> None:
    """Start a staged move; a running server's scheduler drives its stages."""
    from bot.incidents import lifecycle
    from bot.policy import load_policies
    from bot.rollouts import stages as rollouts

    stage = load_policies(state.settings.rollback_policy_dir).for_prompt(prompt).settings
    seconds = stage.rollout_stage(kind.value).total_seconds()
    with write_session(state.engine()) as session:
        rollout = lifecycle.start_rollout(
            session,
            prompt=prompt,
            kind=kind,
            version=version,
            actor=_actor(operator),
            stage_seconds=seconds,
            notifier=state.notifier(),
            now=utcnow(),
            reason=reason,
        )
        public = RolloutPublic.model_validate(rollout, from_attributes=True)
    if as_json:
        emit_json(public)
    else:
        click.echo(
            f"started rollout #{public.id}: {rollouts.describe(rollout)}; "
            f"{int(seconds // 60)} min a stage (the server's scheduler moves it on)"
        )
