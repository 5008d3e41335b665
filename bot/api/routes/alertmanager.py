"""POST /api/alertmanager: Prometheus Alertmanager's webhook, acted on like the checker's own
verdicts (one incident per version; a critical alert may roll back; a resolved alert closes
the incident it opened)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from bot.api.deps import ActorDep, EngineDep, NotifierDep, SettingsDep
from bot.api.routes.rollouts import policies_of
from bot.config import Settings
from bot.db import read_session
from bot.integrations.alertmanager import Payload, verdicts
from bot.models import utcnow
from bot.notify import Notifier
from bot.policy import PolicySet

router = APIRouter(prefix="/api", tags=["alertmanager"])
log = logging.getLogger(__name__)


@router.post("/alertmanager", summary="Alertmanager webhook: alerts about prompt versions")
async def alertmanager(
    payload: Payload,
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    notifier: NotifierDep,
    _actor: ActorDep,
) -> dict[str, Any]:
    """Each firing alert with `prompt` and `version` labels is a verdict on that version."""
    policies = policies_of(request)
    return await run_in_threadpool(_handle, payload, engine, settings, notifier, policies)


def _handle(
    payload: Payload, engine: Engine, settings: Settings, notifier: Notifier, policies: PolicySet
) -> dict[str, Any]:
    # The checker's machinery, loaded with the first alert (a server can run without the
    # checker, CHECKER_ENABLED=false, and still take Alertmanager's webhooks).
    from bot.judging.checker import Checker
    from bot.judging.targets import load_live_versions

    found, skipped = verdicts(
        payload,
        policies,
        prompt_label=settings.alertmanager_prompt_label,
        version_label=settings.alertmanager_version_label,
    )
    checker = Checker(engine=engine, policies=policies, sources={}, notifier=notifier)
    now = utcnow()
    with read_session(engine) as session:
        live = {
            (lv.target.prompt, lv.target.version): lv
            for lv in load_live_versions(session, policies)
        }
    acted: list[dict[str, Any]] = []
    for verdict in found:
        key = (verdict.prompt, verdict.version)
        if not verdict.firing:
            closed = checker.resolve_alert(verdict.prompt, verdict.version, verdict.alert, now)
            acted.append(
                {
                    "prompt": verdict.prompt,
                    "version": verdict.version,
                    "alert": verdict.alert,
                    "resolved": closed,
                }
            )
            continue
        if key not in live:
            skipped.append(f"{verdict.alert}: {verdict.prompt} {verdict.version} is not serving")
            continue
        assert verdict.decision is not None
        report = checker.act([(live[key], verdict.decision)], now)
        acted.append(
            {
                "prompt": verdict.prompt,
                "version": verdict.version,
                "alert": verdict.alert,
                "severity": verdict.decision.severity.value,
                "action": verdict.decision.action.value,
                "rolled_back": [r.to_version for r in report.rollbacks],
            }
        )
    for line in skipped:
        log.warning("alertmanager: alert not acted on: %s", line)
    return {"alerts": len(payload.alerts), "acted": acted, "skipped": skipped}
