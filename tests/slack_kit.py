"""Offline Slack for tests: a Web API stand-in over HTTP, and inbound requests signed as Slack signs.

FakeSlack answers the Web API methods the bot uses with Slack's response shapes, keeps the
messages it was sent (with their edits and threads), serves response_url endpoints, records
every call and injects faults (429 + Retry-After, 5xx, connection drops, slowness).
sign(), slash_command_body(), block_actions_body() and SlackSender build and send the
requests Slack sends to the app, byte for byte as Slack signs them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit
from zoneinfo import ZoneInfo

import httpx

T = TypeVar("T")

RESPONSE_URL_POSTS = 5  # Slack accepts 5 posts per response_url (within 30 minutes)
_JSON_FIELDS = ("blocks", "attachments", "metadata", "files")


@dataclass(frozen=True)
class Call:
    """One request FakeSlack received: a Web API method, or "response_url" for a response_url post."""

    method: str
    args: dict[str, Any]
    at: float
    path: str = ""
    token: str | None = None
    status: int = 200
    response: dict[str, Any] | None = None
    fault: str | None = None

    @property
    def faulted(self) -> bool:
        """Whether the call was answered by an injected fault instead of the method."""
        return self.fault is not None

    @property
    def ok(self) -> bool:
        """Whether Slack carried the call out (`"ok": true`, even if that answer was lost)."""
        return self.response is not None and self.response.get("ok") is True

    @property
    def error(self) -> str | None:
        """Slack's error code (or the fault) the call was answered with, if any."""
        if self.fault is not None:
            return self.fault
        return None if self.response is None else self.response.get("error")


@dataclass
class _Fault:
    status: int
    retry_after: int
    after_accept: bool = False  # carry the call out, then answer `status` (the answer is lost)
    error: str | None = None  # answer 200 {"ok": false, "error": error}


@dataclass
class _ResponseUrl:
    channel: str
    user: str
    message_ts: str | None = None
    is_ephemeral: bool = False
    posts: int = 0


@dataclass
class _State:
    calls: list[Call] = field(default_factory=list)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    ephemerals: dict[str, dict[str, Any]] = field(default_factory=dict)
    opened: set[str] = field(default_factory=set)
    views: list[dict[str, Any]] = field(default_factory=list)  # modals opened, oldest first
    # Files by id: what files.getUploadURLExternal was told, and the bytes uploaded to its URL.
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    response_urls: dict[str, _ResponseUrl] = field(default_factory=dict)
    faults: dict[str, deque[_Fault]] = field(default_factory=dict)
    down: str | None = None
    delay: float = 0.0
    flaky: float = 0.0
    lost: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(7))


