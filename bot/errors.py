"""The bot's exceptions. Domain code raises them; each surface maps them once.

BotError
├── ConfigError                  a setting is missing or malformed (start-up stops)
├── DatabaseUnavailable          the database cannot be reached or is locked (retry later)
├── LeaseLost                    a leader-only write from a process that lost the lease
├── NotAuthorized                a Slack user who is not on call for the prompt
├── SchemaOutOfDate              the database needs `rollback-bot db upgrade`
│   └── SchemaTooNew             a later release migrated it; this one cannot use it
└── RegistryError
    ├── NotFound
    │   ├── PromptNotFound       no prompt of that name
    │   └── VersionNotFound      no such version of the prompt (lists recent ones)
    ├── InvalidRequest           well-formed but cannot be done (nothing to roll back to)
    └── Conflict
        ├── VersionExists        the label is taken for this prompt
        ├── AlreadyActive        the target already serves all traffic
        ├── VersionMarkedBad     the target was rolled back away from (use force)
        └── ConcurrentChange     someone else changed the routing first
            └── AlreadyRolledBack    ... and it was a rollback: says who, from what, to what
"""

from __future__ import annotations


class BotError(Exception):
    """Base of every error the bot reports to a user."""

    code = "error"

    def __init__(self, message: str, *, slack_text: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The same message as Slack should show it (people as mentions), when it differs.
        self.slack_text = slack_text or message


class ConfigError(BotError):
    """A setting is missing or malformed; the message names the variable."""

    code = "config_error"


class DatabaseUnavailable(BotError):
    """The database is down, unreachable or locked; the caller may retry."""

    code = "database_unavailable"


class LeaseLost(BotError):
    """This process acted as leader but no longer holds the lease: its write was refused."""

    code = "lease_lost"


class NotAuthorized(BotError):
    """The person may not do this (not on call for the prompt); nothing was done."""

    code = "not_authorized"


class SchemaOutOfDate(BotError):
    """The database schema is behind this release."""

    code = "schema_out_of_date"


class SchemaTooNew(SchemaOutOfDate):
    """The database schema is ahead of this release (a release was rolled back)."""

    code = "schema_too_new"


class RegistryError(BotError):
    """A registry operation was refused; nothing was changed."""


class NotFound(RegistryError):
    """The thing asked for does not exist."""

    code = "not_found"


class PromptNotFound(NotFound):
    """No prompt of that name is registered."""

    code = "prompt_not_found"


class VersionNotFound(NotFound):
    """The prompt has no version with that label."""

    code = "version_not_found"

    def __init__(self, message: str, recent_versions: list[str]) -> None:
        super().__init__(message)
        self.recent_versions = recent_versions


class InvalidRequest(RegistryError):
    """The request is well-formed but cannot be carried out as asked."""

    code = "invalid_request"


class InvalidEvents(InvalidRequest):
    """An events batch was refused whole; `problems` names each bad index and field."""

    code = "invalid_events"

    def __init__(self, problems: list[dict[str, str]]) -> None:
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        super().__init__(f"batch refused, nothing stored: {summary}{more}")
        self.problems = problems


class Conflict(RegistryError):
    """The request conflicts with the registry's current state."""

    code = "conflict"


class VersionExists(Conflict):
    """A version with that label already exists for the prompt."""

    code = "version_exists"


class AlreadyActive(Conflict):
    """The target version already serves all of the prompt's traffic."""

    code = "already_active"


class VersionMarkedBad(Conflict):
    """The target version is marked bad; pass force to use it anyway."""

    code = "version_marked_bad"


class ConcurrentChange(Conflict):
    """The routing changed between reading and writing it; someone else acted first."""

    code = "concurrent_change"


class AlreadyRolledBack(ConcurrentChange):
    """The prompt was just rolled back by someone else."""

    code = "already_rolled_back"
