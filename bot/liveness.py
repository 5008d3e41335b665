"""Liveness of the background loops (Slack outbox, checker, verifier, rollout driver,
webhooks, change feed): each round reports here, so a loop that is failing or stuck shows in
`/healthz` and `/metrics` instead of dying quietly behind an "ok".

A loop survives any exception: `failed()` logs it with its traceback, counts it, and returns
how long to back off (doubling from the loop's own interval up to `MAX_BACKOFF_S`); the next
successful round resets it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.errors import BotError
from bot.telemetry import LOOP_ERRORS, LOOP_LAST_OK

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
STALE_AFTER_S = 30.0  # at least: a round late by this much (or 3 intervals) is "stuck"


@dataclass
class Loop:
    """One background loop's last successful round and current run of failures."""

    name: str
    every_s: float  # the loop's normal interval
    last_ok: float | None = None  # time.monotonic() of the last successful round
    started: float = field(default_factory=time.monotonic)
    failures: int = 0
    last_error: str | None = None
    resume_at: float = 0.0  # time.monotonic() before which a failing loop skips its rounds

    def run(self, work: Callable[[], object]) -> None:
        """One round of `work` unless backing off: a database that is down is a warning (the
        next round retries), anything else is logged with its traceback and backed off."""
        if time.monotonic() < self.resume_at:
            return
        try:
            work()
        except BotError as exc:
            self.failures += 1
            self.last_error = exc.message[:300]
            log.warning("%s round skipped: %s", self.name, exc.message)
        except Exception as exc:
            self.resume_at = time.monotonic() + self.failed(exc)
        else:
            self.ok()

    def ok(self) -> None:
        """A round finished without an exception."""
        if self.failures:
            log.info("%s loop recovered after %d failed round(s)", self.name, self.failures)
        self.last_ok, self.failures, self.last_error = time.monotonic(), 0, None
        LOOP_LAST_OK.labels(self.name).set(time.time())

    def failed(self, exc: BaseException) -> float:
        """A round raised `exc`: log it, count it; returns the seconds to back off."""
        self.failures += 1
        self.last_error = f"{exc.__class__.__name__}: {exc}"[:300]
        LOOP_ERRORS.labels(self.name).inc()
        log.error(
            "%s loop round failed (%d in a row); it goes on",
            self.name,
            self.failures,
            exc_info=exc,
        )
        return float(min(MAX_BACKOFF_S, max(self.every_s, 0.5) * 2 ** min(self.failures - 1, 8)))

    def healthy(self, now: float) -> bool:
        """Whether the loop had a good round recently enough (or has just started)."""
        since = self.last_ok if self.last_ok is not None else self.started
        return now - since <= max(STALE_AFTER_S, 3 * self.every_s)

    def as_dict(self, now: float) -> dict[str, object]:
        """For /healthz."""
        return {
            "ok": self.healthy(now),
            "last_ok_s_ago": None if self.last_ok is None else round(now - self.last_ok, 1),
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
        }


def report(loops: list[Loop]) -> tuple[bool, dict[str, dict[str, object]]]:
    """(all healthy, each loop's state) for /healthz."""
    now = time.monotonic()
    return all(loop.healthy(now) for loop in loops), {
        each.name: each.as_dict(now) for each in loops
    }
