"""What this process knows of Slack: reachable, token accepted, or not — found out in the
background, so that nothing at start-up waits for Slack or stops because of it.

`serve` starts whatever Slack says: detection, the API and automatic rollbacks need no Slack,
and Slack work waits in the outbox. `auth.test` is retried with capped backoff until Slack
answers; while the token is refused (`invalid_auth` and kin) an error naming SLACK_BOT_TOKEN
is logged at each try. The outbox reports its own calls' outcomes here too, so `/healthz` and
`/metrics` show Slack's state as last seen by any call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.models import utcnow
from bot.telemetry import SLACK_STATE

log = logging.getLogger(__name__)

# Answers that mean the token itself is refused: no call can succeed until it is replaced.
TOKEN_REFUSED = frozenset(
    {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"}
)


class SlackState(StrEnum):
    """Slack as this process last found it."""

    CONNECTING = "connecting"  # not answered yet since start-up
    OK = "ok"
    UNREACHABLE = "unreachable"  # no answer, a timeout, 5xx or 429
    REFUSED = "token_refused"  # SLACK_BOT_TOKEN is refused: a person must replace it


class SlackStatus:
    """Slack's state, probed by `auth.test` in a background thread and updated by every call
    the outbox makes; `on_ok` runs when Slack comes back (the outbox wakes to deliver)."""

    def __init__(
        self,
        client: WebClient,
        *,
        recheck_seconds: float = 60.0,
        max_backoff_seconds: float = 30.0,
        on_ok: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.recheck_seconds = recheck_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.on_ok = on_ok
        self.state = SlackState.CONNECTING
        self.detail = "auth.test not answered yet"
        self.since: datetime = utcnow()
        self.bot_user_id: str | None = None
        self.team_id: str | None = None  # the workspace the bot token belongs to
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        _show(self.state)

    def start(self) -> None:
        """Probe Slack in the background until stopped."""
        self._thread = threading.Thread(target=self._run, name="slack-status", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop probing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def probe(self) -> SlackState:
        """Call `auth.test` once and record what it says."""
        try:
            answer = self.client.auth_test()
        except SlackApiError as exc:
            self.saw_error(_error_of(exc), status=exc.response.status_code)
        except (SlackClientError, OSError, TimeoutError) as exc:
            self.saw_unreachable(f"{exc.__class__.__name__}: {exc}")
        else:
            self.bot_user_id = answer.get("user_id")
            self.team_id = answer.get("team_id")
            self.saw_ok()
        return self.state

    def saw_ok(self) -> None:
        """A call just succeeded."""
        if self._set(SlackState.OK, "Slack answered") and self.on_ok is not None:
            self.on_ok()

    def saw_error(self, error: str, *, status: int = 200) -> None:
        """Slack answered a call with `error` (HTTP `status`)."""
        if error in TOKEN_REFUSED:
            self._set(SlackState.REFUSED, f"Slack refused SLACK_BOT_TOKEN ({error})")
        elif status >= 500 or status == 429:
            self.saw_unreachable(f"HTTP {status}: {error}")
        # any other error is about one message (a channel, a block), not about Slack

    def saw_unreachable(self, detail: str) -> None:
        """A call got no usable answer (connection refused, timeout, 5xx, 429)."""
        self._set(SlackState.UNREACHABLE, detail[:300])

    def as_dict(self) -> dict[str, object]:
        """For /healthz."""
        return {
            "ok": self.state == SlackState.OK,
            "state": self.state.value,
            "detail": self.detail,
            "since": self.since.isoformat(),
        }

    def _set(self, state: SlackState, detail: str) -> bool:
        """Record `state`; True when it changed."""
        with self._lock:
            changed = state != self.state
            self.state, self.detail = state, detail
            if changed:
                self.since = utcnow()
        if changed:
            _show(state)
            if state == SlackState.OK:
                log.info("Slack is reachable and accepts SLACK_BOT_TOKEN")
            elif state == SlackState.UNREACHABLE:
                log.warning("Slack is unreachable (%s): messages wait in the outbox", detail)
            elif state == SlackState.REFUSED:
                self._log_refused()
        return changed

    def _log_refused(self) -> None:
        log.error(
            "SLACK_BOT_TOKEN: %s. Detection and automatic rollbacks go on; Slack messages "
            "wait in the outbox until a valid token is set and the server restarted",
            self.detail,
        )

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            before = self.state
            try:
                state = self.probe()
            except Exception:  # this thread must outlive anything a probe runs into
                log.exception("probing Slack failed; trying again")
                state = SlackState.UNREACHABLE
            if state == SlackState.OK:
                failures, wait = 0, self.recheck_seconds
            elif state == SlackState.REFUSED:
                if before == state:  # said again at each re-check, not only when it started
                    self._log_refused()
                wait = self.recheck_seconds
            else:
                failures += 1
                wait = min(self.max_backoff_seconds, 0.5 * 2 ** min(failures, 10))
            self._stop.wait(wait)  # a monotonic wait: a wall-clock step does not stretch it


def _error_of(exc: SlackApiError) -> str:
    response = exc.response
    return str(response.get("error") if response.data else response.status_code)


def _show(state: SlackState) -> None:
    for each in SlackState:
        SLACK_STATE.labels(each.value).set(1 if each == state else 0)
