"""Routing changes announced when they commit.

`_switch` (the one place a routing row changes) calls `routing_changed` inside the change's
transaction. That does two things:

- on PostgreSQL it sends `NOTIFY` on this database and schema's channel: NOTIFY is
  transactional, so every process LISTENing (each server's change feed) hears it exactly when
  the change commits, and never hears a change that rolled back. The payload is short
  (`<revision> <prompt>`, read as such by every version of the bot); just before it, in the
  same statement, the state itself (JSON) goes on a second channel when it fits in a NOTIFY
  payload, so the other servers publish it without reading it back;
- it notes the new state on the session, and a session event hands the noted states to this
  process's listeners (the change feeds) right after the commit, in the committing thread, so
  they publish what was committed without reading it back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import URL, event, text
from sqlalchemy.orm import Session

from bot.models import RoutingState

log = logging.getLogger(__name__)

# The channel of the database and schema the session works in, computed by PostgreSQL itself
# so that the sender and the listener agree whatever the URL looks like; two schemas of one
# database (parallel test runs, two deployments) never hear each other.
CHANNEL_SQL = (
    "'rollback_bot_routing_' || "
    "left(md5(current_database() || '.' || coalesce(current_schema(), '')), 16)"
)
STATE_CHANNEL_SQL = CHANNEL_SQL.replace("_routing_", "_state_", 1)
_NOTIFY = text(f"SELECT pg_notify({CHANNEL_SQL}, :payload)")
_NOTIFY_WITH_STATE = text(
    f"SELECT pg_notify({STATE_CHANNEL_SQL}, :state), pg_notify({CHANNEL_SQL}, :payload)"
)
# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; a larger state (long templates)
# is announced by the short payload only, and read by the listeners.
STATE_PAYLOAD_MAX = 7900
_KEY = "rollback_bot_routing_changes"

# Called after a commit with the engine URL and {prompt: state} of what it changed.
Listener = Callable[[URL, dict[str, RoutingState]], None]
_listeners: list[Listener] = []
_listeners_lock = threading.Lock()


def routing_changed(session: Session, state: RoutingState) -> None:
    """The prompt's routing is now `state` in this (uncommitted) transaction."""
    session.info.setdefault(_KEY, {})[state.prompt] = state
    if session.get_bind().dialect.name == "postgresql":
        short = payload(state.prompt, state.revision)
        full = state.model_dump_json()
        if len(full.encode()) <= STATE_PAYLOAD_MAX:
            session.execute(_NOTIFY_WITH_STATE, {"state": full, "payload": short})
        else:
            session.execute(_NOTIFY, {"payload": short})


def payload(prompt: str, revision: int) -> str:
    """The NOTIFY payload: `<revision> <prompt>` (prompt names have no spaces)."""
    return f"{revision} {prompt}"


def parse_payload(text_: str) -> tuple[str, int | None]:
    """The prompt and revision of a payload (revision None if it is not one of ours)."""
    revision, _, prompt = text_.partition(" ")
    if prompt and revision.isdigit():
        return prompt, int(revision)
    return text_, None


def add_listener(listener: Listener) -> None:
    """Call `listener` after every commit in this process that changed routing."""
    with _listeners_lock:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    """Stop calling `listener`."""
    with _listeners_lock:
        if listener in _listeners:
            _listeners.remove(listener)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    changed: dict[str, RoutingState] | None = session.info.pop(_KEY, None)
    if not changed:
        return
    url = session.get_bind().engine.url
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(url, dict(changed))
        except Exception:  # the change is committed: a listener's fault must not undo that
            log.exception("routing change listener failed")


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_KEY, None)
