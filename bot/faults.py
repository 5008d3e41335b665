"""Fail points: named places where the reliability suite makes this process die on purpose.

`ROLLBACK_FAILPOINTS=rollback.committed,verify.checked@2` arms them: the process SIGKILLs itself
when it reaches an armed point (on its Nth visit with `@N`), exactly as a crashed host would
stop it: no `finally`, no commit, no flush. With `:stop` (`rollout.judged:stop`) it
SIGSTOPs itself instead, as a GC pause or a frozen VM would, until the suite sends SIGCONT.
Unset (as in production) a fail point costs one lookup in an empty set. The armed names are
read once, at import.

Points: `rollback.before_commit` (inside the rollback transaction, after the routing, audit
row, verification row and incident are written), `rollback.committed` (after that commit,
before anything else), `verify.claimed` (a verification check claimed, not yet measured),
`verify.checked` (a check's result written, not yet committed), `rollout.before_commit` (a
rollout stage written, not yet committed; visited at every look at a rollout),
`rollout.judged` (a rollout's stage is due and its figures measured, nothing written yet),
`outbox.claimed` (Slack messages claimed for delivery, not yet sent), `outbox.sent` (a message
accepted by Slack, not yet recorded).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

ENV = "ROLLBACK_FAILPOINTS"


def _parse(value: str) -> dict[str, tuple[int, signal.Signals]]:
    """`name[@N][:stop],...` → {name: (N, signal)}; a malformed entry is left unarmed, with a
    warning naming it."""
    armed: dict[str, tuple[int, signal.Signals]] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        point, colon, action = item.partition(":")
        name, at, nth = point.partition("@")
        if (
            not name
            or (at and not (nth.isdigit() and int(nth) > 0))
            or (colon and action != "stop")
        ):
            log.warning("%s: ignoring %r (expected name, name@N, name[@N]:stop)", ENV, item)
            continue
        armed[name] = (int(nth) if at else 1, signal.SIGSTOP if colon else signal.SIGKILL)
    return armed


_ARMED = _parse(os.environ.get(ENV, ""))
_visits: dict[str, int] = {}
_lock = threading.Lock()


def failpoint(name: str) -> None:
    """Die (SIGKILL) or freeze (SIGSTOP) here if `name` is armed for this visit."""
    if name not in _ARMED:
        return
    nth, action = _ARMED[name]
    with _lock:
        _visits[name] = _visits.get(name, 0) + 1
        if _visits[name] != nth:
            return
    what = "freezing" if action == signal.SIGSTOP else "killing"
    log.critical("fail point %s reached (visit %d): %s this process", name, _visits[name], what)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), action)
