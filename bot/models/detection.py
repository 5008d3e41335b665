"""Detection's tables (metric buckets, incidents, the checker lease) and the events API shapes."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StrictBool
from pydantic import Field as PydanticField
from sqlalchemy import (
    JSON,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    Table,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from bot.models.registry import (
    PROMPT_NAME_MAX,
    VERSION_LABEL_MAX,
    NoNul,
    Trigger,
    UTCDateTime,
    enum_column,
    utcnow,
)

# Upper bounds (ms) of the latency histogram's buckets; the last one is open-ended.
# Roughly 25-30% wide, so a percentile read from it is within about 15% of the true value.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    5,
    10,
    25,
    50,
    75,
    100,
    150,
    200,
    300,
    400,
    500,
    650,
    800,
    1000,
    1250,
    1500,
    2000,
    2500,
    3000,
    4000,
    5000,
    6500,
    8000,
    10000,
    15000,
    20000,
    30000,
    60000,
    float("inf"),
)
HISTOGRAM_COLUMNS: tuple[str, ...] = tuple(f"h{i:02d}" for i in range(len(LATENCY_BOUNDS_MS)))

# One row per prompt version per minute: storage grows with versions x time, not requests.
# A Core table because ingestion upserts it in bulk and the checker sums it in SQL.
metric_bucket = Table(
    "metric_bucket",
    SQLModel.metadata,
    Column("version_id", Integer, ForeignKey("prompt_version.id"), primary_key=True),
    Column("minute", UTCDateTime, primary_key=True),
    Column("requests", Integer, nullable=False),
    Column("errors", Integer, nullable=False),
    Column("latency_sum_ms", Float, nullable=False),
    Column("quality_sum", Float, nullable=False),
    Column("quality_count", Integer, nullable=False),
    *(Column(name, Integer, nullable=False) for name in HISTOGRAM_COLUMNS),
    Index("ix_metric_bucket_minute", "minute"),
)


class Severity(enum.StrEnum):
    """How bad a verdict is, in the seed's terms."""

    NONE = "none"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """The one severity order: NONE < MEDIUM < HIGH < CRITICAL."""
        return list(Severity).index(self)


class Action(enum.StrEnum):
    """What the checker does about a verdict, weakest first."""

    NONE = "none"
    INSUFFICIENT_DATA = "insufficient_data"
    METRICS_UNAVAILABLE = "metrics_unavailable"
    OBSERVE = "observe"
    ALERT = "alert"
    PAGE = "page"
    ROLLBACK = "rollback"

    @property
    def rank(self) -> int:
        """The one action order, weakest first (as declared)."""
        return list(Action).index(self)


class IncidentStatus(enum.StrEnum):
    """Where an incident stands."""

    OPEN = "open"  # alerted or paged; waiting for people
    OBSERVING = "observing"  # medium severity; re-judged when its observation window ends
    ROLLED_BACK = "rolled_back"  # the version was rolled back (automatically or by a person)
    RESOLVED = "resolved"  # the breach cleared, or the version stopped serving


ACTIVE_INCIDENT = ("open", "observing")


