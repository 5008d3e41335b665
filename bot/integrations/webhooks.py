"""Change webhooks: every routing change, signed and sent to the URLs its prompt's policy lists.

Deliveries are rows (one per audit entry and URL), created from the audit log by a cursor and
retried with backoff until delivered or given up; their outcome shows in the prompt's history.
Signature: header `X-Rollback-Bot-Signature: v1=<hex HMAC-SHA256(secret, "v1:{ts}:{body}")>`
with `X-Rollback-Bot-Timestamp: {ts}` — verify both, and refuse timestamps older than 5 minutes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine, update
from sqlmodel import col, select

from bot.db import upsert_insert, write_session
from bot.models import (
    AuditEntry,
    ChangeKind,
    Cursor,
    OutboxStatus,
    Prompt,
    WebhookDelivery,
    utcnow,
)
from bot.policy import PolicySet
from bot.runtime.claims import claim_due

if TYPE_CHECKING:  # httpx is loaded for the first delivery, not when the checker starts
    import httpx

log = logging.getLogger(__name__)

CURSOR = "webhooks"
MAX_ATTEMPTS = 12
CLAIM_FOR = timedelta(seconds=60)
ROUTING_KINDS = (ChangeKind.DEPLOY, ChangeKind.ROLLBACK, ChangeKind.SPLIT)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header value for `body` sent at `timestamp`."""
    base = f"v1:{timestamp}:".encode() + body
    return "v1=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class WebhookDispatcher:
    """Turns new audit entries into deliveries and delivers the due ones."""

    def __init__(
        self,
        *,
        engine: Engine,
        policies: PolicySet,
        secret: str | None,
        client: httpx.Client | None = None,
        clock: Callable[[], datetime] = utcnow,
        format: str = "json",
    ) -> None:
        self.engine, self.policies, self.secret, self.clock = engine, policies, secret, clock
        self.format = format  # json, cloudevents-structured or cloudevents-binary
        self._client = client

    @property
    def client(self) -> httpx.Client:
        """The HTTP client, made for the first delivery: making one loads the TLS stack and
        the CA bundle, which a server whose policies list no webhooks never needs."""
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=10)
        return self._client

    def run_due(self) -> int:
        """Queue deliveries for new changes, then attempt the due ones; returns attempts made."""
        self._enqueue_new()
        return self._deliver_due()

    def _enqueue_new(self) -> None:
        with write_session(self.engine) as session:
            cursor = session.get(Cursor, CURSOR)
            if cursor is None:  # start from now: history is not replayed to new webhooks
                newest = select(AuditEntry.id).order_by(col(AuditEntry.id).desc())
                latest = session.exec(newest).first()
                session.add(Cursor(name=CURSOR, position=latest or 0))
                return
            entries = session.exec(
                select(AuditEntry, Prompt.name)
                .join(Prompt, col(Prompt.id) == AuditEntry.prompt_id)
                .where(
                    col(AuditEntry.id) > cursor.position, col(AuditEntry.kind).in_(ROUTING_KINDS)
                )
                .order_by(col(AuditEntry.id))
                .limit(500)
            ).all()
            insert = upsert_insert(session)
            for entry, prompt in entries:
                for url in self.policies.for_prompt(prompt).settings.webhooks:
                    session.execute(
                        insert(WebhookDelivery)
                        .values(
                            audit_id=entry.id,
                            url=str(url),
                            payload=_payload(entry, prompt),
                            status=OutboxStatus.PENDING,
                            attempts=0,
                            next_attempt_at=self.clock(),
                        )
                        .on_conflict_do_nothing(index_elements=["audit_id", "url"])
                    )
            if entries:
                cursor.position = max(entry.id or 0 for entry, _ in entries)

    def _deliver_due(self) -> int:
        now = self.clock()
        with write_session(self.engine) as session:
            rows = claim_due(
                session,
                WebhookDelivery,
                due=[
                    col(WebhookDelivery.status) == OutboxStatus.PENDING,
                    col(WebhookDelivery.next_attempt_at) <= now,
                ],
                now=now,
                claim_for=CLAIM_FOR,
                limit=50,
            )
            claimed = [(row.id, row.url, row.payload, row.attempts) for row in rows]
        for delivery_id, url, payload, attempts in claimed:
            self._deliver(delivery_id or 0, url, payload, attempts)
        return len(claimed)

    def _deliver(
        self, delivery_id: int, url: str, payload: dict[str, object], attempts: int
    ) -> None:
        import httpx

        body, headers = encode(payload, self.format)
        timestamp = int(time.time())
        headers |= {
            "X-Rollback-Bot-Timestamp": str(timestamp),
            "X-Rollback-Bot-Delivery": str(delivery_id),
        }
        if self.secret:
            headers["X-Rollback-Bot-Signature"] = sign(self.secret, body, timestamp)
        try:
            answer = self.client.post(url, content=body, headers=headers)
            result, ok = f"HTTP {answer.status_code}", 200 <= answer.status_code < 300
        except httpx.HTTPError as exc:
            result, ok = f"{exc.__class__.__name__}: {exc}"[:500], False
        attempts += 1
        now = self.clock()
        values: dict[str, object] = {
            "attempts": attempts,
            "last_result": result,
            "claimed_until": None,
        }
        if ok:
            values |= {"status": OutboxStatus.SENT, "delivered_at": now}
        elif attempts >= MAX_ATTEMPTS:
            values |= {"status": OutboxStatus.FAILED}
            log.error("webhook %s given up after %d attempts: %s", url, attempts, result)
        else:
            values |= {"next_attempt_at": now + timedelta(seconds=min(2**attempts, 600))}
        with write_session(self.engine) as session:
            session.execute(
                update(WebhookDelivery)
                .where(col(WebhookDelivery.id) == delivery_id)
                .values(values)
                .execution_options(synchronize_session=False)
            )


CLOUDEVENT_TYPE = "dev.rollback-bot.routing.changed"


def encode(payload: dict[str, object], format: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a delivery: the bot's own JSON, or a CloudEvents 1.0 event in
    the HTTP binding's structured or binary mode (the same signature over the body either way).
    The event id is the audit entry's, so a retried delivery carries the same id."""
    data = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    if format == "json":
        return data, {"Content-Type": "application/json"}
    attributes = {
        "specversion": "1.0",
        "id": f"audit-{payload['audit_id']}",
        "source": f"/rollback-bot/prompts/{payload['prompt']}",
        "type": CLOUDEVENT_TYPE,
        "subject": str(payload["prompt"]),
        "time": str(payload["timestamp"]),
    }
    if format == "cloudevents-binary":
        headers = {f"ce-{name}": value for name, value in attributes.items()}
        return data, {**headers, "Content-Type": "application/json"}
    event = {**attributes, "datacontenttype": "application/json", "data": payload}
    body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
    return body, {"Content-Type": "application/cloudevents+json"}


def _payload(entry: AuditEntry, prompt: str) -> dict[str, object]:
    return {
        "event": "routing.changed",
        "audit_id": entry.id,
        "prompt": prompt,
        "kind": entry.kind.value,
        "from_version": entry.from_version,
        "to_version": entry.to_version,
        "split": entry.split,
        "revision": entry.revision,
        "operator": entry.operator,
        "trigger": entry.trigger.value,
        "rule": entry.rule,
        "reason": entry.reason,
        "timestamp": entry.created_at.isoformat(),
    }
