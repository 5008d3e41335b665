"""A lease row in the database: only its holder runs the checker; others stand by."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, or_, update
from sqlmodel import col

from bot.db import upsert_insert, write_session
from bot.models import Lease


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
