"""A TCP proxy that can cut a database away: every open connection reset, new ones refused.

Seen from the bot this is what a PostgreSQL restart (or a failover) looks like: sessions die
mid-query, then connecting fails until the server is back.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType


class TcpProxy:
    """Forwards 127.0.0.1:<port> to `upstream`; `cut()` drops everything until `restore()`."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._down = False
        self._stopped = False
        self.refused = 0
        self.reset = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopped = True
        self.cut()
        self._listener.close()

    def cut(self) -> None:
        """Reset every open connection and refuse new ones."""
        with self._lock:
            self._down = True
            doomed, self._open = self._open, set()
        for sock in doomed:
            self.reset += 1
            _close(sock, reset=True)

    def restore(self) -> None:
        with self._lock:
            self._down = False

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                down = self._down
            if down:
                self.refused += 1
                _close(client, reset=True)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client, reset=True)
                continue
            server.settimeout(None)  # the timeout was for connecting; an idle session is fine
            with self._lock:
                self._open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:  # one side ended: end the other too, so no database session is left open
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            _close(sink)
            _close(source)


def _close(sock: socket.socket, *, reset: bool = False) -> None:
    """Close `sock`, waking the pipe thread blocked reading it.

    On Linux close() alone neither wakes a thread blocked in recv() on the socket nor ends the
    connection (the blocked call keeps it alive), so a "cut" session would live on; shutdown()
    first does both.
    """
    try:
        if reset:  # RST, not FIN: the peer sees "connection reset", as on a crash
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD if reset else socket.SHUT_RDWR)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sock.close()