class Incident(SQLModel, table=True):
    """One episode of a prompt version breaching its policy; repeated breaches update it."""

    __table_args__ = (
        # At most one active incident per version: a repeated breach updates it, never re-opens.
        Index(
            "uq_incident_active_version",
            "version_id",
            unique=True,
            sqlite_where=text("status IN ('open', 'observing')"),
            postgresql_where=text("status IN ('open', 'observing')"),
        ),
        Index("ix_incident_status", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    version_id: int = Field(foreign_key="prompt_version.id")
    prompt: str = Field(max_length=PROMPT_NAME_MAX)
    version: str = Field(max_length=VERSION_LABEL_MAX)
    status: IncidentStatus = Field(sa_column=enum_column(IncidentStatus))
    severity: Severity = Field(sa_column=enum_column(Severity))
    action: Action = Field(sa_column=enum_column(Action))
    summary: str = Field(default="", max_length=2000)
    decision: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    breaches: int = Field(default=1)
    opened_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_breach_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    healthy_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    observe_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    escalated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    rollback_audit_id: int | None = Field(default=None, foreign_key="audit_entry.id")
    # Who acknowledged first ("I'm on it"), and until when the checker keeps quiet about it.
    investigator: str | None = Field(default=None, max_length=200)
    # Everyone who acknowledged or joined, in order (Slack user ids).
    responders: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    quiet_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    resolved_by: str | None = Field(default=None, max_length=200)
    # When on-call was last paged for it, and how often (re-paged when nobody acts in time).
    last_paged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    pages: int = Field(default=0)


class OutboxStatus(enum.StrEnum):
    """Delivery state of an outgoing Slack message."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # given up after a permanent error or too many attempts


class SlackOutbox(SQLModel, table=True):
    """A Slack call that must happen exactly once, retried until delivered or given up."""

    __tablename__ = "slack_outbox"
    __table_args__ = (Index("ix_slack_outbox_due", "status", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    # One logical message, one row: a retried click or a second replica cannot add another.
    dedupe_key: str = Field(max_length=200, unique=True)
    method: str = Field(max_length=40)  # chat.postMessage, chat.update, dm, chat.postEphemeral
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # The message this one threads under or updates, by its dedupe key (its ts is filled in).
    parent_key: str | None = Field(default=None, max_length=200)
    incident_id: int | None = Field(default=None, foreign_key="incident.id", index=True)
    status: OutboxStatus = Field(default=OutboxStatus.PENDING, sa_column=enum_column(OutboxStatus))
    attempts: int = Field(default=0)
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    claimed_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, max_length=500)
    channel: str | None = Field(default=None, max_length=100)
    ts: str | None = Field(default=None, max_length=40)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Set when a post went out and its outcome is unknown (a crash, a timeout, a 5xx): Slack may
    # hold it already, so the next attempt looks for it there before posting again.
    in_doubt_since: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Lease(SQLModel, table=True):
    """A named lease held by one process at a time (the checker runs only where it is held)."""

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=200)
    acquired_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)


# --- events API -----------------------------------------------------------------------------

EVENTS_MAX = 5_000
BATCH_ID_MAX = 100


class Event(BaseModel):
    """One request outcome reported by a serving app."""

    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[str, PydanticField(min_length=1, max_length=PROMPT_NAME_MAX), NoNul]
    version: Annotated[str, PydanticField(min_length=1, max_length=VERSION_LABEL_MAX), NoNul]
    error: StrictBool
    latency_ms: Annotated[
        float, PydanticField(strict=True, ge=0, le=3_600_000, allow_inf_nan=False)
    ]
    quality: (
        Annotated[float, PydanticField(strict=True, ge=0, le=1, allow_inf_nan=False)] | None
    ) = None
    ts: datetime | None = None


class EventBatch(BaseModel):
    """A batch of outcomes; it is stored whole or not at all."""

    model_config = ConfigDict(extra="forbid")

    events: Annotated[list[Event], PydanticField(min_length=1, max_length=EVENTS_MAX)]
    # Optional, chosen by the sender (a UUID): a batch sent again with the same id (a retry
    # after a timeout or a 503 whose commit may have landed) is stored once.
    batch_id: (
        Annotated[
            str, PydanticField(min_length=1, max_length=BATCH_ID_MAX, pattern=r"^[A-Za-z0-9._:-]+$")
        ]
        | None
    ) = None
    # The sender's clock when it sent the batch (timezone required). With it, the server
    # corrects the events' `ts` by how far the sender's clock is off from its own, so an app
    # whose clock is wrong is still judged in the right window (docs/api.md, "Clocks").
    sent_at: datetime | None = None


class IngestResult(BaseModel):
    """What an accepted batch added (`duplicate`: that batch_id was already stored;
    `clock_offset_s`: how far the sender's clock was behind the server's, corrected)."""

    accepted: int
    buckets: int
    duplicate: bool = False
    clock_offset_s: float = 0.0


class IngestedBatch(SQLModel, table=True):
    """A batch_id already stored, kept as long as the metrics it added."""

    __tablename__ = "ingested_batch"

    batch_id: str = Field(primary_key=True, max_length=BATCH_ID_MAX)
    created_at: datetime = Field(sa_type=UTCDateTime, index=True)


class VerificationStatus(enum.StrEnum):
    """Where a post-rollback verification stands."""

    RUNNING = "running"
    RECOVERED = "recovered"
    ESCALATED = "escalated"  # metrics did not recover in time: on-call paged
    NOT_JUDGED = "not_judged"  # too little traffic (or no figures) to judge: told, not paged
    SUPERSEDED = "superseded"  # a later routing change replaced what it was verifying


class Verification(SQLModel, table=True):
    """After a rollback, the restored version checked on a schedule that survives restarts."""

    id: int | None = Field(default=None, primary_key=True)
    # One verification per rollback: written in the rollback's own transaction.
    audit_id: int = Field(foreign_key="audit_entry.id", unique=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    prompt: str = Field(max_length=PROMPT_NAME_MAX)
    version: str = Field(max_length=VERSION_LABEL_MAX)  # the restored version
    from_version: str | None = Field(default=None, max_length=VERSION_LABEL_MAX)
    status: VerificationStatus = Field(
        default=VerificationStatus.RUNNING, sa_column=enum_column(VerificationStatus)
    )
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    next_check_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    checks_done: int = Field(default=0)
    checks_total: int = Field(default=0)  # fixed from the policy at the first check
    claimed_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_figures: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    # Set once the reporting apps have all moved off the rolled-back version (or escalated).
    switch_reported: bool = Field(default=False)
    # The restored version's counts in the minute of the switch, before the switch: subtracted,
    # so that only traffic after the rollback is judged (minute buckets cannot split a minute).
    pre_switch: dict[str, float] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class RolloutKind(enum.StrEnum):
    """Traffic moved in stages: back to a good version, or forward to a new one."""

    GRADUAL_ROLLBACK = "gradual_rollback"  # the bad version's share 75 -> 50 -> 25 -> 0
    CANARY = "canary"  # the new version's share 1 -> 5 -> 25 -> 100


class RolloutStatus(enum.StrEnum):
    """Where a staged rollout stands."""

    RUNNING = "running"
    PAUSED = "paused"  # a stage breached: on-call decides (finish or abort)
    COMPLETED = "completed"
    ABORTED = "aborted"
    SUPERSEDED = "superseded"  # someone changed the routing the rollout set: their change stands


ACTIVE_ROLLOUT = ("running", "paused")


class Rollout(SQLModel, table=True):
    """A staged traffic move driven by the scheduler; persisted so it survives restarts."""

    __table_args__ = (
        Index(
            "uq_rollout_active_prompt",
            "prompt_id",
            unique=True,
            sqlite_where=text("status IN ('running', 'paused')"),
            postgresql_where=text("status IN ('running', 'paused')"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    prompt_id: int = Field(foreign_key="prompt.id")
    prompt: str = Field(max_length=PROMPT_NAME_MAX)
    kind: RolloutKind = Field(sa_column=enum_column(RolloutKind))
    # Traffic moves from `from_version` to `to_version`; `stages` are to_version's percentages.
    from_version: str = Field(max_length=VERSION_LABEL_MAX)
    to_version: str = Field(max_length=VERSION_LABEL_MAX)
    stages: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    stage: int = Field(default=0)  # index into stages of the share in force
    stage_seconds: float
    stage_started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    status: RolloutStatus = Field(
        default=RolloutStatus.RUNNING, sa_column=enum_column(RolloutStatus)
    )
    operator: str = Field(max_length=200)
    # Through what the operator started it (None: before release 0013 recorded it).
    trigger: Trigger | None = Field(default=None, sa_column=enum_column(Trigger, nullable=True))
    reason: str = Field(default="", max_length=1000)
    note: str | None = Field(default=None, max_length=2000)
    # The routing revision the rollout last wrote; any other revision means someone else
    # changed the routing, and the rollout must not overwrite it.
    revision: int | None = Field(default=None)
    claimed_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class RolloutRequest(BaseModel):
    """Start a gradual rollback (version: the target, default the previous known-good) or a
    canary (version: the new one)."""

    model_config = ConfigDict(extra="forbid")

    kind: RolloutKind
    version: (
        Annotated[str, PydanticField(min_length=1, max_length=VERSION_LABEL_MAX), NoNul] | None
    ) = None
    stage_seconds: (
        Annotated[float, PydanticField(strict=True, ge=1, le=86_400, allow_inf_nan=False)] | None
    ) = None
    reason: Annotated[str, PydanticField(max_length=1_000), NoNul] = ""


class RolloutPublic(BaseModel):
    """A rollout as the API shows it."""

    id: int
    prompt: str
    kind: RolloutKind
    from_version: str
    to_version: str
    stages: list[int]
    stage: int
    stage_seconds: float
    status: RolloutStatus
    note: str | None
    stage_started_at: datetime
    created_at: datetime
    finished_at: datetime | None


class WebhookDelivery(SQLModel, table=True):
    """A routing change sent to one webhook URL; retried from here until delivered or given up."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        UniqueConstraint("audit_id", "url", name="uq_webhook_delivery_audit_url"),
        Index("ix_webhook_delivery_due", "status", "next_attempt_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    audit_id: int = Field(foreign_key="audit_entry.id", index=True)
    url: str = Field(max_length=2000)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: OutboxStatus = Field(default=OutboxStatus.PENDING, sa_column=enum_column(OutboxStatus))
    attempts: int = Field(default=0)
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    claimed_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_result: str | None = Field(default=None, max_length=500)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Cursor(SQLModel, table=True):
    """How far a background job has read an append-only table (e.g. the audit log)."""

    name: str = Field(primary_key=True, max_length=64)
    position: int = Field(default=0)


class VersionSeen(SQLModel, table=True):
    """When a serving app last reported an outcome for a version (to see who still serves it)."""

    __tablename__ = "version_seen"

    version_id: int = Field(foreign_key="prompt_version.id", primary_key=True)
    last_event_at: datetime = Field(sa_type=UTCDateTime)


class IncidentPublic(BaseModel):
    """An incident as the API lists it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    prompt: str
    version: str
    status: IncidentStatus
    severity: Severity
    action: Action
    summary: str
    breaches: int
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    responders: list[str]
    pages: int
    rollback_audit_id: int | None


class TimelineEntry(BaseModel):
    """One thing that happened to an incident, when."""

    at: datetime
    what: str  # detected, paged, escalated, rolled_back, verification, closed
    detail: str


class IncidentDetail(IncidentPublic):
    """One incident with the verdict that opened it, its timeline and the post-mortem draft."""

    decision: dict[str, Any]
    timeline: list[TimelineEntry]
    postmortem_markdown: str
