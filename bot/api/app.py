"""Builds the FastAPI application: wiring only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine

import bot
from bot.api import errors
from bot.api.fast_resolve import FastResolve
from bot.api.feed import ChangeFeed
from bot.api.limits import BodySizeLimit
from bot.api.routes import (
    alertmanager,
    dashboard,
    events,
    health,
    incidents,
    ofrep,
    otlp,
    prompts,
    rollback,
    rollouts,
    stream,
)
from bot.api.routes import slack as slack_routes
from bot.config import Settings
from bot.notify import LogNotifier

if TYPE_CHECKING:  # built by `serve` when configured; importing them here would load them all
    from bot.policy import PolicySet
    from bot.runtime.scheduler import CheckerService
    from bot.slack.app import SlackService


def create_app(
    settings: Settings,
    engine: Engine,
    *,
    checker: CheckerService | None = None,
    slack: SlackService | None = None,
    policies: PolicySet | None = None,
) -> FastAPI:
    """The HTTP API over the given settings and engine, with the checker and Slack if given."""

    feed = ChangeFeed(engine, settings.stream_poll_seconds, settings.stream_safety_poll_seconds)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        feed.start()
        if slack is not None:
            slack.start()
        if checker is not None:
            checker.start()
        try:
            yield
        finally:
            if checker is not None:
                checker.stop()
            if slack is not None:
                slack.stop()
            await feed.stop()
            overview = getattr(_app.state, "overview_feed", None)  # made by the first overview
            if overview is not None:
                await overview.stop()

    app = FastAPI(
        title="Prompt rollback bot",
        version=bot.__version__,
        description="Registry of prompt versions with atomic, audited rollback.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.checker = checker
    app.state.slack = slack
    app.state.notifier = slack.notifier if slack is not None else LogNotifier()
    app.state.policies = policies
    app.state.feed = feed
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(FastResolve, settings=settings)  # outermost: /resolve's cached answers
    errors.install(app)
    app.include_router(slack_routes.router)
    app.include_router(health.router)
    app.include_router(prompts.router)
    app.include_router(rollback.router)
    app.include_router(events.router)
    app.include_router(rollouts.router)
    app.include_router(incidents.router)
    app.include_router(otlp.router)
    app.include_router(ofrep.router)
    app.include_router(alertmanager.router)
    app.include_router(dashboard.router)
    app.include_router(dashboard.root)
    app.mount(
        "/ui/static",
        StaticFiles(directory=str(Path(dashboard.HERE) / "static")),
        name="dashboard-static",
    )
    app.include_router(stream.router)
    return app