class _SlackError(LookupError):
    """A Web API method's `{"ok": false, "error": ...}` answer, raised inside the fake."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout tests) is expected, not an error


def _dm_id(user_ids: Sequence[str]) -> str:
    prefix = "D" if len(user_ids) == 1 else "G"
    return prefix + hashlib.sha1(",".join(sorted(user_ids)).encode()).hexdigest()[:10].upper()


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, micros = ts.partition(".")
    return int(seconds), int(micros or 0)


class FakeSlack:
    """Slack's Web API and response_url endpoints on 127.0.0.1, recording every call."""

    def __init__(
        self,
        *,
        token: str = "xoxb-test-token",
        team_id: str = "T1",
        team: str = "Acme",
        bot_user_id: str = "UBOT",
        bot_id: str = "B1",
        channels: Mapping[str, str] | None = None,
        users: Mapping[str, Mapping[str, Any]] | None = None,
        usergroups: Mapping[str, Sequence[str]] | None = None,
        first_ts: int = 1_700_000_000,
    ) -> None:
        self.token = token
        # Socket Mode: the app-level token apps.connections.open accepts, and the endpoint whose
        # URL it hands out (tests/socket_kit.py attaches one).
        self.app_token: str | None = None
        self.socket: Any = None
        # Sign in with Slack (OpenID Connect): the app's credentials, and who "approves" on
        # Slack's authorize page (the stand-in skips the page and redirects back at once).
        self.oidc_client = ("1111.2222", "oidc-client-secret-0123456789")
        self.oidc_user = "U1"
        self.oidc_team: str | None = None  # the workspace the user signs in from (team_id)
        self._oidc_codes: dict[str, dict[str, str]] = {}
        self.team_id = team_id
        self.team = team
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.channels: dict[str, str] = dict(channels or {"incidents": "C1"})
        self.users: dict[str, dict[str, Any]] = {
            bot_user_id: {"name": "rollback-bot", "real_name": "Rollback Bot", "is_bot": True},
            "U1": {"name": "alice", "real_name": "Alice", "tz": "Europe/Paris"},
        }
        for user_id, info in (users or {}).items():
            self.add_user(user_id, **info)
        self.usergroups: dict[str, list[str]] = {k: list(v) for k, v in (usergroups or {}).items()}
        self._lock = threading.Lock()
        self._state = _State()
        self._seq = 0
        self._first_ts = first_ts
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeSlack:
        """Serve on a free port of 127.0.0.1 in a daemon thread."""
        if self._server is None:
            server = _Server(("127.0.0.1", 0), _handler_for(self))
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Root URL of the server, e.g. http://127.0.0.1:50123."""
        if self._server is None:
            raise RuntimeError("FakeSlack is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        """Web API base URL for `WebClient(base_url=...)`, ending in /api/."""
        return f"{self.url}/api/"

    # -- configuration ---------------------------------------------------------------------

    def add_user(
        self,
        user_id: str,
        name: str,
        real_name: str | None = None,
        tz: str = "UTC",
        is_bot: bool = False,
    ) -> None:
        """Make `users.info` know a user."""
        self.users[user_id] = {
            "name": name,
            "real_name": real_name or name,
            "tz": tz,
            "is_bot": is_bot,
        }

    def set_usergroup(self, usergroup: str, users: Sequence[str]) -> None:
        """Set the members `usergroups.users.list` answers for `usergroup` (an S… id)."""
        self.usergroups[usergroup] = list(users)

    def channel_id(self, channel: str) -> str:
        """Resolve "#name", a C…/G…/D… id or a U… id (its DM) as chat.postMessage does; LookupError if unknown."""
        if channel.startswith("#"):
            if channel[1:] not in self.channels:
                raise _SlackError("channel_not_found")
            return self.channels[channel[1:]]
        if channel[:1] in ("U", "W"):
            return _dm_id([channel])
        if channel[:1] in ("C", "G", "D"):
            return channel
        raise _SlackError("channel_not_found")

    # -- fault injection -------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        count: int = 1,
        status: int = 429,
        retry_after: int = 1,
        *,
        after_accept: bool = False,
        error: str | None = None,
    ) -> None:
        """Answer the next `count` calls of `method` with 429 + Retry-After, or a 5xx status.

        `after_accept=True` (5xx only) carries each call out first, as when Slack posted the
        message but its answer was lost; `error` answers `{"ok": false, "error": error}`.
        """
        if error is None and status != 429 and not 500 <= status < 600:
            raise ValueError("status must be 429 or 5xx")
        if after_accept and not 500 <= status < 600:
            raise ValueError("after_accept needs a 5xx status")
        with self._lock:
            queue = self._state.faults.setdefault(method, deque())
            queue.extend(_Fault(status, retry_after, after_accept, error) for _ in range(count))

    def set_down(self, down: bool, *, close: bool = False) -> None:
        """Answer every call 503 (or drop the connection unanswered, with close=True) until reset."""
        with self._lock:
            self._state.down = ("close" if close else "503") if down else None

    def set_flaky(self, rate: float, *, seed: int = 7, lost: float = 0.0) -> None:
        """Answer a random `rate` of Web API calls 503 (seeded, so a run can be repeated);
        a `lost` share of those is carried out first (the answer is lost, not the call)."""
        with self._lock:
            self._state.flaky, self._state.rng = rate, random.Random(seed)
            self._state.lost = lost

    def set_delay(self, seconds: float) -> None:
        """Wait `seconds` before every answer."""
        with self._lock:
            self._state.delay = seconds

    def reset(self) -> None:
        """Forget calls, messages, response_urls, faults, delay and outage; keep the configuration."""
        with self._lock:
            self._state = _State()

    # -- inspection ------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """Every call received so far, oldest first (a snapshot)."""
        with self._lock:
            return list(self._state.calls)

    def uploads(self) -> dict[str, dict[str, Any]]:
        """Files uploaded, by id: filename, declared length, alt text, the bytes."""
        with self._lock:
            return {k: dict(v) for k, v in self._state.uploads.items()}

    def calls_to(self, method: str) -> list[Call]:
        """The calls received for one method (or "response_url")."""
        return [c for c in self.calls if c.method == method]

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Posted messages as they stand now (edits applied), oldest first, optionally in one channel."""
        wanted = None if channel is None else self.channel_id(channel)
        with self._lock:
            found = [
                dict(m)
                for m in self._state.messages.values()
                if wanted is None or m["channel"] == wanted
            ]
        return sorted(found, key=lambda m: _ts_key(m["ts"]))

    def views(self) -> list[dict[str, Any]]:
        """The modals opened so far (each with its trigger_id), oldest first."""
        with self._lock:
            return [dict(v) for v in self._state.views]

    def message(self, ts: str) -> dict[str, Any]:
        """The message posted as `ts`, as it stands now."""
        with self._lock:
            if ts not in self._state.messages:
                raise KeyError(f"no message with ts {ts}")
            return dict(self._state.messages[ts])

    def thread(self, ts: str, *, files: bool = False) -> list[dict[str, Any]]:
        """The thread started by `ts`: the parent, then its replies, oldest first; file shares
        (charts) only with `files=True`."""
        return [
            m
            for m in self.messages()
            if (m["ts"] == ts or m.get("thread_ts") == ts) and (files or "files" not in m)
        ]

    def ephemerals(
        self, channel: str | None = None, user: str | None = None
    ) -> list[dict[str, Any]]:
        """Ephemeral messages (chat.postEphemeral and response_url), oldest first."""
        wanted = None if channel is None else self.channel_id(channel)
        with self._lock:
            found = [
                dict(m)
                for m in self._state.ephemerals.values()
                if (wanted is None or m["channel"] == wanted)
                and (user is None or m["user"] == user)
            ]
        return sorted(found, key=lambda m: _ts_key(m["ts"]))

    def responses(self, url: str | None = None) -> list[dict[str, Any]]:
        """The JSON bodies posted to response_urls (or to one of them), oldest first."""
        path = None if url is None else urlsplit(url).path
        return [c.args for c in self.calls_to("response_url") if path is None or c.path == path]

    def wait_for(
        self, predicate: Callable[[list[Call]], T], timeout: float = 5.0, interval: float = 0.01
    ) -> T:
        """Poll until `predicate(calls)` is truthy and return its value; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self.calls)
            if result:
                return result
            if time.monotonic() >= deadline:
                seen = [f"{c.method}{'(' + c.fault + ')' if c.fault else ''}" for c in self.calls]
                raise AssertionError(f"condition not met within {timeout}s; calls: {seen}")
            time.sleep(interval)

    # -- response_url ----------------------------------------------------------------------

    def new_response_url(
        self,
        *,
        channel: str = "C1",
        user: str = "U1",
        message_ts: str | None = None,
        is_ephemeral: bool = False,
    ) -> str:
        """Mint a response_url bound to a channel and user (and to the message a click came from)."""
        key = uuid.uuid4().hex[:12]
        with self._lock:
            self._state.response_urls[key] = _ResponseUrl(channel, user, message_ts, is_ephemeral)
        return f"{self.url}/response/{key}"

    # -- request handling (called from server threads) ---------------------------------------

    def _next_ts(self) -> str:
        self._seq += 1
        seconds, micros = divmod(self._seq * 100, 1_000_000)
        return f"{self._first_ts + seconds}.{micros:06d}"

    def _record(self, call: Call) -> None:
        with self._lock:
            self._state.calls.append(call)

    def _take_fault(self, method: str) -> tuple[str | None, _Fault | None, float]:
        with self._lock:
            queue = self._state.faults.get(method)
            down = self._state.down
            fault = queue.popleft() if queue and down is None else None
            rate = self._state.flaky if method != "response_url" else 0.0
            if fault is None and down is None and rate and self._state.rng.random() < rate:
                fault = _Fault(503, 0, after_accept=self._state.rng.random() < self._state.lost)
            return down, fault, self._state.delay

    def _oidc_authorize(self, query: dict[str, str]) -> str:
        """Slack's authorize page, approved at once by `oidc_user`: where it redirects."""
        code = uuid.uuid4().hex
        with self._lock:
            self._oidc_codes[code] = {**query, "user": self.oidc_user}
        back = {"code": code, "state": query.get("state", "")}
        return f"{query.get('redirect_uri', '')}?{urlencode(back)}"

    def _oidc_token(self, args: dict[str, Any], basic: tuple[str, str] | None) -> dict[str, Any]:
        """openid.connect.token: the code (once) for an access token and an ID token whose
        claims are those Slack documents (signature bytes are not checked by the bot)."""
        client = basic or (str(args.get("client_id", "")), str(args.get("client_secret", "")))
        if client != self.oidc_client:
            return {"ok": False, "error": "invalid_client_id"}
        with self._lock:
            grant = self._oidc_codes.pop(str(args.get("code", "")), None)
        if grant is None:
            return {"ok": False, "error": "invalid_code"}
        if grant.get("redirect_uri") and grant["redirect_uri"] != args.get("redirect_uri"):
            return {"ok": False, "error": "bad_redirect_uri"}
        now = int(time.time())
        claims = {
            "iss": "https://slack.com",
            "sub": grant["user"],
            "aud": self.oidc_client[0],
            "exp": now + 3600,
            "iat": now,
            "auth_time": now,
            "nonce": grant.get("nonce", ""),
            "https://slack.com/user_id": grant["user"],
            "https://slack.com/team_id": self.oidc_team or self.team_id,
            "name": self.users.get(grant["user"], {}).get("real_name", grant["user"]),
        }

        def part(value: dict[str, Any]) -> str:
            raw = json.dumps(value).encode()
            return base64.urlsafe_b64encode(raw).decode().rstrip("=")

        id_token = f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"
        return {
            "ok": True,
            "access_token": f"xoxp-oidc-{uuid.uuid4().hex[:12]}",
            "token_type": "Bearer",
            "id_token": id_token,
        }

    def _api(self, method: str, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        if method == "apps.connections.open":  # the one method called with the app-level token
            if token is None:
                return {"ok": False, "error": "not_authed"}
            if token.startswith("xoxb-"):
                return {"ok": False, "error": "not_allowed_token_type"}
            if self.app_token is None or not hmac.compare_digest(token, self.app_token):
                return {"ok": False, "error": "invalid_auth"}
            if self.socket is None:
                return {"ok": False, "error": "internal_error"}
            return {"ok": True, "url": self.socket.new_url()}
        if token is None:
            return {"ok": False, "error": "not_authed"}
        if not hmac.compare_digest(token, self.token):
            return {"ok": False, "error": "invalid_auth"}
        handler = _METHODS.get(method)
        if handler is None:
            return {"ok": False, "error": "unknown_method", "req_method": method}
        try:
            with self._lock:
                return {"ok": True, **handler(self, args)}
        except _SlackError as err:
            return {"ok": False, "error": err.error}

    def _respond(self, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            target = self._state.response_urls.get(key)
            if target is None:
                return 404, {"ok": False, "error": "expired_url"}
            if target.posts >= RESPONSE_URL_POSTS:
                return 404, {"ok": False, "error": "used_url"}
            target.posts += 1
            _apply_response(self, target, body)
            return 200, {"ok": True}


# -- Web API methods (run under FakeSlack._lock) -----------------------------------------------


def _content(args: Mapping[str, Any]) -> dict[str, Any]:
    return {k: args[k] for k in ("text", "blocks", "attachments", "metadata") if k in args}


def _auth_test(fake: FakeSlack, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "url": f"https://{fake.team.lower()}.slack.com/",
        "team": fake.team,
        "user": fake.users[fake.bot_user_id]["name"],
        "team_id": fake.team_id,
        "user_id": fake.bot_user_id,
        "bot_id": fake.bot_id,
        "is_enterprise_install": False,
    }


def _post_message(
    fake: FakeSlack, args: dict[str, Any], *, file_share: bool = False
) -> dict[str, Any]:
    channel = fake.channel_id(str(args.get("channel", "")))
    if not file_share and not any(args.get(k) for k in ("text", "blocks", "attachments")):
        raise _SlackError("no_text")
    ts = fake._next_ts()
    message: dict[str, Any] = {
        "type": "message",
        "ts": ts,
        "channel": channel,
        "user": fake.bot_user_id,
        "bot_id": fake.bot_id,
        "team": fake.team_id,
        "text": "",
        **_content(args),
    }
    thread_ts = args.get("thread_ts")
    if thread_ts:
        message["thread_ts"] = str(thread_ts)
        parent = fake._state.messages.get(str(thread_ts))
        if parent is not None:
            parent["thread_ts"] = parent["ts"]
            parent["reply_count"] = parent.get("reply_count", 0) + 1
    fake._state.messages[ts] = message
    public = {k: v for k, v in message.items() if k != "channel"}
    return {"channel": channel, "ts": ts, "message": public}


def _update(fake: FakeSlack, args: dict[str, Any]) -> dict[str, Any]:
    channel = fake.channel_id(str(args.get("channel", "")))
    ts = str(args.get("ts", ""))
    if ts in fake._state.ephemerals:
        raise _SlackError("cant_update_message")
    message = fake._state.messages.get(ts)
    if message is None or message["channel"] != channel:
        raise _SlackError("message_not_found")
    if message["user"] != fake.bot_user_id:
        raise _SlackError("cant_update_message")
    message.update(_content(args))
    message["edited"] = {"user": fake.bot_user_id, "ts": fake._next_ts()}
    public = {k: v for k, v in message.items() if k not in ("channel", "ts")}
    return {"channel": channel, "ts": ts, "text": message["text"], "message": public}


TRIGGER_TTL = 3.0  # a trigger_id opens a modal within 3 s of the interaction, once


def _views_open(fake: FakeSlack, args: dict[str, Any]) -> dict[str, Any]:
    """views.open: checks the trigger's age and reuse and the view's shape, as Slack does."""
    trigger = str(args.get("trigger_id", ""))
    parts = trigger.split(".")
    if len(parts) != 3 or not parts[0].isdigit():
        raise _SlackError("invalid_trigger_id")
    if time.time() - int(parts[0]) > TRIGGER_TTL + 1 or trigger in fake._state.opened:
        raise _SlackError("expired_trigger_id")
    view = args.get("view")
    if isinstance(view, str):
        view = json.loads(view)
    if not isinstance(view, dict) or view.get("type") != "modal":
        raise _SlackError("invalid_arguments")
    title = (view.get("title") or {}).get("text", "")
    blocks = view.get("blocks")
    if not title or len(title) > 24 or not isinstance(blocks, list) or len(blocks) > 100:
        raise _SlackError("invalid_arguments")
    fake._state.opened.add(trigger)
    opened = {**view, "id": f"V{len(fake._state.views) + 1:08d}", "team_id": fake.team_id}
    fake._state.views.append({"trigger_id": trigger, "view": opened})
    return {"view": opened}


def _get_permalink(fake: FakeSlack, args: dict[str, Any]) -> dict[str, Any]:
    """chat.getPermalink: https://<workspace>.slack.com/archives/<channel>/p<ts without dot>."""
    channel = fake.channel_id(str(args.get("channel", "")))
    ts = str(args.get("message_ts", ""))
    message = fake._state.messages.get(ts)
    if message is None or message["channel"] != channel:
        raise _SlackError("message_not_found")
    link = f"https://acme.slack.com/archives/{channel}/p{ts.replace('.', '')}"
    return {"channel": channel, "permalink": link}


def _post_ephemeral(fake: FakeSlack, args: dict[str, Any]) -> dict[str, Any]:
    channel = fake.channel_id(str(args.get("channel", "")))
    user = args.get("user")
    if not user:
        raise _SlackError("user_not_in_channel")
    if not any(args.get(k) for k in ("text", "blocks", "attachments")):
        raise _SlackError("no_text")
    ts = fake._next_ts()
    fake._state.ephemerals[ts] = {"ts": ts, "channel": channel, "user": str(user), **_content(args)}
    if args.get("thread_ts"):
        fake._state.ephemerals[ts]["thread_ts"] = str(args["thread_ts"])
    return {"message_ts": ts}


def _conversations_open(fake: FakeSlack, args: dict[str, Any]) -> dict[str, Any]:
    users = [u for u in str(args.get("users", "")).split(",") if u]
    if not users:
        raise _SlackError("users_list_not_supplied")
    if any(u[:1] not in ("U", "W") for u in users):
        raise _SlackError("user_not_found")
    channel = _dm_id(users)
    already = channel in fake._state.opened
    fake._state.opened.add(channel)
    answer: dict[str, Any] = {"channel": {"id": channel}}
    if already:
        answer.update(no_op=True, already_open=True)
    return answer


def _usergroup_users(fake: FakeSlack, args: dict[str, Any]) -> dict[str, Any]:
    group = str(args.get("usergroup", ""))
    if not group:
        raise _SlackError("invalid_arguments")
    if group not in fake.usergroups:
        raise _SlackError("no_such_subteam")
    return {"users": list(fake.usergroups[group])}


def _users_info(fake: FakeSlack, args: dict[str, Any]) -> dict[str, Any]:
    user_id = str(args.get("user", ""))
    info = fake.users.get(user_id)
    if info is None:
        raise _SlackError("user_not_found")
    tz = info.get("tz", "UTC")
    now = datetime.now(ZoneInfo(tz))
    offset = now.utcoffset()
    return {
        "user": {
            "id": user_id,
            "team_id": fake.team_id,
            "name": info["name"],
            "real_name": info["real_name"],
            "deleted": False,
            "is_bot": bool(info.get("is_bot", False)),
            "tz": tz,
            "tz_label": now.tzname(),
            "tz_offset": int(offset.total_seconds()) if offset is not None else 0,
            "profile": {"real_name": info["real_name"], "display_name": info["name"]},
        }
    }


def _flag(value: Any) -> bool:
    return str(value).lower() in ("1", "true")


def _listed(message: dict[str, Any], with_metadata: bool) -> dict[str, Any]:
    shown = {k: v for k, v in message.items() if k != "channel"}
    if not with_metadata:
        shown.pop("metadata", None)
    return shown


def _conversation(fake: FakeSlack, args: dict[str, Any]) -> str:
    channel = str(args.get("channel", ""))
    if channel[:1] not in ("C", "G", "D"):  # history methods take ids only, never "#name"
        raise _SlackError("channel_not_found")
    return channel


def _history(fake: FakeSlack, args: dict[str, Any]) -> dict[str, Any]:
    """A channel's top-level messages, newest first (thread replies are not in history)."""
    channel = _conversation(fake, args)
    found = [
        m
        for m in fake._state.messages.values()
        if m["channel"] == channel and m.get("thread_ts", m["ts"]) == m["ts"]
    ]
    found.sort(key=lambda m: _ts_key(m["ts"]), reverse=True)
    limit = int(args.get("limit") or 100)
    shown = [_listed(m, _flag(args.get("include_all_metadata"))) for m in found[:limit]]
    return {"messages": shown, "has_more": len(found) > limit}


def _replies(fake: FakeSlack, args: dict[str, Any]) -> dict[str, Any]:
    """A thread: its parent, then its replies, oldest first."""
    channel = _conversation(fake, args)
    ts = str(args.get("ts", ""))
    parent = fake._state.messages.get(ts)
    if parent is None or parent["channel"] != channel:
        raise _SlackError("thread_not_found")
    found = [m for m in fake._state.messages.values() if m.get("thread_ts") == ts or m is parent]
    found.sort(key=lambda m: _ts_key(m["ts"]))
    limit = int(args.get("limit") or 100)
    shown = [_listed(m, _flag(args.get("include_all_metadata"))) for m in found[:limit]]
    return {"messages": shown, "has_more": len(found) > limit}


def _conversations_list(fake: FakeSlack, args: dict[str, Any]) -> dict[str, Any]:
    """The channels, `limit` a page, with Slack's cursor pagination."""
    channels = sorted(fake.channels.items(), key=lambda item: item[1])
    start = int(args.get("cursor") or 0)
    end = start + int(args.get("limit") or 100)
    page = [{"id": id_, "name": name, "is_archived": False} for name, id_ in channels[start:end]]
    more = str(end) if end < len(channels) else ""
    return {"channels": page, "response_metadata": {"next_cursor": more}}


def _upload_url(fake: FakeSlack, args: dict[str, Any]) -> dict[str, Any]:
    """files.getUploadURLExternal: a file id and a one-time URL to POST the bytes to."""
    filename, length = str(args.get("filename") or ""), str(args.get("length") or "")
    if not filename or not length.isdigit() or int(length) <= 0:
        raise _SlackError("invalid_arguments")
    file_id = f"F{len(fake._state.uploads) + 1:08d}"
    fake._state.uploads[file_id] = {
        "filename": filename,
        "length": int(length),
        "alt_txt": args.get("alt_txt"),
        "content": None,
    }
    return {"upload_url": f"{fake.url}/upload/{file_id}", "file_id": file_id}


def _complete_upload(fake: FakeSlack, args: dict[str, Any]) -> dict[str, Any]:
    """files.completeUploadExternal: share the uploaded files, in a thread if thread_ts."""
    files = args.get("files")
    if not isinstance(files, list) or not files:
        raise _SlackError("invalid_arguments")
    shared = []
    for item in files:
        upload = fake._state.uploads.get(str(item.get("id")))
        if upload is None or upload["content"] is None:
            raise _SlackError("file_not_found")
        if len(upload["content"]) != upload["length"]:
            raise _SlackError("file_upload_size_mismatch")
        shared.append({"id": item["id"], "title": item.get("title"), **upload})
    channel_id = args.get("channel_id")
    if channel_id:
        message = _post_message(
            fake,
            {
                "channel": channel_id,
                "text": str(args.get("initial_comment") or ""),
                "thread_ts": args.get("thread_ts"),
            },
            file_share=True,
        )
        fake._state.messages[message["ts"]]["files"] = shared
    return {"files": [{"id": f["id"], "title": f["title"]} for f in shared]}


_METHODS: dict[str, Callable[[FakeSlack, dict[str, Any]], dict[str, Any]]] = {
    "files.getUploadURLExternal": _upload_url,
    "files.completeUploadExternal": _complete_upload,
    "conversations.list": _conversations_list,
    "conversations.history": _history,
    "conversations.replies": _replies,
    "auth.test": _auth_test,
    "chat.postMessage": _post_message,
    "chat.update": _update,
    "chat.getPermalink": _get_permalink,
    "views.open": _views_open,
    "chat.postEphemeral": _post_ephemeral,
    "conversations.open": _conversations_open,
    "usergroups.users.list": _usergroup_users,
    "users.info": _users_info,
}


def _apply_response(fake: FakeSlack, target: _ResponseUrl, body: dict[str, Any]) -> None:
    """Show a response_url post: replace/delete the source message, or post a new one."""
    source = target.message_ts
    store = fake._state.ephemerals if target.is_ephemeral else fake._state.messages
    if body.get("delete_original") in (True, "true") and source in store:
        del store[source]
    elif body.get("replace_original") in (True, "true") and source in store:
        store[source].update(_content(body))
    elif body.get("response_type") == "in_channel":
        ts = fake._next_ts()
        message = {"type": "message", "ts": ts, "channel": target.channel, **_content(body)}
        message.update(user=fake.bot_user_id, bot_id=fake.bot_id, team=fake.team_id)
        if body.get("thread_ts"):
            message["thread_ts"] = str(body["thread_ts"])
        fake._state.messages[ts] = message
    else:
        ts = fake._next_ts()
        fake._state.ephemerals[ts] = {
            "ts": ts,
            "channel": target.channel,
            "user": target.user,
            **_content(body),
        }


# -- HTTP ----------------------------------------------------------------------------------


def _decode_fields(args: dict[str, Any]) -> dict[str, Any]:
    for name in _JSON_FIELDS:
        value = args.get(name)
        if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
            args[name] = json.loads(value)
    return args


def _handler_for(fake: FakeSlack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """Routes /api/<method> and /response/<id> to the FakeSlack that built it."""

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def _handle(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if url.path == "/openid/connect/authorize":  # a browser, sent by the bot
                query = dict(parse_qsl(url.query))
                fake._record(
                    Call(method="openid.authorize", args=query, at=time.time(), path=url.path)
                )
                location = fake._oidc_authorize(query)
                self._send(302, b"", "text/plain", {"Location": location})
                return
            if url.path == "/api/openid.connect.token":  # client credentials, not a token
                args, _, _ = self._parse(url.query, raw)
                auth = self.headers.get("Authorization") or ""
                basic = None
                if auth.startswith("Basic "):
                    user, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
                    basic = (user, secret)
                answer = fake._oidc_token(args, basic)
                fake._record(
                    Call(method="openid.connect.token", args=args, at=time.time(), path=url.path)
                )
                self._send(200, json.dumps(answer).encode(), "application/json; charset=utf-8")
                return
            if url.path.startswith("/api/"):
                method = url.path[len("/api/") :]
            elif url.path.startswith("/response/"):
                method = "response_url"
            elif url.path.startswith("/upload/"):  # where files.getUploadURLExternal sends bytes
                with fake._lock:
                    upload = fake._state.uploads.get(url.path.rsplit("/", 1)[-1])
                    if upload is not None:
                        upload["content"] = raw
                fake._record(
                    Call(
                        method="upload",
                        args={},
                        at=time.time(),
                        path=url.path,
                        status=200 if upload else 404,
                    )
                )
                self._send(200 if upload else 404, f"OK - {len(raw)}".encode(), "text/plain")
                return
            else:
                self._send(404, b"Not Found", "text/plain")
                return
            args, token, bad_json = self._parse(url.query, raw)
            now = time.time()
            down, fault, delay = fake._take_fault(method)
            if delay:
                time.sleep(delay)
            record = Call(method=method, args=args, at=now, path=url.path, token=token)
            if down == "close":
                fake._record(replace(record, status=0, fault="connection_closed"))
                self.close_connection = True
                return
            if fault is not None and fault.error is not None:
                answer = {"ok": False, "error": fault.error}
                fake._record(replace(record, status=200, response=answer, fault=fault.error))
                self._send(200, json.dumps(answer).encode(), "application/json")
                return
            if fault is not None and fault.after_accept:
                # Done (the record keeps Slack's answer: `ok`), but the caller never hears it.
                done = fake._api(method, args, token)
                record = replace(record, response=done)
            if down == "503" or (fault is not None and fault.status != 429):
                status = 503 if fault is None else fault.status
                lost = fault is not None and fault.after_accept
                kind = "answer_lost" if lost else f"http_{status}"
                fake._record(replace(record, status=status, fault=kind))
                text = f"{status} {HTTPStatus(status).phrase}"
                self._send(status, text.encode(), "text/plain")
                return
            if fault is not None:
                answer = {"ok": False, "error": "ratelimited"}
                fake._record(replace(record, status=429, response=answer, fault="ratelimited"))
                headers = {"Retry-After": str(fault.retry_after)}
                self._send(429, json.dumps(answer).encode(), "application/json", headers)
                return
            if bad_json:
                status, answer = 200, {"ok": False, "error": "invalid_json"}
            elif method == "response_url":
                status, answer = fake._respond(url.path.rsplit("/", 1)[-1], args)
            else:
                status, answer = 200, fake._api(method, args, token)
            fake._record(replace(record, status=status, response=answer))
            self._send(status, json.dumps(answer).encode(), "application/json; charset=utf-8")

        def _parse(self, query: str, raw: bytes) -> tuple[dict[str, Any], str | None, bool]:
            args: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            bad_json = False
            if ctype == "application/json" and raw:
                try:
                    body = json.loads(raw)
                    args.update(body if isinstance(body, dict) else {})
                except ValueError:
                    bad_json = True
            elif raw:
                args.update(parse_qsl(raw.decode(), keep_blank_values=True))
            try:
                _decode_fields(args)
            except ValueError:
                bad_json = True
            auth = self.headers.get("Authorization") or ""
            token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
            if token is None and ctype != "application/json":
                token = args.pop("token", None)  # legacy form/query token; never read from JSON
            else:
                args.pop("token", None)
            return args, token, bad_json

        def _send(
            self,
            status: int,
            body: bytes,
            content_type: str,
            headers: Mapping[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


# -- inbound requests, signed as Slack signs them -------------------------------------------


def sign(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """Headers Slack sends with `body`: timestamp, v0 HMAC-SHA256 signature, form content type."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    base = b"v0:" + ts.encode() + b":" + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


def _trigger_id() -> str:
    return f"{int(time.time())}.{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex}"


def view_submission_body(
    view: Mapping[str, Any], user_id: str, values: Mapping[str, Mapping[str, Any]]
) -> bytes:
    """The `payload=<json>` body Slack posts when a modal is submitted: `values` maps
    block_id → action_id → the element's state (`selected_option`, `value`)."""
    payload = {
        "type": "view_submission",
        "team": {"id": "T1", "domain": "acme"},
        "user": {
            "id": user_id,
            "username": user_id.lower(),
            "name": user_id.lower(),
            "team_id": "T1",
        },
        "api_app_id": "A1",
        "token": "verification-token",
        "trigger_id": _trigger_id(),
        "view": {
            **view,
            "state": {"values": {b: dict(v) for b, v in values.items()}},
            "hash": uuid.uuid4().hex[:20],
            "root_view_id": view.get("id"),
            "app_id": "A1",
            "bot_id": "B1",
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }
    return b"payload=" + quote(json.dumps(payload)).encode()


def target_choice(version: str) -> dict[str, Any]:
    """The rollback dialog's state with `version` chosen and no reason."""
    option = {"text": {"type": "plain_text", "text": version}, "value": version}
    return {"target": {"target_version": {"type": "static_select", "selected_option": option}}}


def slash_command_body(
    command: str = "/rollback",
    text: str = "",
    *,
    user_id: str = "U1",
    user_name: str = "alice",
    channel_id: str = "C1",
    channel_name: str = "incidents",
    team_id: str = "T1",
    team_domain: str = "acme",
    api_app_id: str = "A1",
    response_url: str | None = None,
    trigger_id: str | None = None,
    token: str = "verification-token",
    slack: FakeSlack | None = None,
) -> bytes:
    """The form body Slack posts for a slash command; response_url is minted on `slack` if given."""
    if response_url is None:
        response_url = (
            slack.new_response_url(channel=channel_id, user=user_id)
            if slack is not None
            else f"https://hooks.slack.com/commands/{team_id}/1/{uuid.uuid4().hex[:24]}"
        )
    fields = {
        "token": token,
        "team_id": team_id,
        "team_domain": team_domain,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or _trigger_id(),
    }
    return urlencode(fields).encode()


def _find_button(blocks: Sequence[Mapping[str, Any]], action_id: str) -> tuple[str, Any] | None:
    for block in blocks:
        elements = list(block.get("elements", []))
        if "accessory" in block:
            elements.append(block["accessory"])
        for element in elements:
            if isinstance(element, Mapping) and element.get("action_id") == action_id:
                return str(block.get("block_id", "b")), element.get("text")
    return None


def block_actions_body(
    action_id: str,
    value: str,
    user_id: str,
    message_ts: str,
    channel_id: str,
    *,
    block_id: str | None = None,
    is_ephemeral: bool = False,
    message_blocks: Sequence[Mapping[str, Any]] | None = None,
    message_text: str = "",
    user_name: str = "alice",
    channel_name: str = "incidents",
    team_id: str = "T1",
    team_domain: str = "acme",
    api_app_id: str = "A1",
    response_url: str | None = None,
    trigger_id: str | None = None,
    token: str = "verification-token",
    slack: FakeSlack | None = None,
) -> bytes:
    """The `payload=<json>` body Slack posts for a button click; with `slack`, the message as stored."""
    message: dict[str, Any] = {"type": "message", "ts": message_ts, "text": message_text}
    if slack is not None and not is_ephemeral:
        try:
            message.update(slack.message(message_ts))
            message.pop("channel", None)
        except KeyError:
            pass
    if message_blocks is not None:
        message["blocks"] = [dict(b) for b in message_blocks]
    found = _find_button(message.get("blocks", []), action_id)
    button_text = found[1] if found else {"type": "plain_text", "text": action_id, "emoji": True}
    if response_url is None:
        response_url = (
            slack.new_response_url(
                channel=channel_id, user=user_id, message_ts=message_ts, is_ephemeral=is_ephemeral
            )
            if slack is not None
            else f"https://hooks.slack.com/actions/{team_id}/1/{uuid.uuid4().hex[:24]}"
        )
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "api_app_id": api_app_id,
        "token": token,
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": is_ephemeral,
        },
        "trigger_id": trigger_id or _trigger_id(),
        "team": {"id": team_id, "domain": team_domain},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": channel_name},
        "response_url": response_url,
        "actions": [
            {
                "action_id": action_id,
                "block_id": block_id or (found[0] if found else "b"),
                "text": button_text,
                "value": value,
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    if not is_ephemeral:  # Slack sends no `message` (nor `state`) for a click in an ephemeral
        payload["message"] = message
        payload["state"] = {"values": {}}
    return urlencode({"payload": json.dumps(payload)}).encode()


class SlackSender:
    """Posts slash commands and clicks to the app over HTTP, signed (or forged) as asked."""

    def __init__(
        self,
        url: str,
        signing_secret: str,
        *,
        slack: FakeSlack | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.signing_secret = signing_secret
        self.slack = slack
        self.timeout = timeout
        # One pooled client: building one per request (TLS context and all) costs ~20 ms of
        # CPU, which under concurrency would be measured as the app's latency.
        self._http = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=500))

    def close(self) -> None:
        """Close the pooled HTTP client."""
        self._http.close()

    def post(
        self,
        body: bytes,
        *,
        secret: str | None = None,
        timestamp: int | None = None,
        signed: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """POST raw `body`, signed with `secret` (default: the app's) at `timestamp` (default: now)."""
        sent = (
            sign(body, secret or self.signing_secret, timestamp)
            if signed
            else {"Content-Type": "application/x-www-form-urlencoded"}
        )
        sent.update(headers or {})
        return self._http.post(self.url, content=body, headers=sent)

    def command(
        self,
        text: str = "",
        *,
        command: str = "/rollback",
        user_id: str = "U1",
        user_name: str = "alice",
        channel_id: str = "C1",
        secret: str | None = None,
        timestamp: int | None = None,
        signed: bool = True,
        **fields: Any,
    ) -> httpx.Response:
        """Send a slash command as `user_id` in `channel_id`; extra fields go to slash_command_body."""
        body = slash_command_body(
            command,
            text,
            user_id=user_id,
            user_name=user_name,
            channel_id=channel_id,
            slack=self.slack,
            **fields,
        )
        return self.post(body, secret=secret, timestamp=timestamp, signed=signed)

    def submit_view(
        self, view: Mapping[str, Any], user_id: str, values: Mapping[str, Mapping[str, Any]]
    ) -> httpx.Response:
        """Send a modal as Slack does when the user presses its submit button."""
        return self.post(view_submission_body(view, user_id, values))

    def roll_back_via_dialog(
        self,
        card: Mapping[str, Any],
        user_id: str = "U1",
        *,
        target: str | None = None,
        reason: str = "",
        channel_id: str = "C1",
        action_id: str = "incident_rollback",
    ) -> httpx.Response:
        """Click Rollback on `card`, wait for the dialog it opens, and send it (with `target`
        chosen instead of the preselected version, and `reason`); the submit's response."""
        assert self.slack is not None, "roll_back_via_dialog needs the FakeSlack"
        value = next(
            e["value"]
            for b in card["blocks"]
            if b["type"] == "actions"
            for e in b["elements"]
            if e["action_id"] == action_id
        )
        before = len(self.slack.views())
        assert self.click(action_id, value, user_id, card["ts"], channel_id).status_code == 200
        view = self.slack.wait_for(lambda _: self.slack.views()[before:] if self.slack else None)[
            0
        ]["view"]
        target_block = next(b for b in view["blocks"] if b.get("block_id") == "target")
        element = target_block["element"]
        option = (
            next(o for o in element["options"] if o["value"] == target)
            if target is not None
            else element.get("initial_option")
        )
        values = {
            "target": {"target_version": {"type": "static_select", "selected_option": option}},
            "reason": {"reason_text": {"type": "plain_text_input", "value": reason or None}},
        }
        return self.submit_view(view, user_id, values)

    def click(
        self,
        action_id: str,
        value: str,
        user_id: str,
        message_ts: str,
        channel_id: str,
        *,
        secret: str | None = None,
        timestamp: int | None = None,
        signed: bool = True,
        **fields: Any,
    ) -> httpx.Response:
        """Click button `action_id` of message `message_ts`; extra fields go to block_actions_body."""
        body = block_actions_body(
            action_id, value, user_id, message_ts, channel_id, slack=self.slack, **fields
        )
        return self.post(body, secret=secret, timestamp=timestamp, signed=signed)
