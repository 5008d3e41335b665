"""Routing for serving apps: a snapshot, and a Server-Sent Events stream of every change.

SSE rather than long-polling: one long-lived GET that proxies and load balancers pass through,
that browsers and httpx read natively, with `id:` (the routing revision) on every event; the
server only ever pushes, so a bidirectional protocol would add nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote

from anyio import to_thread
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from bot import registry
from bot.api.deps import ActorDep, EngineDep
from bot.db import read_session
from bot.models import RoutingState

router = APIRouter(prefix="/api", tags=["serving"])

HEARTBEAT_SECONDS = 15.0
UNKNOWN_HEADER = "X-Unknown-Prompts"
PromptsQuery = Annotated[
    str | None, Query(description="comma-separated prompt names; all if unset")
]


def _names(prompts: str | None) -> list[str] | None:
    return [p.strip() for p in prompts.split(",") if p.strip()] if prompts else None


# The last event encoded for each prompt, with the state it encodes: the feed hands the same
# state object to every stream, so a change is encoded once, not once per connected client.
_encoded: dict[str, tuple[RoutingState, str]] = {}


def _event(state: RoutingState) -> str:
    hit = _encoded.get(state.prompt)
    if hit is not None and hit[0] is state:
        return hit[1]
    text = f"event: routing\nid: {state.revision}\ndata: {state.model_dump_json()}\n\n"
    _encoded[state.prompt] = (state, text)
    return text


@router.get("/routing", summary="Routing and templates of serving versions, for clients")
def routing(
    engine: EngineDep, _actor: ActorDep, response: Response, prompts: PromptsQuery = None
) -> list[RoutingState]:
    """What a client needs to choose versions by itself (the same sticky splits as /resolve).
    Names that are not registered are listed, percent-encoded, in the `X-Unknown-Prompts`
    header (a typo would otherwise look like a prompt with no routing); the rest are answered
    as usual."""
    names = _names(prompts)
    with read_session(engine) as session:
        states = registry.routing_states(session=session, names=names)
    missing = sorted(set(names or ()) - {state.prompt for state in states})
    if missing:
        # Percent-encoded: a header carries Latin-1 only, a typed name may carry anything.
        response.headers[UNKNOWN_HEADER] = ",".join(quote(m, safe="") for m in missing)[:2000]
    return states


@router.get("/stream", summary="Server-Sent Events: every routing change, as it happens")
async def stream(
    request: Request, engine: EngineDep, _actor: ActorDep, prompts: PromptsQuery = None
) -> StreamingResponse:
    """A snapshot first, then one `routing` event per change; a comment every 15 s."""
    feed = request.app.state.feed
    names = _names(prompts)
    queue = feed.subscribe()

    def snapshot() -> list[RoutingState]:
        with read_session(engine) as session:
            return registry.routing_states(session=session, names=names)

    async def events() -> AsyncIterator[str]:
        try:
            for state in await to_thread.run_sync(snapshot):
                yield _event(state)
            while True:
                try:
                    state = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if state is None:
                    return
                if names is None or state.prompt in names:
                    yield _event(state)
        finally:
            feed.unsubscribe(queue)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
