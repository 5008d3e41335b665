"""Staged traffic moves: a gradual (reverse-canary) rollback, and a canary rollout.

Each is a row in `rollout` driven by the scheduler (bot.rollouts.driver); every
traffic change goes through the registry, so it is audited like any other.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import bindparam
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot import registry
from bot.errors import Conflict, InvalidRequest, NotFound
from bot.models import (
    ACTIVE_ROLLOUT,
    ChangeResult,
    Prompt,
    Rollout,
    RolloutKind,
    RolloutStatus,
    Routing,
)
from bot.registry.changes import Actor, preview_target
from bot.registry.lookup import get_prompt

GRADUAL_STAGES = [25, 50, 75, 100]  # the target's share: the bad version goes 75, 50, 25, 0
CANARY_STAGES = [1, 5, 25, 100]


def describe(rollout: Rollout) -> str:
    """'gradual rollback of customer-support v2.0.0 → v1.9.0, stage 2/4 (50% on v1.9.0)';
    once ended, where the traffic was left ('completed: 100% on v1.9.0')."""
    kind = "gradual rollback" if rollout.kind == RolloutKind.GRADUAL_ROLLBACK else "canary"
    head = f"{kind} of {rollout.prompt} {rollout.from_version} → {rollout.to_version}"
    share = rollout.stages[rollout.stage]
    stage = f"stage {rollout.stage + 1}/{len(rollout.stages)} ({share}% on {rollout.to_version})"
    if rollout.status == RolloutStatus.COMPLETED:
        return f"{head}, completed: 100% on {rollout.to_version}"
    if rollout.status == RolloutStatus.ABORTED:
        if rollout.kind == RolloutKind.CANARY:
            return f"{head}, aborted: 100% back on {rollout.from_version}"
        return f"{head}, stopped at {stage}: the split stays until someone changes it"
    if rollout.status == RolloutStatus.SUPERSEDED:
        return f"{head}, superseded at {stage}"
    return f"{head}, {stage}"


def get_rollout(session: Session, rollout_id: int) -> Rollout:
    """The rollout, or NotFound."""
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFound(f"no rollout #{rollout_id}")
    return rollout


# Looked up by every routing change (lifecycle.after): built once.
_ACTIVE = select(Rollout).where(
    Rollout.prompt_id == bindparam("prompt_id"), col(Rollout.status).in_(ACTIVE_ROLLOUT)
)
_ACTIVE_BY_NAME = (
    select(Rollout)
    .join(Prompt, col(Prompt.id) == Rollout.prompt_id)
    .where(Prompt.name == bindparam("name"), col(Rollout.status).in_(ACTIVE_ROLLOUT))
)


def active_rollout(session: Session, prompt_id: int) -> Rollout | None:
    """The prompt's running or paused rollout, if any."""
    return session.exec(_ACTIVE, params={"prompt_id": prompt_id}).first()


def start(
    *,
    session: Session,
    prompt: str,
    kind: RolloutKind,
    version: str | None,
    actor: Actor,
    stage_seconds: float,
    now: datetime,
    reason: str = "",
) -> tuple[Rollout, ChangeResult]:
    """Start a gradual rollback (to `version` or the previous known-good) or a canary of
    `version`; the first stage's split is applied at once."""
    row = get_prompt(session, prompt)
    detail = registry.prompt_detail(session=session, name=prompt)
    if detail.active_version is None:
        raise InvalidRequest(f"{prompt} has no active version yet; deploy one first")
    if active_rollout(session, row.id or 0) is not None:
        raise Conflict(f"a rollout of {prompt} is already running; finish or abort it first")
    if detail.split:
        shares = ", ".join(f"{label} {pct}%" for label, pct in detail.split.items())
        raise Conflict(f"{prompt} already splits its traffic ({shares}); set one version first")
    current = detail.active_version
    if kind == RolloutKind.GRADUAL_ROLLBACK:
        target = version or preview_target(session=session, prompt=prompt)
        if target is None:
            raise InvalidRequest(f"{prompt} has no known-good version to go back to; name one")
        stages, source = GRADUAL_STAGES, current
    else:
        if version is None:
            raise InvalidRequest("a canary needs the version to roll out")
        target, stages, source = version, CANARY_STAGES, current
    if target == current:
        raise Conflict(f"{target} is already the active version of {prompt}")
    first = stages[0]
    change = registry.set_split(
        session=session,
        prompt=prompt,
        split={source: 100 - first, target: first},
        actor=actor,
        now=now,
        reason=f"{kind.value} stage 1/{len(stages)}: {first}% on {target}"
        + (f" ({reason})" if reason else ""),
    )
    rollout = Rollout(
        prompt_id=row.id or 0,
        prompt=prompt,
        kind=kind,
        from_version=source,
        to_version=target,
        stages=stages,
        stage=0,
        stage_seconds=stage_seconds,
        stage_started_at=now,
        operator=actor.operator,
        trigger=actor.trigger,
        reason=reason,
        created_at=now,
        revision=change.revision,
    )
    session.add(rollout)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"a rollout of {prompt} is already running") from None
    return rollout, change


