"""The bot's clock: never backwards, never stalled, whatever the wall clock does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.clock import SteadyClock

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_a_backward_step_is_absorbed_until_the_wall_clock_catches_up() -> None:
    wall, mono = [T0], [100.0]
    clock = SteadyClock(wall=lambda: wall[0], monotonic=lambda: mono[0])
    assert clock() == T0
    wall[0], mono[0] = T0 - timedelta(hours=1), 101.0  # stepped back an hour, 1 s later
    assert clock() == T0 + timedelta(seconds=1) and clock.behind
    wall[0], mono[0] = T0 - timedelta(minutes=59, seconds=59), 102.0
    assert clock() == T0 + timedelta(seconds=2)  # still counting, not frozen
    wall[0], mono[0] = T0 + timedelta(seconds=10), 103.0  # corrected: forward again
    assert clock() == T0 + timedelta(seconds=10) and not clock.behind


def test_it_follows_the_wall_clock_when_nothing_steps() -> None:
    wall, mono = [T0], [0.0]
    clock = SteadyClock(wall=lambda: wall[0], monotonic=lambda: mono[0])
    for second in range(1, 5):
        wall[0], mono[0] = T0 + timedelta(seconds=second), float(second)
        assert clock() == wall[0]


def test_after_a_forward_jump_the_scheduler_runs_once_instead_of_replaying_every_missed_run() -> (
    None
):
    from bot.runtime.interval import EveryInterval

    trigger = EveryInterval(seconds=0.5, timezone=UTC)
    last_run = T0
    now = T0 + timedelta(days=1)  # the clock jumped a day forward (or the process was frozen)
    assert trigger.get_next_fire_time(last_run, now) == now
    assert trigger.get_next_fire_time(now, now) == now + timedelta(seconds=0.5)
    assert trigger.get_next_fire_time(T0, T0) == T0 + timedelta(seconds=0.5)
