"""Builds the FastAPI application: wiring only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine

import bot
from bot.api import errors
from bot.api.limits import BodySizeLimit
from bot.api.routes import events, health, prompts, rollback
from bot.config import Settings
from bot.detection.scheduler import CheckerService


def create_app(
    settings: Settings, engine: Engine, *, checker: CheckerService | None = None
) -> FastAPI:
    """The HTTP API over the given settings and database engine, running `checker` if given."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if checker is not None:
            checker.start()
        try:
            yield
        finally:
            if checker is not None:
                checker.stop()

    app = FastAPI(
        title="Prompt rollback bot",
        version=bot.__version__,
        description="Registry of prompt versions with atomic, audited rollback.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.checker = checker
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    errors.install(app)
    app.include_router(health.router)
    app.include_router(prompts.router)
    app.include_router(rollback.router)
    app.include_router(events.router)
    return app
