"""How every Slack listener runs: ack at once, work later, errors answered in one place.

Listeners are registered as `ack=ack_now, lazy=[guarded(work)]` with Bolt's
process-before-response mode: the ack is sent from the request itself, before any database or
Slack call, and the work runs on the listener pool. `guarded` turns a known error into a
friendly ephemeral answer and logs an unknown one with an id the user can quote (answering
inside the listener, because an exception escaping a listener after its ack can make Bolt drop
that ack). `@app.error` remains for errors raised before any listener runs.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App, Respond

from bot.errors import BotError

log = logging.getLogger(__name__)


def ack_now(ack: Ack) -> None:
    """Acknowledge within Slack's 3 seconds, before doing anything else."""
    ack()


def answer(error: Exception, respond: Respond | None) -> None:
    """Tell the user what went wrong, ephemerally; log what we did not expect."""
    if isinstance(error, BotError):
        text = f":warning: {error.message}"
    else:
        error_id = uuid.uuid4().hex[:12]
        log.error("slack handler failed, error id %s", error_id, exc_info=error)
        text = f":x: Something went wrong (error id `{error_id}`); nothing more was done."
    if respond is not None:
        respond(text=text, response_type="ephemeral", replace_original=False)


def guarded(listener: Callable[..., None]) -> Callable[..., None]:
    """Wrap a listener so that its errors are answered by `answer`."""

    @functools.wraps(listener)  # Bolt injects arguments by the wrapped function's signature
    def wrapper(**kwargs: Any) -> None:
        try:
            listener(**kwargs)
        except Exception as exc:  # the single place listener errors are turned into answers
            answer(exc, kwargs.get("respond"))

    return wrapper


def register_error_handler(app: App) -> None:
    """Attach the global error handler (errors outside listeners)."""

    @app.error
    def on_error(error: Exception, respond: Respond | None) -> None:
        answer(error, respond)
