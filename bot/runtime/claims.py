"""One way to claim rows, for the four loops that work through a table on a schedule
(verification checks, rollout stages, webhook deliveries, the Slack outbox): select what is
due and unclaimed, then take each row with a conditional UPDATE, so two replicas (or a standby
taking over a dead leader's work once its claim lapses) never work on the same row at once.

`claim_due` does it all for the first three; the outbox picks its rows itself (it keeps each
thread's messages in order) and takes and releases each one with `take` and `release`.
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
    query = select(model).where(*due, _free(table, now)).order_by(col(table.id))
    if limit is not None:
        query = query.limit(limit)
    until = now + claim_for
    claimed = [
        row
        for row in session.exec(query).all()
        if take(session, row, now=now, until=until, also=also(row) if also else None)
    ]
    for row in claimed:
        session.expunge(row)
        setattr(row, "claimed_until", until)  # noqa: B010
    return claimed


def take(
    session: Session,
    row: SQLModel,
    *,
    now: datetime,
    until: datetime,
    also: ColumnElement[bool] | None = None,
) -> bool:
    """Claim `row` until `until` if no one holds it (and `also` holds); True if taken."""
    table: Any = type(row)
    conditions = [col(table.id) == getattr(row, "id"), _free(table, now)]  # noqa: B009
    if also is not None:
        conditions.append(also)
    taken = session.execute(
        update(table)
        .where(*conditions)
        .values(claimed_until=until)
        .execution_options(synchronize_session=False)
    )
    return bool(taken.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, model: type[SQLModel], row_id: int | None, held: datetime) -> None:
    """Drop a claim, only if it is still ours (`held`, the claim's end when we took it):
    never another process's claim on the same row."""
    table: Any = model
    session.execute(
        update(model)
        .where(col(table.id) == row_id, col(table.claimed_until) == held)
        .values(claimed_until=None)
        .execution_options(synchronize_session=False)
    )


def _free(table: Any, now: datetime) -> ColumnElement[bool]:
    return or_(col(table.claimed_until).is_(None), col(table.claimed_until) <= now)
