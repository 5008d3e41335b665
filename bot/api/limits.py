"""Refuse request bodies over the configured size before anything reads them."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """ASGI middleware answering 413 to bodies larger than `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        if declared is None:
            # No length given (chunked): read the body here, up to the limit, and hand it on
            # whole. Counting inside the app's own reads is not enough: FastAPI turns any error
            # raised while it reads the body into 400 "error parsing the body".
            body, more = bytearray(), True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    await self.app(scope, _replay([message], receive), send)
                    return
                body += message.get("body", b"")
                more = bool(message.get("more_body"))
                if len(body) > self.max_bytes:
                    await self._refuse(send)
                    return
            whole: Message = {"type": "http.request", "body": bytes(body), "more_body": False}
            await self.app(scope, _replay([whole], receive), send)
            return
        await self.app(scope, receive, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {"error": "payload_too_large", "detail": f"request body over {self.max_bytes} bytes"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that returns `messages` first, then the client's own (disconnects)."""

    async def replaying() -> Message:
        return messages.pop(0) if messages else await receive()

    return replaying
