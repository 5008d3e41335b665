"""Fail points: named places where the reliability suite makes this process die on purpose.

`ROLLBACK_FAILPOINTS=rollback.committed,verify.checked@2` arms them: the process SIGKILLs itself
when it reaches an armed point (on its Nth visit with `@N`), exactly as a crashed host would
stop it: no `finally`, no commit, no flush. Unset (as in production) a fail point costs one
lookup in an empty set. The armed names are read once, at import.

Points: `rollback.before_commit` (inside the rollback transaction, after the routing, audit
row, verification row and incident are written), `rollback.committed` (after that commit,
before anything else), `verify.claimed` (a verification check claimed, not yet measured),
`verify.checked` (a check's result written, not yet committed), `rollout.before_commit` (a
rollout stage written, not yet committed), `outbox.claimed` (Slack messages claimed for
delivery, not yet sent), `outbox.sent` (a message accepted by Slack, not yet recorded).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

ENV = "ROLLBACK_FAILPOINTS"


def _parse(value: str) -> dict[str, int]:
    """`name[@N],...` → {name: N}; a malformed entry is left unarmed, with a warning naming it."""
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, at, nth = item.partition("@")
        if not name or (at and not (nth.isdigit() and int(nth) > 0)):
            log.warning("%s: ignoring %r (expected name or name@N with N >= 1)", ENV, item)
            continue
        armed[name] = int(nth) if at else 1
    return armed


_ARMED = _parse(os.environ.get(ENV, ""))
_visits: dict[str, int] = {}
_lock = threading.Lock()


def failpoint(name: str) -> None:
    """Die here (SIGKILL) if `name` is armed and this is the visit it is armed for."""
    if name not in _ARMED:
        return
    with _lock:
        _visits[name] = _visits.get(name, 0) + 1
        if _visits[name] != _ARMED[name]:
            return
    log.critical("fail point %s reached (visit %d): killing this process", name, _visits[name])
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
