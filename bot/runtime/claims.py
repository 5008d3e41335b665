"""One way to claim due rows, for the loops that work through a table on a schedule
(verification checks, rollout stages, webhook deliveries): select what is due and unclaimed,
then take each row with a conditional UPDATE, so two replicas (or a standby taking over a
dead leader's work once its claim lapses) never work on the same row at once.

The Slack outbox claims its own way (bot/slack/outbox.py): it must also keep each thread's
messages in order, which these loops need not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, or_, update
from sqlmodel import Session, SQLModel, col, select

Row = TypeVar("Row", bound=SQLModel)


def claim_due(
    session: Session,
    model: type[Row],
    *,
    due: Sequence[ColumnElement[bool]],
    now: datetime,
    claim_for: timedelta,
    also: Callable[[Row], ColumnElement[bool]] | None = None,
    limit: int | None = None,
) -> list[Row]:
    """The rows of `model` matching `due` that no one holds, each now claimed until
    `now + claim_for` (detached from the session, `claimed_until` set); `also` adds a condition
    per row to its claim (a compare-and-set on the row's progress)."""
    table: Any = model
    free = or_(col(table.claimed_until).is_(None), col(table.claimed_until) <= now)
    query = select(model).where(*due, free).order_by(col(table.id))
    if limit is not None:
        query = query.limit(limit)
    until = now + claim_for
    claimed = []
    for row in session.exec(query).all():
        conditions = [col(table.id) == getattr(row, "id"), free]  # noqa: B009
        if also is not None:
            conditions.append(also(row))
        taken = session.execute(
            update(model)
            .where(*conditions)
            .values(claimed_until=until)
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            claimed.append(row)
    for row in claimed:
        session.expunge(row)
        setattr(row, "claimed_until", until)  # noqa: B010
    return claimed
