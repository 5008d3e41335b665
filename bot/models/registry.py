"""The registry's tables (prompts, versions, routing, audit) and the shapes the API exchanges."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StrictBool,
    StringConstraints,
    field_validator,
)
from pydantic import Field as PydanticField
from sqlalchemy import JSON, Column, DateTime, Index, Text, TypeDecorator, UniqueConstraint
from sqlalchemy import Enum as SAEnum
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

from bot.clock import steady_utcnow

# Documented limits (docs/api.md): names travel in URLs and Slack commands, so no spaces or slashes.
PROMPT_NAME_MAX = 100
VERSION_LABEL_MAX = 64
TEMPLATE_MAX = 200_000
REASON_MAX = 1_000
OPERATOR_MAX = 200
PROMPT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
VERSION_LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"

PromptName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        min_length=1,
        max_length=PROMPT_NAME_MAX,
        pattern=PROMPT_NAME_PATTERN,
    ),
]
VersionLabel = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        min_length=1,
        max_length=VERSION_LABEL_MAX,
        pattern=VERSION_LABEL_PATTERN,
    ),
]


def no_nul(value: str) -> str:
    """Refuse a NUL character: PostgreSQL cannot store one in text (SQLite can), so it is
    refused on both, with the field named, instead of failing at the database."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (\\u0000)")
    return value


NoNul = AfterValidator(no_nul)
Reason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=REASON_MAX), NoNul]
Template = Annotated[str, StringConstraints(min_length=1, max_length=TEMPLATE_MAX), NoNul]
Operator = Annotated[str, StringConstraints(max_length=OPERATOR_MAX), NoNul]


def _figure(*, ge: float | None = None, gt: float | None = None, le: float) -> object:
    return PydanticField(default=None, strict=True, allow_inf_nan=False, ge=ge, gt=gt, le=le)


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC; never earlier than the last answer, whatever
    the wall clock does (bot/clock.py)."""
    return steady_utcnow()


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC datetimes on every database and always returns them timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Health(enum.StrEnum):
    """What the registry knows of a version's behaviour in production."""

    UNKNOWN = "unknown"
    GOOD = "good"
    BAD = "bad"


class ChangeKind(enum.StrEnum):
    """What an audit entry records."""

    DEPLOY = "deploy"
    ROLLBACK = "rollback"
    SPLIT = "split"
    HEALTH = "health"


class Trigger(enum.StrEnum):
    """What started a change."""

    SLACK = "slack"
    API = "api"
    CLI = "cli"
    DASHBOARD = "dashboard"
    AUTOMATIC = "automatic"


def enum_column(enum_type: type[enum.StrEnum], *, nullable: bool = False) -> Column[str]:
    """Store an enum as its value in a plain VARCHAR (no native enum type to migrate)."""
    return Column(
        SAEnum(
            enum_type,
            native_enum=False,
            create_constraint=False,
            length=24,
            values_callable=lambda members: [m.value for m in members],
        ),
        nullable=nullable,
    )


# --- tables -------------------------------------------------------------------------------


