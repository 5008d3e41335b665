"""The references for resolve.py: the same JSON answer from a bare Starlette endpoint and from
a bare FastAPI route (a query parameter, a header dependency), under uvicorn with the settings
`serve` uses.

    python benchmarks/_bare_http.py starlette|fastapi PORT
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import uvicorn
from fastapi import FastAPI, Header, Query
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ANSWER = {
    "prompt": "cs",
    "version": "v2",
    "template": "You are a helpful support agent. Answer in the customer's language.",
    "revision": 3,
}


def starlette_app() -> Starlette:
    body = json.dumps(ANSWER).encode()

    async def resolve(request: Request) -> Response:
        request.query_params.get("key")
        return Response(body, media_type="application/json", headers={"ETag": '"3"'})

    return Starlette(routes=[Route("/api/prompts/{name}/resolve", resolve)])


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/api/prompts/{name}/resolve")
    async def resolve(
        name: str,
        authorization: Annotated[str | None, Header()] = None,
        key: Annotated[str | None, Query(max_length=512)] = None,
    ) -> dict[str, object]:
        return ANSWER

    return app


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    app = starlette_app() if kind == "starlette" else fastapi_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", proxy_headers=True)
