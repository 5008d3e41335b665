"""Builds the Bolt app and its Slack-side services: wiring only."""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from slack_bolt import App
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.error import BoltError
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import RetryHandler
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import Engine

from bot.config import Settings
from bot.errors import ConfigError
from bot.policy import PolicySet
from bot.slack import actions, commands, listener
from bot.slack.deps import SlackDeps
from bot.slack.notifier import SlackNotifier
from bot.slack.oncall import OnCall
from bot.slack.outbox import OutboxWorker
from bot.slack.status import TOKEN_REFUSED, SlackStatus

log = logging.getLogger(__name__)

# slack_sdk's Socket Mode client notices a dead connection by its pings (stale after 4 missed
# intervals) and then opens a new one: 2.5 s means a dropped socket is back within ~15 s
# rather than the ~50 s of its 10 s default.
SOCKET_PING_SECONDS = 2.5


def web_client(settings: Settings, *, retries: bool) -> WebClient:
    """A WebClient on SLACK_API_URL; `retries` adds rate-limit and 5xx handlers (not for the
    outbox, which schedules its own retries instead of sleeping)."""
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    # The outbox retries on its own schedule; resending after a dropped connection here could
    # post a message Slack already accepted, so its client gets no retry handlers at all.
    handlers: list[RetryHandler] = []
    if retries:
        handlers += [
            ConnectionErrorRetryHandler(max_retry_count=1),
            RateLimitErrorRetryHandler(max_retry_count=1),
            ServerErrorRetryHandler(max_retry_count=1),
        ]
    return WebClient(
        token=token, base_url=settings.slack_api_url, timeout=10, retry_handlers=handlers
    )


class SlackService:
    """The Bolt app, the outbox worker and the notifier of one process."""

    def __init__(self, *, settings: Settings, engine: Engine, policies: PolicySet) -> None:
        assert settings.slack_bot_token is not None
        client = web_client(settings, retries=True)
        bare = web_client(settings, retries=False)
        self.worker = OutboxWorker(
            engine=engine,
            client=bare,
            max_backoff=settings.slack_retry_max_seconds,
            give_up_after=timedelta(seconds=settings.slack_give_up_seconds),
        )
        # Slack is probed in the background: nothing at start-up waits for it or stops for it.
        self.status = SlackStatus(bare, on_ok=self.worker.wake)
        self.worker.status = self.status
        oncall = OnCall(
            users=settings.oncall_users(), usergroup=settings.slack_oncall_usergroup, client=client
        )
        self.oncall = oncall  # who may act: in Slack, and when signing in with Slack
        self.pool = ThreadPoolExecutor(
            max_workers=settings.slack_listener_threads, thread_name_prefix="slack-work"
        )
        deps = SlackDeps(
            engine=engine,
            settings=settings,
            policies=policies,
            oncall=oncall,
            worker=self.worker,
            pool=self.pool,
            client=client,
        )
        secret = settings.slack_signing_secret
        self.verifier = SignatureVerifier(secret.get_secret_value()) if secret else None
        bot_token = settings.slack_bot_token.get_secret_value()

        def authorize(enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
            # Bolt's single-workspace mode calls auth.test when built, or on the first request:
            # with Slack down then, start-up or a person's Rollback click would fail. The
            # token is known; SlackStatus learns the rest in the background.
            return AuthorizeResult(
                enterprise_id=enterprise_id,
                team_id=team_id,
                bot_token=bot_token,
                bot_user_id=self.status.bot_user_id,
            )

        self.app = App(
            # No token on Bolt's own client, so `authorize` (above) is used instead of auth.test;
            # the listeners use this process's clients, never Bolt's.
            client=WebClient(base_url=settings.slack_api_url, timeout=10),
            authorize=authorize,
            signing_secret=secret.get_secret_value() if secret else None,
            request_verification_enabled=secret is not None,
            raise_error_for_unhandled_request=False,
            process_before_response=True,  # ack from the request; the work runs on self.pool
        )
        listener.register_error_handler(self.app, self.pool)
        commands.register(self.app, deps)
        actions.register(self.app, deps)
        self.notifier = SlackNotifier(deps)
        self._socket: Any = None
        self._app_token = settings.slack_app_token
        self.socket_state = "off" if self._app_token is None else "connecting"
        self._stopping = threading.Event()

    def start(self) -> None:
        """Start delivering the outbox, probing Slack, and Socket Mode when SLACK_APP_TOKEN is
        set; none of them waits for Slack."""
        self.worker.start()
        self.status.start()
        if self._app_token is not None:
            threading.Thread(target=self._connect_socket, name="slack-socket", daemon=True).start()

    def _connect_socket(self) -> None:
        """Open the Socket Mode connection, retrying with capped backoff until it opens (the
        client reconnects by itself after that: a dropped socket, Slack's `disconnect`)."""
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        assert self._app_token is not None
        failures = 0
        while not self._stopping.is_set():
            handler: Any = SocketModeHandler(
                self.app, self._app_token.get_secret_value(), ping_interval=SOCKET_PING_SECONDS
            )
            try:
                handler.connect()
                if handler.client.is_connected():
                    self._socket, self.socket_state = handler, "connected"
                    log.info("Slack Socket Mode connected")
                    return
                problem = "the websocket did not open"
            except SlackApiError as exc:
                error = str(exc.response.get("error"))
                problem = f"apps.connections.open: {error}"
                if error in TOKEN_REFUSED or error == "not_allowed_token_type":
                    self.socket_state = "token_refused"
                    log.error(
                        "Slack refused SLACK_APP_TOKEN (%s): Slack's requests cannot arrive over "
                        "Socket Mode. Set the app-level token (xapp-…, connections:write) and "
                        "restart; the API, the checker and the outbox keep working meanwhile",
                        error,
                    )
            except Exception as exc:  # any failure to connect is retried; the thread never dies
                problem = f"{exc.__class__.__name__}: {exc}"
            with contextlib.suppress(Exception):
                handler.close()
            failures += 1
            if self.socket_state != "token_refused":
                self.socket_state = "connecting"
            wait = min(60.0, 0.5 * 2 ** min(failures, 10))
            log.warning("Slack Socket Mode not connected (%s); retry in %.0f s", problem, wait)
            self._stopping.wait(wait)

    def health(self) -> dict[str, object]:
        """Slack's state for /healthz (Socket Mode as the client sees it now: it reconnects by
        itself after a drop); not ok while Slack's requests cannot arrive over the socket."""
        state = self.socket_state
        if self._socket is not None:
            state = "connected" if self._socket.client.is_connected() else "reconnecting"
        report = {**self.status.as_dict(), "socket_mode": state}
        # In Socket Mode, Slack's commands and clicks arrive only over the socket.
        report["ok"] = bool(report["ok"]) and state in ("off", "connected")
        return report

    def stop(self) -> None:
        """Stop Socket Mode, finish the listeners' work in hand, stop the outbox worker."""
        self._stopping.set()
        if self._socket is not None:
            self._socket.close()
        self.status.stop()
        self.pool.shutdown(wait=True)
        self.worker.stop()


def start_slack(settings: Settings, engine: Engine, policies: PolicySet) -> SlackService:
    """The Slack service (SLACK_BOT_TOKEN is set). Slack is not called here: an outage or a
    refused token at start-up is reported by SlackStatus and never stops the server."""
    try:
        return SlackService(settings=settings, engine=engine, policies=policies)
    except BoltError as exc:
        raise ConfigError(f"Slack app settings: {exc}") from None
