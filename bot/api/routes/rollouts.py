"""Gradual rollbacks and canary rollouts over HTTP."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from sqlalchemy import Engine

from bot.api.deps import ActorDep, EngineDep
from bot.api.routes.prompts import NamePath
from bot.db import read_session, write_session
from bot.incidents import lifecycle
from bot.models import Rollout, RolloutPublic, RolloutRequest, utcnow
from bot.policy import PolicySet, load_policies
from bot.registry.changes import Actor
from bot.rollouts import stages as rollouts

router = APIRouter(prefix="/api", tags=["rollouts"])


def policies_of(request: Request) -> PolicySet:
    policies: PolicySet | None = request.app.state.policies
    if policies is None:
        policies = load_policies(request.app.state.settings.rollback_policy_dir)
        request.app.state.policies = policies
    return policies


def _public(rollout: Rollout) -> RolloutPublic:
    return RolloutPublic.model_validate(rollout, from_attributes=True)


@router.post("/prompts/{name}/rollouts", status_code=201, summary="Start a staged move")
def start_rollout(
    name: NamePath, body: RolloutRequest, request: Request, engine: EngineDep, actor: ActorDep
) -> RolloutPublic:
    """Gradual rollback (bad version 75/50/25/0%) or canary (1/5/25/100%); the first stage now."""
    settings = policies_of(request).for_prompt(name).settings
    stage = (
        timedelta(seconds=body.stage_seconds)
        if body.stage_seconds
        else settings.rollout_stage(body.kind.value)
    )
    with write_session(engine) as session:
        rollout = lifecycle.start_rollout(
            session,
            prompt=name,
            kind=body.kind,
            version=body.version,
            actor=actor,
            stage_seconds=stage.total_seconds(),
            notifier=request.app.state.notifier,
            now=utcnow(),
            reason=body.reason,
        )
        public = _public(rollout)
    return public


@router.get("/rollouts/{rollout_id}", summary="One rollout")
def get_rollout(rollout_id: int, engine: EngineDep, _actor: ActorDep) -> RolloutPublic:
    """Where the rollout stands."""
    with read_session(engine) as session:
        return _public(rollouts.get_rollout(session, rollout_id))


@router.post("/rollouts/{rollout_id}/finish", summary="Move all traffic to the target now")
def finish_rollout(
    rollout_id: int, request: Request, engine: EngineDep, actor: ActorDep
) -> RolloutPublic:
    """A gradual rollback ends as a rollback (verified); a canary is promoted."""
    return _end(rollout_id, request, engine, actor, finishing=True)


@router.post("/rollouts/{rollout_id}/abort", summary="Stop the rollout")
def abort_rollout(
    rollout_id: int, request: Request, engine: EngineDep, actor: ActorDep
) -> RolloutPublic:
    """A canary goes back to the stable version; a gradual rollback stops where it is."""
    return _end(rollout_id, request, engine, actor, finishing=False)


def _end(
    rollout_id: int, request: Request, engine: Engine, actor: Actor, *, finishing: bool
) -> RolloutPublic:
    with write_session(engine) as session:
        rollout = lifecycle.end_rollout(
            session,
            rollout_id=rollout_id,
            finishing=finishing,
            actor=actor,
            notifier=request.app.state.notifier,
            now=utcnow(),
        )
        public = _public(rollout)
    return public
