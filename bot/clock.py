"""Time that wall-clock steps cannot freeze.

The system clock can jump: NTP steps a clock that drifted, a VM restored from a snapshot wakes
up in the past. Schedules built on it then stall for the length of a backward step (a check
due "in 30 s" is suddenly due in an hour and 30 s). Two things here keep the bot going:

- `steady_utcnow()`: UTC now that never goes backwards and never stalls. It follows the wall
  clock, except that after a backward step it keeps counting on the monotonic clock from the
  last time it gave, until the wall clock catches up. (A clock that was ahead and is stepped
  back is therefore followed only once it has caught up: timestamps stay ordered, and due
  times keep coming due.) Every timestamp the bot writes and every due time it compares comes
  from here (`bot.models.utcnow`).
- `StepWatch`: a thread that notices a step of either direction within a second and calls
  back, so a scheduler that computed its next wake-up from the wall clock (APScheduler) can
  be told to run its jobs now.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

log = logging.getLogger(__name__)

STEP_S = 1.0  # a jump of the wall clock against the monotonic clock larger than this is a step


class SteadyClock:
    """UTC now, never earlier than the last answer, advancing at least as the monotonic clock."""

    def __init__(
        self,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall, self._monotonic = wall, monotonic
        self._lock = threading.Lock()
        self._last = wall()
        self._last_mono = monotonic()
        self.behind = False  # the wall clock is behind (it was stepped back)

    def __call__(self) -> datetime:
        with self._lock:
            wall, mono = self._wall(), self._monotonic()
            steady = self._last + timedelta(seconds=max(0.0, mono - self._last_mono))
            now = max(wall, steady)
            behind = (steady - wall).total_seconds() > STEP_S
            if behind != self.behind:
                self.behind = behind
                if behind:
                    log.warning(
                        "the wall clock went back %.1f s; the bot's clock keeps counting from "
                        "where it was until the wall clock catches up",
                        (steady - wall).total_seconds(),
                    )
                else:
                    log.info("the wall clock caught up with the bot's clock")
            self._last, self._last_mono = now, mono
            return now


STEADY = SteadyClock()


def steady_utcnow() -> datetime:
    """UTC now that wall-clock steps cannot move backwards or freeze."""
    return STEADY()


class StepWatch:
    """Calls `on_step(seconds)` (negative: backwards) when the wall clock jumps."""

    def __init__(self, on_step: Callable[[float], None], every_s: float = 0.5) -> None:
        self.on_step, self.every_s = on_step, every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Watch in a background thread."""
        self._thread = threading.Thread(target=self._run, name="clock-steps", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        offset = time.time() - time.monotonic()
        while not self._stop.wait(self.every_s):  # a monotonic wait
            now = time.time() - time.monotonic()
            if abs(now - offset) > STEP_S:
                log.warning("the wall clock stepped by %+.1f s", now - offset)
                try:
                    self.on_step(now - offset)
                except Exception:  # the watch must outlive any fault of its callback
                    log.exception("reacting to a wall-clock step failed")
            offset = now
