"""`rollouts list|show|finish|abort`: staged moves from the command line."""

from __future__ import annotations

import click
from sqlmodel import col, select

from bot.cli.context import CliState, emit_json, emit_table, json_option, pass_state
from bot.cli.registry_cmds import _actor, operator_option
from bot.db import read_session, write_session
from bot.incidents import lifecycle
from bot.models import ACTIVE_ROLLOUT, Rollout, RolloutPublic, utcnow
from bot.rollouts import stages as rollouts


def _public(rollout: Rollout) -> RolloutPublic:
    return RolloutPublic.model_validate(rollout, from_attributes=True)


@click.group("rollouts")
def rollouts_group() -> None:
    """Gradual rollbacks and canaries: list, show, finish now, abort."""


@rollouts_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Ended ones too (newest 50).")
@json_option
@pass_state
def list_rollouts(state: CliState, show_all: bool, as_json: bool) -> None:
    """The running and paused rollouts (with --all, the newest 50 of any status)."""
    query = select(Rollout).order_by(col(Rollout.id).desc()).limit(50)
    if not show_all:
        query = query.where(col(Rollout.status).in_(list(ACTIVE_ROLLOUT)))
    with read_session(state.engine()) as session:
        found = [_public(r) for r in session.exec(query)]
        described = {r.id: rollouts.describe(r) for r in session.exec(query)}
    if as_json:
        emit_json(found)
        return
    emit_table(
        ["id", "status", "rollout", "note"],
        [(r.id, r.status.value, described[r.id], r.note or "") for r in found],
    )


@rollouts_group.command("show")
@click.argument("rollout_id", type=int)
@json_option
@pass_state
def show_rollout(state: CliState, rollout_id: int, as_json: bool) -> None:
    """One rollout: where it stands and why."""
    with read_session(state.engine()) as session:
        rollout = rollouts.get_rollout(session, rollout_id)
        public, text = _public(rollout), rollouts.describe(rollout)
    if as_json:
        emit_json(public)
        return
    click.echo(f"#{public.id} {text} · {public.status.value}")
    if public.note:
        click.echo(f"note: {public.note}")


@rollouts_group.command("finish")
@click.argument("rollout_id", type=int)
@operator_option
@json_option
@pass_state
def finish_rollout(state: CliState, rollout_id: int, operator: str, as_json: bool) -> None:
    """Move all traffic to the target now (a gradual rollback ends as a verified rollback)."""
    _end(state, rollout_id, operator, as_json, finishing=True)


@rollouts_group.command("abort")
@click.argument("rollout_id", type=int)
@operator_option
@json_option
@pass_state
def abort_rollout(state: CliState, rollout_id: int, operator: str, as_json: bool) -> None:
    """Stop: a canary goes back to its stable version; a gradual rollback stays where it is."""
    _end(state, rollout_id, operator, as_json, finishing=False)


def _end(
    state: CliState, rollout_id: int, operator: str, as_json: bool, *, finishing: bool
) -> None:
    verb = "finished" if finishing else "aborted"
    with write_session(state.engine()) as session:
        rollout = lifecycle.end_rollout(
            session,
            rollout_id=rollout_id,
            finishing=finishing,
            actor=_actor(operator),
            notifier=state.notifier(),
            now=utcnow(),
        )
        public, text = _public(rollout), rollouts.describe(rollout)
    if as_json:
        emit_json(public)
    else:
        click.echo(f"#{public.id} {verb}: {text}")
