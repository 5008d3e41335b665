"""Dependencies shared by the routes: the engine, the settings, and the caller's identity."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from bot.config import Settings
from bot.models import Trigger
from bot.notify import Notifier
from bot.registry.changes import Actor

_bearer = HTTPBearer(auto_error=False, description="ROLLBACK_API_TOKEN (or a named token)")


async def get_engine(request: Request) -> Engine:
    """The database engine the app was built with."""
    engine: Engine = request.app.state.engine
    return engine


async def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


async def api_actor(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    """Authenticate the bearer token; the token's name becomes the operator."""
    tokens = settings.api_tokens()
    if not tokens:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the HTTP API is disabled until ROLLBACK_API_TOKEN is set "
            "(generate one with `rollback-bot token new`)",
        )
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token: send `Authorization: Bearer <ROLLBACK_API_TOKEN>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    offered = credentials.credentials.encode()
    name = None
    for token, token_name in tokens.items():
        # Compare against every token so timing does not reveal which one nearly matched.
        if hmac.compare_digest(offered, token.encode()):
            name = token_name
    if name is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid token", headers={"WWW-Authenticate": "Bearer"}
        )
    return Actor(operator=name, trigger=Trigger.API)


async def get_notifier(request: Request) -> Notifier:
    """Where this server's notices go: Slack's outbox, or the log."""
    notifier: Notifier = request.app.state.notifier
    return notifier


EngineDep = Annotated[Engine, Depends(get_engine)]
NotifierDep = Annotated[Notifier, Depends(get_notifier)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ActorDep = Annotated[Actor, Depends(api_actor)]
