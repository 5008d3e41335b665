"""Drives staged rollouts on the scheduler: judge the stage, then advance, pause or abort."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from bot.db import read_session, write_session
from bot.errors import BotError, LeaseLost
from bot.faults import failpoint
from bot.incidents.lifecycle import after_latest, rollout_notice, supersede_rollout
from bot.judging.analysis import Assessment, Outcome, measure_and_assess
from bot.judging.targets import rollout_target
from bot.metrics import MetricsSource
from bot.models import (
    Action,
    PromptVersion,
    Rollout,
    RolloutKind,
    RolloutStatus,
    Severity,
    Trigger,
    utcnow,
)
from bot.notify import Notice, NoticeKind, Notifier, deliver
from bot.policy import PolicySet
from bot.policy.schema import EffectivePolicy
from bot.registry.changes import Actor
from bot.registry.lookup import get_prompt, last_routing_change
from bot.rollouts import stages as rollouts
from bot.runtime.claims import claim_due, release

log = logging.getLogger(__name__)

CLAIM_FOR = timedelta(seconds=30)


class RolloutDriver:
    """One pass over running rollouts."""

    def __init__(
        self,
        *,
        engine: Engine,
        policies: PolicySet,
        sources: Mapping[str, MetricsSource],
        notifier: Notifier,
        clock: Callable[[], datetime] = utcnow,
        claim_for: timedelta = CLAIM_FOR,
    ) -> None:
        self.engine, self.policies, self.sources = engine, policies, sources
        self.notifier, self.clock, self.claim_for = notifier, clock, claim_for

    def run_due(self) -> int:
        """Judge every running rollout once; returns how many were looked at."""
        now = self.clock()
        with write_session(self.engine) as session:
            due = [col(Rollout.status) == RolloutStatus.RUNNING]
            rows = claim_due(session, Rollout, due=due, now=now, claim_for=self.claim_for)
            claimed = [row.id or 0 for row in rows]
        for rollout_id in claimed:
            try:
                self._step(rollout_id, now)
            except LeaseLost:
                raise  # the new leader's claim stands; ours lapses by itself
            except BotError as exc:
                log.warning("rollout #%s step failed: %s", rollout_id, exc.message)
            finally:
                with write_session(self.engine) as session:
                    release(session, Rollout, rollout_id, now + self.claim_for)
        return len(claimed)

    def _step(self, rollout_id: int, now: datetime) -> None:
        with read_session(self.engine) as session:
            rollout = rollouts.get_rollout(session, rollout_id)
            ids = {
                v.label: v.id
                for v in session.exec(
                    select(PromptVersion).where(
                        PromptVersion.prompt_id == rollout.prompt_id,
                        col(PromptVersion.label).in_([rollout.from_version, rollout.to_version]),
                    )
                )
            }
        policy = self.policies.for_prompt(rollout.prompt)
        target = rollout_target(rollout, ids, policy.settings)
        found = measure_and_assess(self.sources, target, policy, now, age=now - rollout.created_at)
        actor = Actor(operator="system", trigger=Trigger.AUTOMATIC, rule=rollout.kind.value)
        elapsed = now - rollout.stage_started_at >= timedelta(seconds=rollout.stage_seconds)
        if elapsed:
            failpoint("rollout.judged")
        with write_session(self.engine) as session:
            rollout = rollouts.get_rollout(session, rollout_id)
            if rollout.status != RolloutStatus.RUNNING:
                return
            if rollouts.moved_by_someone_else(session, rollout):
                # A change that did not go through the lifecycle flow: never overwrite it.
                last = last_routing_change(session, get_prompt(session, rollout.prompt))
                if last is not None:
                    supersede_rollout(session, entry=last, notifier=self.notifier, now=now)
                return
            if found.metrics is None:
                return  # no figures: hold the stage, never move on missing data
            before = rollout.revision
            if rollout.kind == RolloutKind.GRADUAL_ROLLBACK:
                notice = self._gradual(session, rollout, found, elapsed, actor, now, policy)
            else:
                notice = self._canary(session, rollout, found, elapsed, actor, now)
            if rollout.revision != before:  # the rollout moved traffic: incidents, cards
                after_latest(session, rollout.prompt, self.notifier)
            if notice is not None:  # queued with the stage it reports: once, or not at all
                deliver(self.notifier, notice, session)
            failpoint("rollout.before_commit")

    def _canary(
        self,
        session: Session,
        rollout: Rollout,
        found: Assessment,
        elapsed: bool,
        actor: Actor,
        now: datetime,
    ) -> Notice | None:
        decision = found.decision
        if found.outcome == Outcome.BREACH:
            rollouts.abort(
                session=session, rollout=rollout, actor=actor, now=now, note=decision.reason
            )
            return rollout_notice(
                NoticeKind.ROLLOUT_ABORTED,
                rollout,
                Severity.HIGH,
                f"Canary aborted at {rollouts.describe(rollout)}: {decision.reason}. "
                f"All traffic is back on {rollout.from_version}.",
                Action.PAGE,
            )
        if elapsed and found.outcome == Outcome.HEALTHY:
            rollouts.advance(session=session, rollout=rollout, actor=actor, now=now)
            return self._moved(rollout, found)
        return None

    def _gradual(
        self,
        session: Session,
        rollout: Rollout,
        found: Assessment,
        elapsed: bool,
        actor: Actor,
        now: datetime,
        policy: EffectivePolicy,
    ) -> Notice | None:
        # The runbook watches the whole prompt: both versions' traffic together.
        settings = policy.settings
        assert found.metrics is not None  # the caller holds stages without figures
        current, baseline = found.metrics.current, found.metrics.baseline
        other_requests = (baseline.requests or 0) if baseline else 0
        other_rate = (baseline.error_rate_pct or 0.0) if baseline else 0.0
        requests = current.requests + other_requests
        errors = current.errors + round(other_rate * other_requests / 100)
        rate = 100 * errors / requests if requests else 0.0
        limit = settings.gradual_pause_error_rate_pct
        if requests >= settings.min_requests and rate > limit:
            rollouts.pause(rollout, f"error rate {rate:.1f}% > {limit:g}% (n={requests})")
            text = (
                f"Paused at {rollouts.describe(rollout)}: the prompt's error rate is "
                f"{rate:.1f}% (n={requests}), above {limit:g}%. Finish the rollback now or abort."
            )
            return rollout_notice(
                NoticeKind.ROLLOUT_PAUSED, rollout, Severity.HIGH, text, Action.PAGE
            )
        if elapsed:
            rollouts.advance(session=session, rollout=rollout, actor=actor, now=now)
            return self._moved(rollout, found)
        return None

    def _moved(self, rollout: Rollout, found: Assessment) -> Notice:
        figures = f"{rollout.to_version}: {found.error_rate_pct:.1f}% errors (n={found.requests})"
        if rollout.status == RolloutStatus.COMPLETED:
            return rollout_notice(
                NoticeKind.ROLLOUT_COMPLETED,
                rollout,
                Severity.NONE,
                f"Completed: all traffic on {rollout.to_version} ({figures}).",
            )
        return rollout_notice(
            NoticeKind.ROLLOUT_STAGE,
            rollout,
            Severity.NONE,
            f"Stage {rollout.stage + 1}/{len(rollout.stages)}: "
            f"{rollout.stages[rollout.stage]}% on {rollout.to_version} ({figures}).",
        )
