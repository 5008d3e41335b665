"""Builds the FastAPI application: wiring only."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import Engine

import bot
from bot.api import errors
from bot.api.limits import BodySizeLimit
from bot.api.routes import health, prompts, rollback
from bot.config import Settings


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    """The HTTP API over the given settings and database engine."""
    app = FastAPI(
        title="Prompt rollback bot",
        version=bot.__version__,
        description="Registry of prompt versions with atomic, audited rollback.",
    )
    app.state.settings = settings
    app.state.engine = engine
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    errors.install(app)
    app.include_router(health.router)
    app.include_router(prompts.router)
    app.include_router(rollback.router)
    return app
