"""POST /slack/events: slash commands and interactivity, verified and dispatched to Bolt."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from anyio import to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

if TYPE_CHECKING:  # Slack Bolt is loaded by the Slack service, only when Slack is configured
    from slack_bolt import BoltRequest
    from slack_sdk.signature import SignatureVerifier

router = APIRouter(tags=["slack"])
log = logging.getLogger(__name__)


def _is_ssl_check(body: str) -> bool:
    """Slack's certificate probe for a slash command URL: `ssl_check=1`, sent unsigned."""
    return parse_qs(body).get("ssl_check") == ["1"]


def _what(request: BoltRequest) -> str:
    """A request's kind for the log: its type, command, event or action ids."""
    body = request.body
    kind = body.get("command") or body.get("type") or "request"
    event = body.get("event")
    if isinstance(event, dict) and event.get("type"):
        kind = f"{kind} {event['type']}"
    actions = body.get("actions")
    if isinstance(actions, list):
        ids = [a.get("action_id") for a in actions if isinstance(a, dict)]
        kind = f"{kind} {', '.join(str(i) for i in ids)}"
    view = body.get("view")
    if isinstance(view, dict) and view.get("callback_id"):
        kind = f"{kind} {view['callback_id']}"
    return str(kind)


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
        if _is_ssl_check(body):  # Slack sends it unsigned; it changes nothing and needs a 200
            return Response(status_code=200)
        return refused
    # Bolt and the listeners are loaded already by the Slack service (only when Slack is set
    # up); the envelope's models are built with Slack's first request.
    from slack_bolt import BoltRequest

    from bot.slack import envelope, listener

    try:
        bolt_request = BoltRequest(body=body, query=dict(request.query_params), headers=headers)
        wrong = envelope.problem(bolt_request.body)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        # Not a form or JSON body, or a payload whose user/team/channel Bolt cannot read
        # while building the request's context.
        wrong = "not a body Slack would send"
    if wrong is not None:  # signed, yet shaped unlike anything Slack sends: nothing is done
        return JSONResponse({"error": "malformed request body", "detail": wrong}, status_code=400)
    if listener.runs_inline(bolt_request.body):
        # Commands and clicks: Bolt's dispatch only acks and queues the work (no I/O), so it
        # runs here; a worker-thread hop would cost more than the dispatch itself.
        answer = service.app.dispatch(bolt_request)
    else:  # the rollback dialog rolls back before answering: never on the loop
        answer = await to_thread.run_sync(service.app.dispatch, bolt_request)
    if answer.status == 404:
        # Signed by Slack but nothing here handles it (an event the app is subscribed to, a
        # modal or button of an older release): acknowledged, so Slack neither retries it nor
        # shows the user an error, and logged so it is not silently lost.
        log.info("Slack request not handled by this release, acknowledged: %s", _what(bolt_request))
        return Response(status_code=200)
    return Response(
        content=answer.body,
        status_code=answer.status,
        headers=answer.first_headers_without_set_cookie(),
    )
