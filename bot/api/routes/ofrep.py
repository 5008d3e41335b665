"""OpenFeature Remote Evaluation Protocol (OFREP): the live prompt version for any language,
through OpenFeature's own providers.

`POST /ofrep/v1/evaluate/flags/{key}` evaluates one prompt; `POST /ofrep/v1/evaluate/flags`
evaluates every prompt, with an `ETag` so a provider polling with `If-None-Match` gets 304
until something changes. Authenticated like `/api` (a bearer token). The flag semantics are in
bot/registry/flags.py; this module speaks the wire format.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from bot import registry
from bot.api.deps import ActorDep, EngineDep
from bot.db import read_session
from bot.models import RoutingState
from bot.registry.flags import FlagError, evaluate, prompt_of

router = APIRouter(prefix="/ofrep/v1", tags=["openfeature"])


async def _context(
    request: Request, key: str | None
) -> tuple[dict[str, Any] | None, Response | None]:
    """The request's evaluation context, or OFREP's 400 answer."""

    def refuse(code: str, details: str) -> JSONResponse:
        body = {"errorCode": code, "errorDetails": details}
        return JSONResponse({"key": key, **body} if key is not None else body, status_code=400)

    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None, refuse("PARSE_ERROR", "the body is not JSON")
    if not isinstance(body, dict):
        return None, refuse("PARSE_ERROR", "the body must be a JSON object with a context")
    context = body.get("context", {})
    if not isinstance(context, dict):
        return None, refuse("INVALID_CONTEXT", "context must be an object")
    targeting = context.get("targetingKey")
    if targeting is not None and (not isinstance(targeting, str) or len(targeting) > 512):
        return None, refuse("INVALID_CONTEXT", "targetingKey must be a string of at most 512")
    return context, None


def _states(engine: Engine, names: list[str] | None) -> dict[str, RoutingState]:
    with read_session(engine) as session:
        return {s.prompt: s for s in registry.routing_states(session=session, names=names)}


@router.post("/evaluate/flags/{key}", summary="Evaluate one prompt as a flag (OFREP)")
async def evaluate_flag(
    key: str, request: Request, engine: EngineDep, _actor: ActorDep
) -> Response:
    """The version to serve (`value`, `variant`), and why (`reason`: STATIC or SPLIT)."""
    context, refused = await _context(request, key)
    if refused is not None:
        return refused
    assert context is not None
    prompt, _ = prompt_of(key)
    # From the server's routing cache, like /resolve (a prompt unknown to the cache is read
    # from the database).
    state = request.app.state.feed.current(prompt)
    if state is None:
        state = (await run_in_threadpool(_states, engine, [prompt])).get(prompt)
    try:
        return JSONResponse(evaluate(key, state, context.get("targetingKey")))
    except FlagError as exc:
        return JSONResponse(exc.body(), status_code=exc.status)


@router.post("/evaluate/flags", summary="Evaluate every prompt as a flag (OFREP bulk)")
async def evaluate_flags(request: Request, engine: EngineDep, _actor: ActorDep) -> Response:
    """Every prompt's evaluation, with an ETag; `If-None-Match` with it gives 304 until a
    routing change or a different context changes the answer."""
    context, refused = await _context(request, None)
    if refused is not None:
        return refused
    assert context is not None
    states = await run_in_threadpool(_states, engine, None)
    flags: list[dict[str, Any]] = []
    for name in sorted(states):
        try:
            flags.append(evaluate(name, states[name], context.get("targetingKey")))
        except FlagError as exc:
            flags.append(exc.body())
    body = json.dumps({"flags": flags}, separators=(",", ":")).encode()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(body, media_type="application/json", headers={"ETag": etag})
