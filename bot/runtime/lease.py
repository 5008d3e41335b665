"""A lease row in the database: only its holder runs the checker; others stand by.

Every write the holder makes as leader is fenced (`acting_under`): just before it commits, the
transaction re-reads the lease row (FOR SHARE on PostgreSQL, so a takeover waits for it) and
commits only if this process still holds an unexpired lease. A leader paused past its lease
(GC, a VM freeze, SIGSTOP) and woken after a standby took over therefore applies nothing of the
step it had computed: its transaction is rolled back with LeaseLost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import Engine, or_, select, update
from sqlmodel import Session, col

from bot.db import COMMIT_GUARD, upsert_insert, write_session
from bot.errors import LeaseLost
from bot.models import Lease


@contextmanager
def acting_under(*, name: str, holder: str, clock: Callable[[], datetime]) -> Iterator[None]:
    """Fence every write transaction of this thread, while inside, on holding lease `name`."""

    def still_held(session: Session) -> None:
        query = select(col(Lease.holder), col(Lease.expires_at)).where(col(Lease.name) == name)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(read=True)
        row = session.execute(query).first()
        if row is None or row.holder != holder or row.expires_at <= clock():
            raise LeaseLost(
                f"this process ({holder}) no longer holds the {name} lease (it was paused or "
                "cut off past its lease); its step was not applied and the leader carries on"
            )

    token = COMMIT_GUARD.set(still_held)
    try:
        yield
    finally:
        COMMIT_GUARD.reset(token)


def hold(*, engine: Engine, name: str, holder: str, ttl: timedelta, now: datetime) -> bool:
    """Take or renew the lease; True while `holder` has it. A dead holder's lease expires."""
    with write_session(engine) as session:
        insert = upsert_insert(engine)
        session.execute(
            insert(Lease)
            .values(name=name, holder=holder, acquired_at=now, expires_at=now + ttl)
            .on_conflict_do_nothing()
        )
        taken = session.execute(
            update(Lease)
            .where(
                col(Lease.name) == name,
                or_(col(Lease.holder) == holder, col(Lease.expires_at) < now),
            )
            .values(holder=holder, expires_at=now + ttl)
            .execution_options(synchronize_session=False)
        )
        return bool(taken.rowcount == 1)  # type: ignore[attr-defined]


def release(*, engine: Engine, name: str, holder: str) -> None:
    """Give the lease up at shutdown so a standby takes over at once."""
    with write_session(engine) as session:
        session.execute(
            update(Lease)
            .where(col(Lease.name) == name, col(Lease.holder) == holder)
            .values(expires_at=datetime(1970, 1, 1))
            .execution_options(synchronize_session=False)
        )


def current_holder(*, engine: Engine, name: str, now: datetime) -> str | None:
    """Who holds the lease now, if anyone."""
    with write_session(engine) as session:
        lease = session.get(Lease, name)
        return lease.holder if lease is not None and lease.expires_at > now else None