class Prompt(SQLModel, table=True):
    """A named prompt whose versions the registry tracks."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=PROMPT_NAME_MAX, unique=True, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PromptVersion(SQLModel, table=True):
    """One immutable version of a prompt's template, with its health mark."""

    __tablename__ = "prompt_version"
    __table_args__ = (UniqueConstraint("prompt_id", "label", name="uq_prompt_version_label"),)

    id: int | None = Field(default=None, primary_key=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    label: str = Field(max_length=VERSION_LABEL_MAX)
    template: str = Field(sa_type=Text)
    created_by: str = Field(max_length=OPERATOR_MAX)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    baseline: dict[str, float] | None = Field(default=None, sa_column=Column(JSON))
    health: Health = Field(default=Health.UNKNOWN, sa_column=enum_column(Health))
    health_reason: str | None = Field(default=None, max_length=REASON_MAX)
    health_changed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # When the version last stopped serving traffic; orders the candidates for a rollback.
    last_active_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Routing(SQLModel, table=True):
    """Which version of a prompt serves traffic now; `revision` is the compare-and-set token."""

    prompt_id: int = Field(foreign_key="prompt.id", primary_key=True)
    active_version_id: int | None = Field(default=None, foreign_key="prompt_version.id")
    # {label: percent}; None means the active version takes 100%.
    split: dict[str, int] | None = Field(default=None, sa_column=Column(JSON))
    revision: int = Field(default=0)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # The version active before the current one and when the current one took over:
    # together they define the baseline window a new version is compared with.
    previous_version_id: int | None = Field(default=None, foreign_key="prompt_version.id")
    activated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class AuditEntry(SQLModel, table=True):
    """One change of routing or health, written in the transaction that made it."""

    __tablename__ = "audit_entry"
    __table_args__ = (Index("ix_audit_entry_prompt_id_id", "prompt_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    prompt_id: int = Field(foreign_key="prompt.id")
    kind: ChangeKind = Field(sa_column=enum_column(ChangeKind))
    from_version: str | None = Field(default=None, max_length=VERSION_LABEL_MAX)
    to_version: str | None = Field(default=None, max_length=VERSION_LABEL_MAX)
    split: dict[str, int] | None = Field(default=None, sa_column=Column(JSON))
    reason: str = Field(default="", max_length=REASON_MAX)
    operator: str = Field(max_length=OPERATOR_MAX)
    trigger: Trigger = Field(sa_column=enum_column(Trigger))
    rule: str | None = Field(default=None, max_length=200)
    revision: int
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# --- request shapes -------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Baseline(_Request):
    """Offline figures for a version (from an evaluation), used when live baseline traffic is
    too thin: known keys only, finite, each in its range."""

    error_rate_pct: Annotated[float | None, _figure(ge=0, le=100)]
    latency_p50_ms: Annotated[float | None, _figure(gt=0, le=3_600_000)]
    latency_p99_ms: Annotated[float | None, _figure(gt=0, le=3_600_000)]
    quality: Annotated[float | None, _figure(gt=0, le=1)]

    def figures(self) -> dict[str, float]:
        """The figures given (as stored on the version)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class VersionCreate(_Request):
    """Register a new version of a prompt (the prompt is created if new)."""

    version: VersionLabel
    template: Template
    baseline: Baseline | None = None
    created_by: Operator | None = None


class DeployRequest(_Request):
    """Make a version serve 100% of the prompt's traffic."""

    version: VersionLabel
    reason: Reason = ""
    force: StrictBool = False


class RollbackRequest(_Request):
    """Put a prompt back on a known-good version (the previous one when no target is named)."""

    prompt: PromptName
    target_version: VersionLabel | None = None
    reason: Reason = ""
    force: StrictBool = False
    # The version the caller saw active; if it changed meanwhile the rollback is refused.
    expected_version: VersionLabel | None = None


class SplitRequest(_Request):
    """Share a prompt's traffic across versions; percentages sum to 100."""

    split: dict[VersionLabel, Annotated[int, PydanticField(strict=True, ge=0, le=100)]]
    reason: Reason = ""
    force: StrictBool = False

    @field_validator("split")
    @classmethod
    def _sums_to_100(cls, value: dict[str, int]) -> dict[str, int]:
        if not value:
            raise ValueError("must name at least one version")
        total = sum(value.values())
        if total != 100:
            raise ValueError(f"percentages must sum to 100, not {total}")
        return value


class HealthRequest(_Request):
    """Mark a version good or bad by hand."""

    health: Health
    reason: Reason = ""


# --- response shapes ------------------------------------------------------------------------


class VersionPublic(BaseModel):
    """A version as the API shows it (without its template)."""

    version: str
    created_by: str
    created_at: datetime
    health: Health
    health_reason: str | None
    baseline: dict[str, float] | None
    last_active_at: datetime | None


class PromptSummary(BaseModel):
    """A prompt in a listing."""

    name: str
    active_version: str | None
    split: dict[str, int] | None
    version_count: int
    updated_at: datetime


class PromptDetail(BaseModel):
    """A prompt with its routing and versions, newest first."""

    name: str
    active_version: str | None
    split: dict[str, int] | None
    revision: int
    updated_at: datetime
    versions: list[VersionPublic]


class WebhookOutcome(BaseModel):
    """How the change's delivery to one webhook went."""

    url: str
    status: str  # pending, sent, failed
    attempts: int
    last_result: str | None


class AuditPublic(BaseModel):
    """An audit entry as the API shows it."""

    id: int
    kind: ChangeKind
    from_version: str | None
    to_version: str | None
    split: dict[str, int] | None
    reason: str
    operator: str
    trigger: Trigger
    rule: str | None
    revision: int
    timestamp: datetime
    webhooks: list[WebhookOutcome] = []


class ChangeResult(BaseModel):
    """The outcome of a deploy, rollback or split change."""

    success: bool = True
    prompt: str
    kind: ChangeKind
    from_version: str | None
    to_version: str | None
    split: dict[str, int] | None = None
    revision: int
    audit_id: int
    timestamp: datetime


class Resolved(BaseModel):
    """The version and template a serving app should use now."""

    prompt: str
    version: str
    template: str = Field(sa_type=Text)
    revision: int


class RoutingState(BaseModel):
    """Everything a serving app needs to choose a version for a prompt on its own."""

    prompt: str
    revision: int
    active_version: str | None
    split: dict[str, int] | None
    order: list[str]  # serving versions, oldest first (the order sticky splits use)
    templates: dict[str, str]  # the serving versions' templates
