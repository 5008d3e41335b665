"""The Slack app's one error handler: known errors become a friendly ephemeral answer."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from slack_bolt import App, Respond

from bot.errors import BotError

log = logging.getLogger(__name__)


def register(app: App) -> None:
    """Attach the global error handler."""

    @app.error
    def on_error(error: Exception, body: dict[str, Any], respond: Respond | None) -> None:
        if isinstance(error, BotError):
            text = f":warning: {error.message}"
        else:
            error_id = uuid.uuid4().hex[:12]
            log.error("slack handler failed, error id %s", error_id, exc_info=error)
            text = f":x: Something went wrong (error id `{error_id}`); nothing was changed by it."
        if respond is not None:
            respond(text=text, response_type="ephemeral", replace_original=False)
