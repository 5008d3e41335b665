"""APScheduler's interval trigger, without replaying missed runs (imported by the checker's
start, not with the app: APScheduler loads only where the checker runs)."""

from __future__ import annotations

from datetime import datetime

from apscheduler.triggers.interval import IntervalTrigger


class EveryInterval(IntervalTrigger):  # type: ignore[misc]  # APScheduler is untyped
    """APScheduler's interval, without replaying missed runs one by one: after the wall clock
    jumps forward a day (or the process was frozen), the stock trigger walks every missed
    0.5 s run time (172,800 of them) before the next run, stalling the scheduler for seconds."""

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        fire: datetime | None = super().get_next_fire_time(previous_fire_time, now)
        if previous_fire_time is not None and fire is not None and fire < now:
            return now
        return fire
