"""POST /api/rollback, as in the runbook."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter

from bot.api.deps import ActorDep, EngineDep, NotifierDep, SettingsDep
from bot.db import write_session
from bot.incidents import lifecycle
from bot.models import ChangeResult, RollbackRequest, utcnow

router = APIRouter(prefix="/api", tags=["rollback"])


@router.post("/rollback", summary="Roll a prompt back to a known-good version")
def rollback(
    body: RollbackRequest,
    engine: EngineDep,
    settings: SettingsDep,
    actor: ActorDep,
    notifier: NotifierDep,
) -> ChangeResult:
    """Switch to `target_version`, or to the previous known-good version when it is omitted."""
    with write_session(engine) as session:
        result = lifecycle.rollback(
            session,
            prompt=body.prompt,
            target=body.target_version,
            actor=actor,
            now=utcnow(),
            notifier=notifier,
            reason=body.reason,
            force=body.force,
            expected_version=body.expected_version,
            dedup_window=timedelta(seconds=settings.rollback_dedup_seconds),
        )
    return result
