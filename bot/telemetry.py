"""The bot's own telemetry, for GET /metrics (Prometheus text format).

In-process figures (pass durations, verdicts, Slack and metrics-source errors, leadership) are
counted where they happen; figures every replica shares (rollbacks by trigger, time from
detection to rollback and from rollback to recovery, the Slack outbox's depth) are read from
the database at scrape time, so any replica answers for the whole deployment.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlmodel import col

from bot.db import read_session
from bot.errors import BotError
from bot.models import (
    AuditEntry,
    ChangeKind,
    Incident,
    OutboxStatus,
    SlackOutbox,
    Verification,
    VerificationStatus,
)

REGISTRY = CollectorRegistry()
CHECK_SECONDS = Histogram(
    "rollback_bot_check_seconds",
    "Duration of one checker pass.",
    registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DECISIONS = Counter(
    "rollback_bot_decisions_total",
    "Verdicts by severity and action.",
    ["severity", "action"],
    registry=REGISTRY,
)
SOURCE_ERRORS = Counter(
    "rollback_bot_metrics_source_errors_total",
    "Metrics source failures.",
    ["source"],
    registry=REGISTRY,
)
SLACK_ERRORS = Counter(
    "rollback_bot_slack_api_errors_total",
    "Slack Web API errors.",
    ["method", "error"],
    registry=REGISTRY,
)
OTLP_SPANS = Counter(
    "rollback_bot_otlp_spans_total",
    "Spans received at /v1/traces: accepted (stored as outcomes), ignored (no prompt "
    "attributes), rejected (reported back in partial_success).",
    ["outcome"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "rollback_bot_checker_leader",
    "1 while this process holds the checker lease.",
    registry=REGISTRY,
)
SLACK_STATE = Gauge(
    "rollback_bot_slack_state",
    "1 for Slack's state as this process last found it (ok, connecting, unreachable, "
    "token_refused), 0 for the others.",
    ["state"],
    registry=REGISTRY,
)
SLACK_GIVEN_UP = Counter(
    "rollback_bot_slack_messages_given_up_total",
    "Slack messages this process gave up on (an error about the message itself, or still "
    "undelivered after SLACK_GIVE_UP_SECONDS); each is logged as an error.",
    registry=REGISTRY,
)
POLICY_RELOADS = Counter(
    "rollback_bot_policy_reloads_total",
    "Policy reloads (SIGHUP or an edit of the files), applied or rejected (a rejected edit "
    "leaves the last good policy in force).",
    ["result"],
    registry=REGISTRY,
)
LOOP_ERRORS = Counter(
    "rollback_bot_loop_errors_total",
    "Rounds of a background loop that raised (the loop logs it, backs off and goes on).",
    ["loop"],
    registry=REGISTRY,
)
LOOP_LAST_OK = Gauge(
    "rollback_bot_loop_last_success_timestamp_seconds",
    "When a background loop last finished a round without an exception (Unix time).",
    ["loop"],
    registry=REGISTRY,
)
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)


class DatabaseCollector(Collector):
    """Figures read from the database at each scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        try:
            with read_session(self.engine) as session:
                by_trigger = session.execute(
                    select(col(AuditEntry.trigger), func.count())
                    .where(col(AuditEntry.kind) == ChangeKind.ROLLBACK)
                    .group_by(col(AuditEntry.trigger))
                ).all()
                outbox = dict(
                    session.execute(
                        select(col(SlackOutbox.status), func.count())
                        .where(col(SlackOutbox.status) != OutboxStatus.SENT)
                        .group_by(col(SlackOutbox.status))
                    ).all()
                )
                detection = session.execute(
                    select(col(Incident.opened_at), col(AuditEntry.created_at)).join(
                        AuditEntry, col(AuditEntry.id) == Incident.rollback_audit_id
                    )
                ).all()
                recovery = session.execute(
                    select(col(Verification.started_at), col(Verification.finished_at)).where(
                        col(Verification.status) == VerificationStatus.RECOVERED
                    )
                ).all()
        except BotError:
            return  # the database is down: /healthz says so; these figures are skipped
        rollbacks = GaugeMetricFamily(
            "rollback_bot_rollbacks", "Rollbacks recorded, by trigger.", labels=["trigger"]
        )
        for trigger, count in by_trigger:
            rollbacks.add_metric([str(getattr(trigger, "value", trigger))], count)
        yield rollbacks
        yield GaugeMetricFamily(
            "rollback_bot_slack_outbox_depth",
            "Slack messages waiting to be delivered.",
            value=outbox.get(OutboxStatus.PENDING, 0),
        )
        yield GaugeMetricFamily(
            "rollback_bot_slack_outbox_failed",
            "Slack messages given up (alert on any increase: a person never saw them).",
            value=outbox.get(OutboxStatus.FAILED, 0),
        )
        yield _histogram(
            "rollback_bot_detection_to_rollback_seconds",
            "From an incident opening to its rollback.",
            detection,
        )
        yield _histogram(
            "rollback_bot_rollback_to_recovery_seconds",
            "From a rollback to its verification finding recovery.",
            recovery,
        )


def _histogram(name: str, documentation: str, pairs: Sequence[Any]) -> Metric:
    seconds = [
        (end - start).total_seconds()
        for start, end in pairs
        if start is not None and end is not None
    ]
    buckets = [(str(b), sum(1 for s in seconds if s <= b)) for b in DURATION_BUCKETS]
    buckets.append(("+Inf", len(seconds)))
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], buckets, sum_value=sum(seconds))
    return family


def exposition(engine: Engine) -> bytes:
    """Everything, in the Prometheus text format."""
    collector = DatabaseCollector(engine)
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(REGISTRY) + generate_latest(registry)
