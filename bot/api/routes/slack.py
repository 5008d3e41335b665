"""POST /slack/events: slash commands and interactivity, dispatched off the event loop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from anyio import to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from slack_bolt import BoltRequest
from slack_sdk.signature import SignatureVerifier

from bot.slack import envelope

router = APIRouter(tags=["slack"])


def _signed(verifier: SignatureVerifier, body: str, headers: Mapping[str, str]) -> bool:
    """Whether the body carries a valid, fresh Slack signature (a timestamp that is not a
    number is simply not one: slack_sdk would raise on it)."""
    stamp = headers.get("x-slack-request-timestamp")
    if not isinstance(stamp, str) or not stamp.isascii() or not stamp.isdigit():
        return False
    return bool(verifier.is_valid_request(body, headers))


@router.post("/slack/events", include_in_schema=False)
async def slack_events(request: Request) -> Response:
    """Verify Slack's signature and dispatch; Bolt answers as soon as the listener acks."""
    service = request.app.state.slack
    if service is None:
        return Response("Slack is not configured on this server", status_code=404)
    if service.verifier is None:
        # Socket Mode without a signing secret: Slack's requests arrive over the websocket,
        # and nothing here could tell a forged POST from a real one, so none is served.
        return Response("Slack requests arrive over Socket Mode on this server", status_code=404)
    headers: dict[str, str | Sequence[str]] = dict(request.headers)
    refused = JSONResponse({"error": "invalid request"}, status_code=401)
    try:
        body = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:  # Slack only sends UTF-8: not Slack's
        return refused
    # Checked before anything parses the body: a forged, stale or mangled request is refused
    # here whatever it holds (Bolt checks again in its own middleware).
    if not _signed(service.verifier, body, request.headers):
        return refused
    try:
        bolt_request = BoltRequest(body=body, query=dict(request.query_params), headers=headers)
        wrong = envelope.problem(bolt_request.body)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        # Not a form or JSON body, or a payload whose user/team/channel Bolt cannot read
        # while building the request's context.
        wrong = "not a body Slack would send"
    if wrong is not None:  # signed, yet shaped unlike anything Slack sends: nothing is done
        return JSONResponse({"error": "malformed request body", "detail": wrong}, status_code=400)
    # Bolt's dispatch blocks until ack(); run it in a worker thread, never on the loop.
    answer = await to_thread.run_sync(service.app.dispatch, bolt_request)
    return Response(
        content=answer.body,
        status_code=answer.status,
        headers=answer.first_headers_without_set_cookie(),
    )
