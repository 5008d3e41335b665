"""Prompts, versions, deploys, splits, history and resolution."""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy import Engine

from bot import registry
from bot.api.deps import ActorDep, EngineDep, NotifierDep
from bot.db import read_session, write_session
from bot.incidents import lifecycle
from bot.models import (
    PROMPT_NAME_MAX,
    PROMPT_NAME_PATTERN,
    VERSION_LABEL_MAX,
    VERSION_LABEL_PATTERN,
    AuditPublic,
    ChangeResult,
    DeployRequest,
    HealthRequest,
    PromptDetail,
    PromptSummary,
    Resolved,
    SplitRequest,
    VersionCreate,
    VersionPublic,
    utcnow,
)
from bot.registry.queries import HISTORY_MAX
from bot.splits import choose

router = APIRouter(prefix="/api/prompts", tags=["prompts"])

NamePath = Annotated[
    str, Path(min_length=1, max_length=PROMPT_NAME_MAX, pattern=PROMPT_NAME_PATTERN)
]
VersionPath = Annotated[
    str, Path(min_length=1, max_length=VERSION_LABEL_MAX, pattern=VERSION_LABEL_PATTERN)
]


@router.get("", summary="List prompts")
def list_prompts(engine: EngineDep, _actor: ActorDep) -> list[PromptSummary]:
    """Every prompt with its active version and split."""
    with read_session(engine) as session:
        return registry.list_prompts(session=session)


@router.get("/{name}", summary="One prompt: routing and versions")
def get_prompt(name: NamePath, engine: EngineDep, _actor: ActorDep) -> PromptDetail:
    """The prompt's active version, split and versions with their health marks."""
    with read_session(engine) as session:
        return registry.prompt_detail(session=session, name=name)


@router.post("/{name}/versions", status_code=201, summary="Register a version")
def create_version(
    name: NamePath, body: VersionCreate, engine: EngineDep, actor: ActorDep
) -> VersionPublic:
    """Create a version (and the prompt, if new); it serves nothing until deployed."""
    with write_session(engine) as session:
        return registry.create_version(
            session=session,
            prompt=name,
            version=body.version,
            template=body.template,
            created_by=body.created_by or actor.operator,
            now=utcnow(),
            baseline=body.baseline.figures() if body.baseline else None,
        )


@router.post("/{name}/deploy", summary="Make a version serve 100%")
def deploy(
    name: NamePath,
    body: DeployRequest,
    engine: EngineDep,
    actor: ActorDep,
    notifier: NotifierDep,
) -> ChangeResult:
    """Route all of the prompt's traffic to the version."""
    with write_session(engine) as session:
        result = lifecycle.deploy(
            session,
            prompt=name,
            version=body.version,
            actor=actor,
            now=utcnow(),
            notifier=notifier,
            reason=body.reason,
            force=body.force,
        )
    return result


@router.put("/{name}/split", summary="Share traffic across versions")
def set_split(
    name: NamePath,
    body: SplitRequest,
    engine: EngineDep,
    actor: ActorDep,
    notifier: NotifierDep,
) -> ChangeResult:
    """Set the traffic split; percentages must sum to 100."""
    with write_session(engine) as session:
        result = lifecycle.split(
            session,
            prompt=name,
            shares=body.split,
            actor=actor,
            now=utcnow(),
            notifier=notifier,
            reason=body.reason,
            force=body.force,
        )
    return result


@router.put("/{name}/versions/{version}/health", summary="Mark a version good or bad")
def mark_health(
    name: NamePath, version: VersionPath, body: HealthRequest, engine: EngineDep, actor: ActorDep
) -> VersionPublic:
    """Set a version's health mark by hand (recorded in the history)."""
    with write_session(engine) as session:
        return registry.mark_health(
            session=session,
            prompt=name,
            version=version,
            health=body.health,
            actor=actor,
            now=utcnow(),
            reason=body.reason,
        )


@router.get("/{name}/history", summary="Audit log, newest first")
def history(
    name: NamePath,
    engine: EngineDep,
    _actor: ActorDep,
    limit: Annotated[int, Query(ge=1, le=HISTORY_MAX)] = 50,
    before: Annotated[
        int | None, Query(ge=1, description="page: entries older than this id")
    ] = None,
) -> list[AuditPublic]:
    """Every deploy, rollback, split and health change of the prompt."""
    with read_session(engine) as session:
        return registry.history(session=session, name=name, limit=limit, before_id=before)


@router.get("/{name}/resolve", summary="The version and template to serve now")
async def resolve(
    name: NamePath,
    request: Request,
    engine: EngineDep,
    _actor: ActorDep,
    response: Response,
    key: Annotated[
        str | None, Query(max_length=512, description="sticky key, e.g. user id")
    ] = None,
) -> Resolved:
    """With a split, the same key always gets the same version while the split stands.

    Answered from the server's routing cache (kept by the change feed, which caches a change
    made here before the change is answered); a prompt it does not know is read from the
    database.
    """
    state = request.app.state.feed.current(name)
    if state is not None and state.active_version is not None:
        label = choose(name, state.split, state.order, key) if state.split else state.active_version
        resolved = Resolved(
            prompt=name, version=label, template=state.templates[label], revision=state.revision
        )
    else:
        resolved = await to_thread.run_sync(_resolve_from_db, engine, name, key)
    response.headers["ETag"] = f'"{resolved.revision}"'
    response.headers["Cache-Control"] = "no-store"
    return resolved


def _resolve_from_db(engine: Engine, name: str, key: str | None) -> Resolved:
    with read_session(engine) as session:
        return registry.resolve(session=session, name=name, key=key)
