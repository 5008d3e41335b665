"""A local stand-in for Slack's Socket Mode endpoint, speaking its protocol over a real
websocket (the `websockets` package): the bot connects with slack_sdk's own Socket Mode client.

Slack's protocol, as documented (api.slack.com/apis/socket-mode): the app calls
`apps.connections.open` with its app-level token and gets a `wss://` URL (here `ws://`); on
connecting, Slack sends `{"type": "hello", ...}`; each request arrives as an envelope
`{"envelope_id", "type": "slash_commands" | "interactive" | "events_api", "payload",
"accepts_response_payload", "retry_attempt", "retry_reason"}`, which the app acknowledges by
sending `{"envelope_id", "payload"?}` back; Slack sends `{"type": "disconnect", "reason"}`
before it closes a connection, and the app opens a new one.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

T = TypeVar("T")


@dataclass
class Ack:
    """What the app sent back for one envelope, and when."""

    envelope_id: str
    payload: dict[str, Any] | None
    at: float


@dataclass
class _State:
    tickets: set[str] = field(default_factory=set)
    connections: list[ServerConnection] = field(default_factory=list)
    opened: int = 0  # connections that said hello
    acks: dict[str, Ack] = field(default_factory=dict)
    refuse_handshake: bool = False


class FakeSocketMode:
    """Hands out one-use ticket URLs (through FakeSlack's apps.connections.open), greets each
    connection with `hello`, sends envelopes and records the app's acks."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # wait_for's predicates read the state under it too
        self._state = _State()
        self._server = serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._check_ticket,
            compression=None,
            ping_interval=None,  # the client pings; the server answers (as Slack's does)
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeSocketMode:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.drop()
        self._server.shutdown()
        self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        return int(self._server.socket.getsockname()[1])

    def new_url(self) -> str:
        """A fresh URL for apps.connections.open: one connection per ticket, as Slack's."""
        ticket = uuid.uuid4().hex
        with self._lock:
            self._state.tickets.add(ticket)
        return f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id=A1"

    # -- faults ------------------------------------------------------------------------------

    def refuse_handshakes(self, refuse: bool) -> None:
        """Answer the websocket upgrade 503 (a failed handshake) until told otherwise."""
        with self._lock:
            self._state.refuse_handshake = refuse

    def disconnect(self, reason: str = "refresh_requested") -> None:
        """Ask every open connection to go, as Slack does before rotating it."""
        for conn in self._connections():
            self._send(conn, {"type": "disconnect", "reason": reason, "debug_info": {"host": "x"}})

    def drop(self) -> None:
        """Cut every connection without a word (a network failure)."""
        for conn in self._connections():
            with suppress(OSError):
                conn.socket.shutdown(socket.SHUT_RDWR)  # FIN now, whatever thread reads it
            conn.socket.close()

    # -- traffic -----------------------------------------------------------------------------

    @property
    def opened(self) -> int:
        """How many connections have been greeted so far."""
        with self._lock:
            return self._state.opened

    def connected(self) -> bool:
        return bool(self._connections())

    def send(
        self, kind: str, payload: dict[str, Any], *, envelope_id: str | None = None, retry: int = 0
    ) -> str:
        """Send an envelope on the newest connection; returns its envelope_id."""
        conns = self._connections()
        assert conns, "no Socket Mode connection is open"
        envelope_id = envelope_id or str(uuid.uuid4())
        self._send(
            conns[-1],
            {
                "envelope_id": envelope_id,
                "type": kind,
                "payload": payload,
                "accepts_response_payload": kind != "events_api",
                "retry_attempt": retry,
                "retry_reason": "timeout" if retry else "",
            },
        )
        return envelope_id

    def ack(self, envelope_id: str, timeout: float = 5.0) -> Ack:
        """The app's ack of `envelope_id`, waiting for it."""
        return self.wait_for(lambda: self._state.acks.get(envelope_id), timeout)

    def wait_for(self, predicate: Callable[[], T | None], timeout: float = 5.0) -> T:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = predicate()
            if found:
                return found
            assert time.monotonic() < deadline, "Socket Mode condition not met in time"
            time.sleep(0.01)

    # -- internals ---------------------------------------------------------------------------

    def _connections(self) -> list[ServerConnection]:
        with self._lock:
            return list(self._state.connections)

    def _check_ticket(self, conn: ServerConnection, request: Request) -> Response | None:
        ticket = request.path.partition("ticket=")[2].partition("&")[0]
        with self._lock:
            if self._state.refuse_handshake:
                return conn.respond(503, "Service Unavailable\n")
            if ticket not in self._state.tickets:
                return conn.respond(401, "invalid ticket\n")
            self._state.tickets.discard(ticket)
        return None

    def _send(self, conn: ServerConnection, message: dict[str, Any]) -> None:
        with suppress(ConnectionClosed):
            conn.send(json.dumps(message))

    def _handle(self, conn: ServerConnection) -> None:
        with self._lock:
            self._state.connections.append(conn)
        try:
            hello = {
                "type": "hello",
                "num_connections": 1,
                "debug_info": {"host": "fake-socket-mode", "approximate_connection_time": 18060},
                "connection_info": {"app_id": "A1"},
            }
            conn.send(json.dumps(hello))
            with self._lock:
                self._state.opened += 1
            for raw in conn:
                message = json.loads(raw)
                if "envelope_id" in message:
                    with self._lock:
                        self._state.acks[message["envelope_id"]] = Ack(
                            message["envelope_id"], message.get("payload"), time.monotonic()
                        )
        except (ConnectionClosed, OSError, ValueError):
            pass
        finally:
            with self._lock:
                if conn in self._state.connections:
                    self._state.connections.remove(conn)


@contextmanager
def socket_mode(fake_slack: Any, app_token: str) -> Iterator[FakeSocketMode]:
    """A Socket Mode endpoint attached to `fake_slack` for `app_token`."""
    socket = FakeSocketMode().start()
    fake_slack.app_token, fake_slack.socket = app_token, socket
    try:
        yield socket
    finally:
        fake_slack.socket = None
        socket.stop()
