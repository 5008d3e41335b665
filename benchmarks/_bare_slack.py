"""The reference for slack_ack.py: a bare Starlette endpoint that checks Slack's signature
(slack_sdk's SignatureVerifier) and answers 200, under uvicorn with the settings `serve` uses.

    python benchmarks/_bare_slack.py PORT SECRET
"""

from __future__ import annotations

import sys

import uvicorn
from slack_sdk.signature import SignatureVerifier
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def app(secret: str) -> Starlette:
    verifier = SignatureVerifier(secret)

    async def events(request: Request) -> Response:
        body = await request.body()
        if not verifier.is_valid_request(body, dict(request.headers)):
            return Response(status_code=401)
        return Response(status_code=200)

    return Starlette(routes=[Route("/slack/events", events, methods=["POST"])])


if __name__ == "__main__":
    port, secret = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(app(secret), host="127.0.0.1", port=port, log_level="warning", proxy_headers=True)
