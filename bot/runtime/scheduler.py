"""Runs the checker on an APScheduler interval, only where this process holds the lease.

The service is made with the app and its loops (what /healthz reports) exist from then on;
the checker, the verifier, the rollout driver, the webhooks and APScheduler are imported and
built when it starts, in a thread of their own, so the server answers while they load. The
first pass runs as soon as they have; until then the loops are "just started", as they are
until any first pass ends, and if building fails the checker loop reports the error.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from bot.clock import StepWatch
from bot.config import Settings
from bot.db import write_session
from bot.errors import BotError, LeaseLost
from bot.liveness import Loop
from bot.metrics.ingest import prune
from bot.models import utcnow
from bot.notify import Notifier
from bot.policy import PolicySet
from bot.runtime import lease
from bot.runtime.sources import LEASE
from bot.telemetry import LEADER

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

    from bot.integrations.webhooks import WebhookDispatcher
    from bot.judging.checker import Checker
    from bot.rollouts.driver import RolloutDriver
    from bot.verification.verifier import Verifier

log = logging.getLogger(__name__)

PRUNE_EVERY = timedelta(minutes=10)


class CheckerService:
    """The checker loop of one process: lease, tick, prune; started and stopped with the app."""

    # Built by start(), in its own thread (see the module's docstring).
    checker: Checker
    verifier: Verifier
    rollouts: RolloutDriver
    webhooks: WebhookDispatcher
    scheduler: BackgroundScheduler

    def __init__(
        self, *, engine: Engine, settings: Settings, policies: PolicySet, notifier: Notifier
    ) -> None:
        self.engine, self.settings = engine, settings
        self.policies, self.notifier = policies, notifier
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.steps = StepWatch(self._rescheduled)
        self.leader = False
        self._last_prune = utcnow() - PRUNE_EVERY
        # Each loop survives any exception on its own: a failing verifier never stops the
        # checker, the rollout driver or the webhooks (bot/liveness.py).
        check_s, poll_s = settings.rollback_check_interval, settings.verify_poll_seconds
        self.loops = [
            Loop("checker", check_s),
            Loop("verifier", poll_s),
            Loop("rollouts", poll_s),
            Loop("webhooks", poll_s),
        ]
        self._starting: threading.Thread | None = None
        self._scheduled = False

    def _build(self) -> None:
        """Import and build the checker, verifier, rollout driver, webhooks and scheduler."""
        from apscheduler.schedulers.background import BackgroundScheduler

        from bot.integrations.pagerduty import PagerDuty
        from bot.integrations.webhooks import WebhookDispatcher
        from bot.judging.checker import Checker
        from bot.rollouts.driver import RolloutDriver
        from bot.runtime.sources import build_sources
        from bot.verification.verifier import Verifier

        engine, settings, policies, notifier = (
            self.engine,
            self.settings,
            self.policies,
            self.notifier,
        )
        self.checker = Checker(
            engine=engine,
            policies=policies,
            sources=build_sources(engine, policies),
            notifier=notifier,
            source_down_after=settings.metrics_source_down_after,
            dedup_window=timedelta(seconds=settings.rollback_dedup_seconds),
        )
        pager = None
        if settings.pagerduty_routing_key is not None:
            pager = PagerDuty(
                routing_key=settings.pagerduty_routing_key.get_secret_value(),
                url=settings.pagerduty_events_url,
            )
        # A claim lasts no longer than the lease: a standby that takes over a dead leader can
        # take its unfinished verification checks and rollout stages at once.
        claim_for = timedelta(seconds=settings.lease_ttl_seconds())
        self.verifier = Verifier(
            engine=engine,
            policies=policies,
            sources=self.checker.sources,
            notifier=notifier,
            pager=pager,
            claim_for=claim_for,
        )
        self.rollouts = RolloutDriver(
            engine=engine,
            policies=policies,
            sources=self.checker.sources,
            notifier=notifier,
            claim_for=claim_for,
        )
        secret = settings.rollback_webhook_secret
        self.webhooks = WebhookDispatcher(
            engine=engine,
            policies=policies,
            secret=secret.get_secret_value() if secret is not None else None,
            format=settings.rollback_webhook_format,
        )
        self.scheduler = BackgroundScheduler(timezone=UTC)

    def run_once(self) -> None:
        """One scheduled pass: renew the lease, and if held, judge and act."""
        self.loops[0].run(self._check)

    def _fenced(self, work: Callable[[], object]) -> Callable[[], None]:
        """`work` with every write it commits fenced on this process holding the lease."""

        def run() -> None:
            try:
                with lease.acting_under(name=LEASE, holder=self.holder, clock=utcnow):
                    work()
            except LeaseLost:
                self.leader = False
                LEADER.set(0)
                raise

        return run

    def _check(self) -> None:
        now = utcnow()
        ttl = timedelta(seconds=self.settings.lease_ttl_seconds())
        held = lease.hold(engine=self.engine, name=LEASE, holder=self.holder, ttl=ttl, now=now)
        if held != self.leader:
            log.info("checker lease %s by %s", "taken" if held else "lost", self.holder)
        self.leader = held
        LEADER.set(1 if held else 0)
        if held:
            self._fenced(lambda: self._judge(now))()

    def _judge(self, now: datetime) -> None:
        report = self.checker.tick()
        log.debug("checker pass: %d versions in %.3f s", len(report.decisions), report.duration_s)
        if now - self._last_prune >= PRUNE_EVERY:
            retention = timedelta(hours=self.settings.metrics_retention_hours)
            with write_session(self.engine) as session:
                prune(session=session, older_than=now - retention)
            self._last_prune = now

    def run_verifications(self) -> None:
        """Due verification checks, rollout stages and webhook deliveries (lease holder only)."""
        _, verifier, rollouts, webhooks = self.loops
        if not self.leader:
            for loop in (verifier, rollouts, webhooks):
                loop.ok()  # a standby's loops are idle, not stuck
            return
        verifier.run(self._fenced(self.verifier.run_due))
        rollouts.run(self._fenced(self.rollouts.run_due))
        webhooks.run(self._fenced(self.webhooks.run_due))

    def start(self) -> None:
        """Build the checks and schedule passes every ROLLBACK_CHECK_INTERVAL seconds, the
        first one at once, in a thread of their own (the server answers meanwhile)."""
        self._starting = threading.Thread(target=self._start, name="checker-start", daemon=True)
        self._starting.start()

    def _start(self) -> None:
        from bot.runtime.interval import EveryInterval

        try:
            self._build()
        except Exception as exc:  # reported by the checker loop (/healthz), never silent
            self.loops[0].failed(exc)
            return
        self.scheduler.add_job(
            self.run_once,
            EveryInterval(seconds=self.settings.rollback_check_interval, timezone=UTC),
            next_run_time=datetime.now(UTC),  # APScheduler's own clock is the wall clock
            max_instances=1,
            coalesce=True,
            id="checker",
        )
        self.scheduler.add_job(
            self.run_verifications,
            EveryInterval(seconds=self.settings.verify_poll_seconds, timezone=UTC),
            max_instances=1,
            coalesce=True,
            id="verifier",
        )
        self.scheduler.start()
        self.steps.start()
        self._scheduled = True

    def _rescheduled(self, step_s: float) -> None:
        """The wall clock jumped: APScheduler planned its next runs on it (a step back of an
        hour would stall every job for an hour), so run every job now and plan from there."""
        for job in self.scheduler.get_jobs():
            job.modify(next_run_time=datetime.now(UTC))
        log.warning("wall clock stepped %+.1f s: checker and verifier rescheduled", step_s)

    def stop(self) -> None:
        """Stop scheduling and hand the lease to a standby at once."""
        if self._starting is not None:
            self._starting.join()  # still loading: let it finish, then stop it
        if not self._scheduled:
            return
        self.steps.stop()
        self.scheduler.shutdown(wait=True)
        for source in self.checker.sources.values():
            close = getattr(source, "close", None)
            if close is not None:
                close()
        if self.leader:
            try:
                lease.release(engine=self.engine, name=LEASE, holder=self.holder)
            except BotError as exc:
                log.warning("could not release the checker lease: %s", exc.message)
