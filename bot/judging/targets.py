"""Which prompt versions are live, with their policy and baseline: one query for all."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, select, type_coerce
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from bot.metrics import Target
from bot.models import Health, Prompt, PromptVersion, Rollout, Routing, Verification
from bot.policy import EffectivePolicy, PolicySet
from bot.policy.schema import Settings

MIN_STAGE_WINDOW = timedelta(minutes=1)
HEALTH = {health.value: health for health in Health}


@dataclass(frozen=True)
class LiveVersion:
    """A target with the policy that judges it and what the registry knows of it."""

    target: Target
    policy: EffectivePolicy
    health: Health
    age_reference: datetime | None
    revision: int  # the prompt's routing revision when this was read


def routing_revisions(session: Session, prompt_ids: set[int]) -> dict[int, int]:
    """The routing revision of each prompt, its row locked until the transaction ends (so no
    rollback or deploy can land between this read and what the caller writes)."""
    if not prompt_ids:
        return {}
    rows = session.execute(
        select(col(Routing.prompt_id), col(Routing.revision))
        .where(col(Routing.prompt_id).in_(prompt_ids))
        .order_by(col(Routing.prompt_id))  # one lock order for every caller: no deadlock
        .with_for_update()
    ).all()
    return {int(prompt_id): int(revision) for prompt_id, revision in rows}


def load_live_versions(session: Session, policies: PolicySet) -> list[LiveVersion]:
    """Every version that receives traffic now, in a couple of set-based queries."""
    active, previous = aliased(PromptVersion), aliased(PromptVersion)
    columns: list[Any] = [
        Prompt.id,
        Prompt.name,
        Routing.split,
        Routing.activated_at,
        Routing.updated_at,
        Routing.revision,
        active.id,
        active.label,
        # Health as its stored text, mapped below by a dict lookup: the Enum type's own
        # conversion costs more than the rest of the row.
        type_coerce(active.health, String),
        active.baseline,
        previous.id,
        previous.label,
        previous.baseline,
        type_coerce(previous.health, String),
    ]
    # Plain Core rows (tuples), each dropped once read: the ORM's loading adds nothing to a
    # read of columns, and holding every row until the end only feeds the garbage collector.
    rows = session.connection().execute(
        select(*columns)
        .join(Routing, col(Routing.prompt_id) == Prompt.id)
        .join(active, col(active.id) == Routing.active_version_id)
        .join(previous, col(previous.id) == Routing.previous_version_id, isouter=True)
        # One order on every backend: a pass judges, rolls back and announces in prompt order.
        .order_by(col(Prompt.id))
    )
    # Policies are resolved once per pass: one for every prompt on the defaults, one for
    # each prompt with an override.
    overridden = policies.prompts
    shared = policies.for_prompt(None)
    cache: dict[str, EffectivePolicy] = {}
    live: list[LiveVersion] = []
    splits: list[tuple[int, dict[str, int], datetime, Any, LiveVersion]] = []
    for (
        prompt_id,
        name,
        split,
        activated_at,
        updated_at,
        revision,
        a_id,
        a_label,
        a_health,
        a_base,
        p_id,
        p_label,
        p_base,
        p_health,
    ) in rows:
        p_bad = p_health == Health.BAD.value
        health = HEALTH[a_health]
        policy = shared
        if name in overridden:
            if name not in cache:
                cache[name] = policies.for_prompt(name)
            policy = cache[name]
        settings = policy.settings
        stable = Target(
            prompt=name,
            prompt_id=prompt_id,
            version=a_label,
            version_id=a_id,
            share_pct=split.get(a_label, 100) if split else 100,
            serving_since=activated_at,
            window=settings.window,
            baseline_window=settings.baseline_window,
            min_requests=settings.min_requests,
            # A version rolled back away from is no yardstick for the one restored after it:
            # then only figures stored on the versions serve as the baseline.
            baseline_version=None if p_bad else p_label,
            baseline_version_id=None if p_bad else p_id,
            baseline_until=activated_at if p_id is not None and not p_bad else None,
            stored_baselines=_stored((None if p_bad else p_label, p_base), (a_label, a_base)),
        )
        # A known-good version (restored by a rollback, say) is not "new": no first-hour limits.
        age_from = None if health == Health.GOOD else activated_at
        live.append(LiveVersion(stable, policy, health, age_from, revision))
        if split:
            splits.append((len(live), split, updated_at, a_base, live[-1]))
    if not splits:
        return live
    # Canaries follow their stable version; their versions are read once every row is in.
    split_versions = _split_versions(session, [lv.target.prompt_id for *_, lv in splits])
    ordered: list[LiveVersion] = []
    done = 0
    for position, split, updated_at, a_base, stable_lv in splits:
        ordered += live[done:position]
        done = position
        stable = stable_lv.target
        for label, share in split.items():
            version = split_versions.get((stable.prompt_id, label))
            if label == stable.version or share <= 0 or version is None or version.id is None:
                continue
            # A canary is compared with the stable version over the same window.
            canary = replace(
                stable,
                version=label,
                version_id=version.id,
                share_pct=share,
                serving_since=updated_at,
                baseline_version=stable.version,
                baseline_version_id=stable.version_id,
                baseline_until=None,
                stored_baselines=_stored((stable.version, a_base), (label, version.baseline)),
            )
            ordered.append(
                LiveVersion(
                    canary, stable_lv.policy, version.health, updated_at, stable_lv.revision
                )
            )
    ordered += live[done:]
    return ordered


def verification_target(v: Verification, version_id: int, settings: Settings) -> Target:
    """The restored version after a rollback: only its own traffic from the switch on."""
    return Target(
        prompt=v.prompt,
        version=v.version,
        version_id=version_id,
        prompt_id=v.prompt_id,
        share_pct=100,
        serving_since=v.started_at,
        window=settings.verify_window,
        since=v.started_at,
        pre_since=v.pre_switch,
        baseline_window=settings.baseline_window,
        min_requests=settings.min_requests,
    )


def rollout_target(rollout: Rollout, ids: Mapping[str, int | None], settings: Settings) -> Target:
    """A rollout's new version over its stage, compared with the version it replaces over the
    same window."""
    return Target(
        prompt=rollout.prompt,
        version=rollout.to_version,
        version_id=ids[rollout.to_version] or 0,
        prompt_id=rollout.prompt_id,
        share_pct=0,
        serving_since=rollout.created_at,
        window=max(MIN_STAGE_WINDOW, timedelta(seconds=rollout.stage_seconds)),
        baseline_window=settings.baseline_window,
        min_requests=settings.min_requests,
        baseline_version=rollout.from_version,
        baseline_version_id=ids[rollout.from_version],
        baseline_until=None,
    )


def _stored(
    first: tuple[str | None, Mapping[str, float] | None],
    then: tuple[str, Mapping[str, float] | None],
) -> tuple[tuple[str, Mapping[str, float]], ...]:
    """The stored figures to fall back on, in order; most versions have none."""
    if not (first[1] or then[1]):
        return ()
    return tuple((label, figures) for label, figures in (first, then) if label and figures)


def _split_versions(
    session: Session, prompt_ids: list[int]
) -> dict[tuple[int, str], PromptVersion]:
    if not prompt_ids:
        return {}
    versions = session.scalars(
        select(PromptVersion).where(col(PromptVersion.prompt_id).in_(prompt_ids))
    )
    return {(version.prompt_id, version.label): version for version in versions}
