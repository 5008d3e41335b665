"""The hot path of GET /api/prompts/{name}/resolve, answered before FastAPI's routing.

Serving apps call /resolve on every request they serve, so it is the one endpoint whose cost is
the framework's: dependency solving, validation and serialisation are most of it. This ASGI
layer answers only the plain case — a GET with a valid bearer token, a well-formed name and key,
and the prompt in the routing cache (kept current by the change feed) — from bytes encoded once
per (prompt, revision, version). Anything else (a bad token, a malformed name, a prompt the
cache does not know) goes on to the FastAPI route, which answers it exactly as before; so the
errors, their format and the OpenAPI description stay in one place.
"""

from __future__ import annotations

import hmac
import re
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from bot.config import Settings
from bot.models import PROMPT_NAME_MAX, PROMPT_NAME_PATTERN, Resolved, RoutingState
from bot.splits import choose

PREFIX, SUFFIX = "/api/prompts/", "/resolve"
KEY_MAX = 512  # as the route's `key` query parameter
NAME = re.compile(PROMPT_NAME_PATTERN)
ENCODED_MAX = 20_000  # cached answers; cleared whole when full (a revision moves on anyway)


class FastResolve:
    """ASGI middleware: the cached /resolve answer, or the next app."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.tokens = [(token.encode(), name) for token, name in settings.api_tokens().items()]
        self._encoded: dict[tuple[str, int, str], bytes] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self._answer(scope) if scope["type"] == "http" else None
        if body is None:
            await self.app(scope, receive, send)
            return
        payload, revision = body
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"etag", f'"{revision}"'.encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def _answer(self, scope: Scope) -> tuple[bytes, int] | None:
        """The answer's bytes and revision, or None to let the FastAPI route answer."""
        path: str = scope["path"]
        if scope["method"] != "GET" or not path.startswith(PREFIX) or not path.endswith(SUFFIX):
            return None
        name = path[len(PREFIX) : -len(SUFFIX)]
        if len(name) > PROMPT_NAME_MAX or not NAME.match(name) or not self._authorized(scope):
            return None
        well_formed, key = _key(scope["query_string"])
        if not well_formed:
            return None
        state: RoutingState | None = scope["app"].state.feed.current(name)
        if state is None or state.active_version is None:
            return None
        label = choose(name, state.split, state.order, key) if state.split else state.active_version
        cached = (name, state.revision, label)
        payload = self._encoded.get(cached)
        if payload is None:
            if len(self._encoded) >= ENCODED_MAX:
                self._encoded.clear()
            payload = (
                Resolved(
                    prompt=name,
                    version=label,
                    template=state.templates[label],
                    revision=state.revision,
                )
                .model_dump_json()
                .encode()
            )
            self._encoded[cached] = payload
        return payload, state.revision

    def _authorized(self, scope: Scope) -> bool:
        """A bearer token the API accepts (compared with every token, in constant time)."""
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None or header[:7].lower() != b"bearer ":
            return False
        offered = header[7:].strip()
        found = False
        for token, _name in self.tokens:
            found |= hmac.compare_digest(offered, token)
        return found


def _key(query: bytes) -> tuple[bool, str | None]:
    """(well formed, the sticky key): not well formed unless zero or one valid `key`."""
    if not query:
        return True, None
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return False, None
    keys = [value for name, value in pairs if name == "key"]
    if len(keys) > 1 or (keys and len(keys[0]) > KEY_MAX):
        return False, None
    return True, keys[0] if keys else None
