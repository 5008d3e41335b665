"""Logging set-up: JSON lines when not on a terminal (for log shippers), text on a terminal.

Every record about an incident carries its id: pass `extra={"incident": id}` (the checker,
notifier and Slack listeners do), and it appears as the `incident` field.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
CONTEXT_FIELDS = ("incident", "prompt", "version", "rollout")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str, *, json_lines: bool | None = None) -> None:
    """Route the bot's and the servers' logs to stderr, as JSON unless stderr is a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    use_json = not sys.stderr.isatty() if json_lines is None else json_lines
    handler.setFormatter(JsonFormatter() if use_json else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # slack_sdk logs every failed call at ERROR: during an outage, two lines every few seconds
    # for as long as it lasts. The bot says it once instead (bot.slack.status: Slack
    # unreachable / back) and per message at INFO (bot.slack.outbox: "retry in ...").
    logging.getLogger("slack_sdk.web.base_client").setLevel(logging.CRITICAL)
    # Bolt reads SLACK_BOT_TOKEN from the environment and warns that it "will be unused"
    # beside the client the bot gives it (by design: bot/slack/app.py); not for operators.
    logging.getLogger("slack_bolt.App").addFilter(
        lambda record: "`token` will be unused" not in record.getMessage()
    )
    # APScheduler logs every run of every job at INFO (each second: the verifier, the rollout
    # driver...), which buried the notices; and "maximum number of running instances
    # reached" at WARNING when a round outlasts its interval, which only means the next run
    # waits. Each loop reports itself instead (bot.liveness: /healthz, /metrics, and a line
    # when a loop fails), so only APScheduler's own errors are kept.
    quiet = logging.DEBUG if root.level <= logging.DEBUG else logging.ERROR
    logging.getLogger("apscheduler").setLevel(quiet)
