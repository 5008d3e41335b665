"""Reference for propagation: an in-process SSE broadcast speaking /api/stream's protocol.

    python benchmarks/_broadcast.py PORT

A bare Starlette app under uvicorn (same settings as `serve`): GET /api/routing and
GET /api/stream answer like the bot's (so PromptClient follows it unchanged), and POST /flip
switches the one prompt `cs` to ?version= and puts the new state on every stream's queue
before answering — no database, no feed: the floor for "a change reaches 50 clients".
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

STATE: dict[str, object] = {
    "prompt": "cs",
    "revision": 1,
    "active_version": "v2.0.0",
    "split": None,
    "order": ["v2.0.0"],
    "templates": {"v2.0.0": "v2.0.0"},
}
QUEUES: set[asyncio.Queue[str]] = set()


def _event() -> str:
    return f"event: routing\nid: {STATE['revision']}\ndata: {json.dumps(STATE)}\n\n"


async def routing(_request: Request) -> Response:
    return JSONResponse([STATE])


async def stream(_request: Request) -> Response:
    queue: asyncio.Queue[str] = asyncio.Queue()
    QUEUES.add(queue)

    async def events() -> AsyncIterator[str]:
        try:
            yield _event()
            while True:
                yield await queue.get()
        finally:
            QUEUES.discard(queue)

    return StreamingResponse(events(), media_type="text/event-stream")


async def flip(request: Request) -> Response:
    version = request.query_params["version"]
    STATE.update(
        revision=int(str(STATE["revision"])) + 1,
        active_version=version,
        order=[version],
        templates={version: version},
    )
    event = _event()
    for queue in list(QUEUES):
        queue.put_nowait(event)
    return JSONResponse({"revision": STATE["revision"]})


app = Starlette(
    routes=[
        Route("/healthz", lambda _r: JSONResponse({"status": "ok"})),
        Route("/api/routing", routing),
        Route("/api/stream", stream),
        Route("/flip", flip, methods=["POST"]),
    ]
)

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        timeout_graceful_shutdown=3,
    )
