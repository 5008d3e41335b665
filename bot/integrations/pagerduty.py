"""PagerDuty Events API v2: trigger a page when a rollback does not bring metrics back."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # httpx is loaded when PagerDuty is configured, not with the checker
    import httpx

log = logging.getLogger(__name__)

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
ATTEMPTS = 3


class PagerDuty:
    """Sends trigger events; the dedup key makes a retried or repeated event one PD incident."""

    def __init__(
        self, *, routing_key: str, url: str = EVENTS_URL, client: httpx.Client | None = None
    ) -> None:
        import httpx

        self.routing_key, self.url = routing_key, url
        self.client = client or httpx.Client(timeout=10)

    def trigger(
        self,
        *,
        dedup_key: str,
        summary: str,
        source: str,
        severity: str,
        details: dict[str, Any],
    ) -> bool:
        """Trigger (or re-trigger) the alert; True once PagerDuty accepted it."""
        import httpx

        event = {
            "routing_key": self.routing_key,
            "event_action": "trigger",
            "dedup_key": dedup_key[:255],
            "payload": {
                "summary": summary[:1024],
                "source": source,
                "severity": severity,
                "component": "prompt-rollback-bot",
                "custom_details": details,
            },
        }
        for attempt in range(1, ATTEMPTS + 1):
            try:
                answer = self.client.post(self.url, json=event)
            except httpx.TransportError as exc:
                log.warning("PagerDuty unreachable (attempt %d): %s", attempt, exc)
            else:
                if answer.status_code == 202:
                    return True
                if answer.status_code not in (429,) and answer.status_code < 500:
                    log.error(
                        "PagerDuty refused the event: %s %s", answer.status_code, answer.text[:300]
                    )
                    return False
                log.warning("PagerDuty answered %s (attempt %d)", answer.status_code, attempt)
            time.sleep(min(2.0**attempt * 0.25, 5.0))
        return False
