"""Dashboard sign-in: an API token exchanged for a signed session cookie, and CSRF tokens.

The cookie is HttpOnly, SameSite=Lax, Secure when the request came over HTTPS, and lasts
`SESSION_HOURS`; it names the operator (the token's name) and is signed with a key derived from
the configured API tokens, so every replica accepts it and rotating the tokens signs everyone
out. Each form carries a CSRF token bound to the session; a POST without the right one is
refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from bot.config import Settings

COOKIE = "rollback_bot_session"
SESSION_HOURS = 12


@dataclass(frozen=True)
class DashboardSession:
    """Who is signed in, until when, and the cookie that says so."""

    operator: str
    expires: int
    cookie: str

    def csrf(self, settings: Settings) -> str:
        """The CSRF token for this session's forms."""
        return _mac(settings, f"csrf:{self.cookie}")[:32]

    def seal(self, settings: Settings, message: str) -> str:
        """The signature of a result message shown after an action (carried in the redirect's
        URL): a link made elsewhere cannot make the page claim something happened."""
        return _mac(settings, f"said:{self.cookie}:{message}")[:32]

    def said(self, settings: Settings, message: str | None, seal: str | None) -> str | None:
        """`message` if this session's action produced it, else None."""
        if message is None or seal is None:
            return None
        return message if hmac.compare_digest(seal, self.seal(settings, message)) else None


def _key(settings: Settings) -> bytes:
    tokens = "\n".join(sorted(settings.api_tokens()))
    return hashlib.sha256(f"rollback-bot dashboard session\n{tokens}".encode()).digest()


def _mac(settings: Settings, text: str) -> str:
    return hmac.new(_key(settings), text.encode(), hashlib.sha256).hexdigest()


def operator_for(settings: Settings, offered: str) -> str | None:
    """The name of the API token offered, or None (compared with every token, in constant
    time, like the API's bearer check)."""
    found = None
    for token, name in settings.api_tokens().items():
        if hmac.compare_digest(offered.encode(), token.encode()):
            found = name
    return found


def issue(settings: Settings, operator: str, now: float | None = None) -> DashboardSession:
    """A new session for `operator`."""
    expires = int((now or time.time()) + SESSION_HOURS * 3600)
    payload = base64.urlsafe_b64encode(
        json.dumps({"op": operator, "exp": expires}).encode()
    ).decode()
    cookie = f"{payload}.{_mac(settings, payload)}"
    return DashboardSession(operator, expires, cookie)


def read(
    settings: Settings, cookie: str | None, now: float | None = None
) -> DashboardSession | None:
    """The session a cookie carries, or None when it is missing, forged or expired."""
    if not cookie or "." not in cookie or not settings.api_tokens():
        return None
    payload, _, mac = cookie.rpartition(".")
    if not hmac.compare_digest(mac, _mac(settings, payload)):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload.encode()))
        operator, expires = str(data["op"]), int(data["exp"])
    except (ValueError, KeyError, TypeError):
        return None
    if expires < (now or time.time()):
        return None
    return DashboardSession(operator, expires, cookie)


def csrf_ok(settings: Settings, session: DashboardSession, offered: str | None) -> bool:
    """Whether a form's CSRF token belongs to this session."""
    return offered is not None and hmac.compare_digest(offered, session.csrf(settings))
