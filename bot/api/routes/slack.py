"""POST /slack/events: slash commands and interactivity, dispatched off the event loop."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Request, Response
from slack_bolt import BoltRequest

router = APIRouter(tags=["slack"])


@router.post("/slack/events", include_in_schema=False)
async def slack_events(request: Request) -> Response:
    """Verify Slack's signature and dispatch; Bolt answers as soon as the listener acks."""
    service = request.app.state.slack
    if service is None:
        return Response("Slack is not configured on this server", status_code=404)
    body = (await request.body()).decode("utf-8")
    bolt_request = BoltRequest(
        body=body, query=dict(request.query_params), headers=dict(request.headers)
    )
    # Bolt's dispatch blocks until ack(); run it in a worker thread, never on the loop.
    answer = await to_thread.run_sync(service.app.dispatch, bolt_request)
    return Response(
        content=answer.body,
        status_code=answer.status,
        headers=answer.first_headers_without_set_cookie(),
    )
