"""The one place where errors in Slack listeners become answers to the user.

Listeners are wrapped with `guarded`: a known error becomes a friendly ephemeral answer, an
unknown one is logged with an id the user can quote. The wrapper answers inside the listener
rather than through Bolt's global handler because an exception raised after `ack()` can make
Bolt drop the ack it already has (its thread runner resets it), turning a good ack into a 404.
`@app.error` remains for errors raised before any listener runs.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any

from slack_bolt import App, Respond

from bot.errors import BotError

log = logging.getLogger(__name__)


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


def register(app: App) -> None:
    """Attach the global error handler (errors outside listeners)."""

    @app.error
    def on_error(error: Exception, respond: Respond | None) -> None:
        answer(error, respond)
