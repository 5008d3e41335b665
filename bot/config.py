"""The bot's settings: one class, read once from the environment and an optional `.env`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.errors import ConfigError

# Values people paste from examples; a secret that looks like one is refused at start-up.
PLACEHOLDERS = frozenset(
    {
        "changeme",
        "change-me",
        "secret",
        "token",
        "password",
        "xxx",
        "todo",
        "placeholder",
        "your-token-here",
        "replace-me",
    }
)
MIN_TOKEN_LENGTH = 16


ADVICE_GENERATE = "generate one with `rollback-bot token new`"
ADVICE_FROM_SLACK = "copy it from the Slack app's Basic Information / OAuth & Permissions pages"


def check_secret(value: SecretStr | None, hint: str = ADVICE_GENERATE) -> SecretStr | None:
    if value is None:
        return None
    raw = value.get_secret_value().strip()
    if not raw:
        return None
    if raw.lower() in PLACEHOLDERS or raw.lower().startswith(("<", "your")):
        raise ValueError(f"looks like a placeholder; {hint}")
    if len(raw) < MIN_TOKEN_LENGTH:
        raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} characters")
    return SecretStr(raw)


class Settings(BaseSettings):
    """Everything the bot reads from its environment (see docs/configuration.md)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_file_encoding="utf-8")

    database_url: str = Field(default="sqlite:///./rollback-bot.db", min_length=1)
    rollback_api_token: SecretStr | None = None
    # Extra named API tokens, "name=token,name2=token2"; the name is recorded as the operator.
    rollback_api_tokens: str = ""
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    host: str = "127.0.0.1"
    # An untargeted rollback within this many seconds of the previous one is refused as a duplicate.
    rollback_dedup_seconds: Annotated[float, Field(ge=0)] = 300.0
    db_pool_size: Annotated[int, Field(ge=1, le=200)] = 10
    db_max_overflow: Annotated[int, Field(ge=0, le=200)] = 20
    log_level: str = "INFO"
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1_048_576
    rollback_policy_dir: str = "./policies"
    # How often serve looks for edits of the policy files (SIGHUP reloads at once).
    policy_poll_seconds: Annotated[float, Field(gt=0, le=3600)] = 2.0
    # Seconds between checker passes (the seed's loop runs every 30 s).
    # A pass reads every live version: not more often than 5 a second; the runbook's 2-minute
    # limit for a critical rollback needs a pass at least every minute.
    rollback_check_interval: Annotated[float, Field(ge=0.2, le=60)] = 30.0
    checker_enabled: bool = True
    # A replica that stops renewing loses the checker lease after this many seconds
    # (0: three check intervals, at least 5 s).
    checker_lease_seconds: Annotated[float, Field(ge=0)] = 0.0
    metrics_retention_hours: Annotated[float, Field(gt=0)] = 48.0
    metrics_source_down_after: Annotated[int, Field(ge=1)] = 3
    # Slack (optional: without SLACK_BOT_TOKEN, notices go to the log).
    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"
    # Sign in with Slack on the dashboard (OpenID Connect): the Slack app's client id and
    # secret (Basic Information → App Credentials); unset, the dashboard takes API tokens only.
    slack_client_id: str | None = None
    slack_client_secret: SecretStr | None = None
    slack_incidents_channel: str = "#incidents"
    slack_oncall_users: str = ""
    slack_oncall_usergroup: str = ""
    slack_listener_threads: Annotated[int, Field(ge=1, le=256)] = 8
    # The outbox's retry backoff stops growing here (messages land this soon after Slack is back)
    slack_retry_max_seconds: Annotated[float, Field(gt=0, le=3600)] = 5.0
    # A message still undelivered this long after it was queued is given up (logged, counted).
    slack_give_up_seconds: Annotated[float, Field(ge=1)] = 86400.0
    # PagerDuty Events API v2 (optional): paged when a rollback does not bring metrics back.
    pagerduty_routing_key: SecretStr | None = None
    pagerduty_events_url: str = "https://events.pagerduty.com/v2/enqueue"
    verify_poll_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    # Signs webhook deliveries (HMAC-SHA256); required when a policy lists webhooks.
    rollback_webhook_secret: SecretStr | None = None
    # How change webhooks are sent: the bot's JSON, or CloudEvents 1.0 (structured or binary).
    rollback_webhook_format: Literal["json", "cloudevents-structured", "cloudevents-binary"] = (
        "json"
    )
    # Charts of an incident's figures uploaded into its Slack thread (needs files:write).
    slack_charts: bool = False
    # OTLP trace exports (POST /v1/traces): the span attributes naming the prompt, its version
    # and a quality score (0..1) (docs/opentelemetry.md).
    otlp_prompt_attribute: str = Field(default="gen_ai.prompt.name", min_length=1)
    otlp_version_attribute: str = Field(default="gen_ai.prompt.version", min_length=1)
    otlp_quality_attribute: str = Field(default="gen_ai.evaluation.score.value", min_length=1)
    # Alertmanager's webhook (POST /api/alertmanager): the alert labels naming the prompt and
    # its version (docs/alertmanager.md).
    alertmanager_prompt_label: str = Field(default="prompt", min_length=1)
    alertmanager_version_label: str = Field(default="version", min_length=1)
    # Routing changes are pushed to connected clients at commit (this process) or by
    # LISTEN/NOTIFY (other processes, PostgreSQL). Besides, each server reads one value (the
    # routing fingerprint) this often to catch changes nothing pushed: SQLite, whose other
    # processes (the CLI) cannot notify, and PostgreSQL while the LISTEN connection is down...
    stream_poll_seconds: Annotated[float, Field(gt=0, le=60)] = 0.1
    # ... and this often on PostgreSQL while LISTEN works (a safety net).
    stream_safety_poll_seconds: Annotated[float, Field(gt=0, le=300)] = 2.0

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if value.startswith("postgres://"):  # Heroku's and others' spelling of the scheme
            value = "postgresql://" + value.removeprefix("postgres://")
        if not value.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
            raise ValueError(
                "must start with sqlite:// or postgresql:// (for example sqlite:///./rollback-bot.db)"
            )
        path = value.split("///", 1)[-1].split("?", 1)[0] if value.startswith("sqlite") else ""
        if path and path != ":memory:":
            folder = Path(path).expanduser().parent
            if not folder.is_dir():
                raise ValueError(
                    f"the folder {folder} does not exist: create it (mkdir -p {folder}) or "
                    "choose another path"
                )
        return value

    @field_validator("rollback_api_token")
    @classmethod
    def _token_not_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        return check_secret(value)

    @field_validator("slack_bot_token", "slack_signing_secret", "slack_app_token")
    @classmethod
    def _slack_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        raw = value.get_secret_value().strip()
        prefix = {"slack_bot_token": "xoxb-", "slack_app_token": "xapp-"}.get(info.field_name or "")
        if prefix and not raw.startswith(prefix):
            raise ValueError(f"must start with {prefix} (copy it from the Slack app's settings)")
        return check_secret(SecretStr(raw), ADVICE_FROM_SLACK)

    @field_validator("rollback_webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        return check_secret(value)

    @field_validator("pagerduty_routing_key")
    @classmethod
    def _routing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if len(value.get_secret_value().strip()) != 32:
            raise ValueError("must be the 32-character integration key of a PagerDuty service")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("slack_oncall_users")
    @classmethod
    def _user_ids(cls, value: str) -> str:
        for user in filter(None, (u.strip() for u in value.split(","))):
            if not re.fullmatch(r"[UW][A-Z0-9]+", user):
                raise ValueError(f"{user!r} is not a Slack user ID (like U012ABCDEF)")
        return value

    @field_validator("slack_oncall_usergroup")
    @classmethod
    def _group_id(cls, value: str) -> str:
        if value.strip() and not re.fullmatch(r"S[A-Z0-9]+", value.strip()):
            raise ValueError(f"{value!r} is not a Slack user group ID (like S012ABCDEF)")
        return value.strip()

    @model_validator(mode="after")
    def _slack_complete(self) -> Settings:
        if self.slack_bot_token and not (self.slack_signing_secret or self.slack_app_token):
            raise ValueError(
                "SLACK_SIGNING_SECRET is required with SLACK_BOT_TOKEN (or set SLACK_APP_TOKEN "
                "for Socket Mode)"
            )
        return self

    def oncall_users(self) -> frozenset[str]:
        """The user IDs listed in SLACK_ONCALL_USERS."""
        return frozenset(u.strip() for u in self.slack_oncall_users.split(",") if u.strip())

    @field_validator("rollback_api_tokens")
    @classmethod
    def _named_tokens(cls, value: str) -> str:
        names: dict[str, str] = {}
        tokens: dict[str, str] = {}
        for name, token in _split_named_tokens(value):
            if not name or not token:
                raise ValueError("each entry must be name=token, comma-separated")
            if token in tokens:
                raise ValueError(
                    f"{tokens[token]!r} and {name!r} have the same token: a request with it "
                    "could not say who made it; give each its own"
                )
            if name in names:
                raise ValueError(f"{name!r} is listed twice; list each name once")
            tokens[token], names[name] = name, token
            try:
                check_secret(SecretStr(token))
            except ValueError as exc:
                raise ValueError(f"token {name!r} {exc}") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return upper

    def lease_ttl_seconds(self) -> float:
        """How long the checker lease lasts without renewal."""
        return self.checker_lease_seconds or max(3 * self.rollback_check_interval, 5.0)

    def api_tokens(self) -> dict[str, str]:
        """Map each accepted API token to the operator name it is recorded as."""
        tokens = {token: name for name, token in _split_named_tokens(self.rollback_api_tokens)}
        if self.rollback_api_token is not None:
            tokens[self.rollback_api_token.get_secret_value()] = "api"
        return tokens


def _split_named_tokens(value: str) -> list[tuple[str, str]]:
    pairs = []
    for entry in filter(None, (part.strip() for part in value.split(","))):
        name, _, token = entry.partition("=")
        pairs.append((name.strip(), token.strip()))
    return pairs


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning a bad value into a one-line ConfigError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if not first["loc"]:  # a rule across several variables names them in its message
            raise ConfigError(message) from None
        raise ConfigError(f"{str(first['loc'][0]).upper()}: {message}") from None
