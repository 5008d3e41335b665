"""Sign in with Slack (OpenID Connect, authorization-code flow) for the dashboard.

The browser goes to Slack's authorize page with a random `state` and `nonce` (kept in a signed,
HttpOnly cookie for ten minutes); Slack sends it back with a code; the server exchanges the
code at `openid.connect.token` with slack_sdk's WebClient and reads the ID token. The token
comes straight from Slack's token endpoint over TLS, so (OpenID Connect Core 3.1.3.7) its
issuer is vouched for by TLS instead of by its signature; its audience, nonce, expiry and
workspace are checked here. Only people on call (SLACK_ONCALL_USERS / SLACK_ONCALL_USERGROUP,
the people who may act in Slack) get a session, named `<@USER_ID>` so Slack shows who acted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from bot.config import Settings

STATE_COOKIE = "rollback_bot_oidc"
STATE_SECONDS = 600
ISSUER = "https://slack.com"
TEAM_CLAIM = "https://slack.com/team_id"


class SignInRefused(Exception):
    """Why a Slack sign-in gives no session (said on the sign-in page)."""


@dataclass(frozen=True)
class Pending:
    """A sign-in on its way through Slack: the authorize URL and the cookie to set."""

    url: str
    cookie: str


def enabled(settings: Settings) -> bool:
    """Sign in with Slack is offered when the app's client id and secret are set."""
    return bool(settings.slack_client_id and settings.slack_client_secret)


def authorize_url_base(settings: Settings) -> str:
    """Slack's authorize page, next to the Web API (https://slack.com/openid/connect/…)."""
    api = settings.slack_api_url.rstrip("/")
    root = api[: -len("/api")] if api.endswith("/api") else api
    return f"{root}/openid/connect/authorize"


def begin(settings: Settings, redirect_uri: str) -> Pending:
    """Where to send the browser, and the signed cookie that remembers state and nonce."""
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    query = urlencode(
        {
            "response_type": "code",
            "scope": "openid profile",
            "client_id": settings.slack_client_id or "",
            "state": state,
            "nonce": nonce,
            "redirect_uri": redirect_uri,
        }
    )
    payload = f"{state}.{nonce}.{int(time.time()) + STATE_SECONDS}"
    return Pending(
        f"{authorize_url_base(settings)}?{query}", f"{payload}.{_mac(settings, payload)}"
    )


def finish(
    settings: Settings,
    *,
    cookie: str | None,
    state: str,
    code: str,
    redirect_uri: str,
    team_id: str | None,
    allowed: Callable[[str], bool],
    now: float | None = None,
) -> str:
    """Check the round trip and the ID token; returns the operator name (`<@U…>`)."""
    # Loaded here, not with the dashboard: a server without Slack never needs slack_sdk.
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError, SlackClientError

    nonce = _pending_nonce(settings, cookie, state, now or time.time())
    client = WebClient(base_url=settings.slack_api_url, timeout=10)
    secret = settings.slack_client_secret.get_secret_value() if settings.slack_client_secret else ""
    try:
        answer = client.openid_connect_token(
            client_id=settings.slack_client_id or "",
            client_secret=secret,
            code=code,
            redirect_uri=redirect_uri,
        )
    except SlackApiError as exc:
        raise SignInRefused(f"Slack refused the sign-in ({exc.response.get('error')}).") from exc
    except SlackClientError as exc:
        raise SignInRefused("Slack could not be reached; try again in a moment.") from exc
    claims = _claims(str(answer.get("id_token") or ""))
    if claims.get("iss") != ISSUER or claims.get("aud") != settings.slack_client_id:
        raise SignInRefused("Slack's answer was not for this app.")
    expires = claims.get("exp")
    fresh = isinstance(expires, int | float) and expires >= (now or time.time())
    if claims.get("nonce") != nonce or not fresh:
        raise SignInRefused("The sign-in expired or was replayed; start again.")
    if team_id is None:  # the bot's workspace is not known until Slack answers auth.test
        raise SignInRefused("Slack has not confirmed the bot's workspace yet; try again shortly.")
    if claims.get(TEAM_CLAIM) != team_id:
        raise SignInRefused("That Slack account is in another workspace than the bot.")
    user = str(claims.get("sub") or "")
    if not user or not allowed(user):
        raise SignInRefused(
            "Only on-call engineers (SLACK_ONCALL_USERS / SLACK_ONCALL_USERGROUP) may sign "
            "in with Slack; others can sign in with an API token."
        )
    return f"<@{user}>"


def _pending_nonce(settings: Settings, cookie: str | None, state: str, now: float) -> str:
    parts = (cookie or "").split(".")
    if len(parts) != 4:
        raise SignInRefused("The sign-in was not started here (or cookies are off); start again.")
    saved_state, nonce, expires, mac = parts
    payload = f"{saved_state}.{nonce}.{expires}"
    if not hmac.compare_digest(mac, _mac(settings, payload)):
        raise SignInRefused("The sign-in was not started here; start again.")
    if not hmac.compare_digest(saved_state, state) or int(expires) < now:
        raise SignInRefused("The sign-in expired or was replayed; start again.")
    return nonce


def _claims(id_token: str) -> dict[str, object]:
    try:
        body = id_token.split(".")[1]
        found = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (IndexError, ValueError):
        raise SignInRefused("Slack's answer carried no readable ID token.") from None
    if not isinstance(found, dict):
        raise SignInRefused("Slack's answer carried no readable ID token.")
    return found


def _mac(settings: Settings, text: str) -> str:
    secret = settings.slack_client_secret.get_secret_value() if settings.slack_client_secret else ""
    key = hashlib.sha256(f"rollback-bot slack sign-in\n{secret}".encode()).digest()
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