def advance(*, session: Session, rollout: Rollout, actor: Actor, now: datetime) -> ChangeResult:
    """Move to the next stage; the last one completes the move through the registry."""
    following = rollout.stage + 1
    share = rollout.stages[following]
    if share >= 100:
        return finish(
            session=session, rollout=rollout, actor=actor, now=now, note="all stages passed"
        )
    rollout.stage, rollout.stage_started_at = following, now
    result = registry.set_split(
        session=session,
        prompt=rollout.prompt,
        split={rollout.from_version: 100 - share, rollout.to_version: share},
        actor=actor,
        now=now,
        reason=f"{rollout.kind.value} stage {following + 1}/{len(rollout.stages)}: "
        f"{share}% on {rollout.to_version}",
    )
    rollout.revision = result.revision
    return result


def finish(
    *,
    session: Session,
    rollout: Rollout,
    actor: Actor,
    now: datetime,
    note: str = "finished now",
) -> ChangeResult:
    """Move all traffic to the target now (a gradual rollback ends as a rollback, verified)."""
    _require_active(rollout)
    if rollout.kind == RolloutKind.GRADUAL_ROLLBACK:
        result = registry.rollback(
            session=session,
            prompt=rollout.prompt,
            target=rollout.to_version,
            actor=actor,
            now=now,
            reason=f"gradual rollback completed ({note})",
            expected_version=rollout.from_version,
            dedup_window=timedelta(0),
        )
    else:
        result = registry.deploy(
            session=session,
            prompt=rollout.prompt,
            version=rollout.to_version,
            actor=actor,
            now=now,
            reason=f"canary promoted ({note})",
        )
    rollout.revision = result.revision
    _close(rollout, RolloutStatus.COMPLETED, now, note)
    return result


def abort(
    *,
    session: Session,
    rollout: Rollout,
    actor: Actor,
    now: datetime,
    note: str,
) -> ChangeResult | None:
    """Stop: a canary goes back to the stable version (a rollback, verified); a gradual
    rollback stops where it is and leaves the split to people."""
    _require_active(rollout)
    result = None
    if rollout.kind == RolloutKind.CANARY:
        result = registry.rollback(
            session=session,
            prompt=rollout.prompt,
            target=rollout.from_version,
            actor=actor,
            now=now,
            reason=f"canary aborted: {note}",
            expected_version=rollout.to_version,
            dedup_window=timedelta(0),
        )
        rollout.revision = result.revision
    _close(rollout, RolloutStatus.ABORTED, now, note)
    return result


def moved_by_someone_else(session: Session, rollout: Rollout) -> bool:
    """Whether the prompt's routing changed since the rollout last set it."""
    routing = session.get(Routing, rollout.prompt_id)
    return rollout.revision is not None and (
        routing is None or routing.revision != rollout.revision
    )


def supersede(rollout: Rollout, now: datetime, note: str) -> None:
    """End the rollout because someone else changed the routing: their change stands."""
    _close(rollout, RolloutStatus.SUPERSEDED, now, note)


def rollback_defaults(session: Session, prompt: str) -> tuple[str | None, str | None]:
    """(target, suspect) of a rollback without a target during a rollout: a canary goes back
    to its stable version, a gradual rollback on to the good one; (None, None) otherwise (an
    unknown prompt too: the rollback then says so)."""
    running = session.exec(_ACTIVE_BY_NAME, params={"name": prompt}).first()
    if running is None:
        return None, None
    if running.kind == RolloutKind.CANARY:
        return running.from_version, running.to_version
    return running.to_version, running.from_version


def pause(rollout: Rollout, note: str) -> None:
    """Hold the current stage until a person finishes or aborts."""
    rollout.status, rollout.note = RolloutStatus.PAUSED, note[:2000]


def _require_active(rollout: Rollout) -> None:
    if rollout.status not in ACTIVE_ROLLOUT:
        raise Conflict(f"rollout #{rollout.id} is already {rollout.status.value}")


def _close(rollout: Rollout, status: RolloutStatus, now: datetime, note: str) -> None:
    rollout.status, rollout.finished_at, rollout.note = status, now, note[:2000]
