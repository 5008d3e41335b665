"""Fixtures per boundary: a real SQLite file or a real PostgreSQL, the API, data builders."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlmodel import SQLModel

from bot import registry
from bot.api.app import create_app
from bot.config import Settings, load_settings
from bot.db import make_engine, write_session
from bot.migrate import upgrade
from bot.models import Trigger, utcnow
from bot.registry.changes import Actor

API_TOKEN = "test-token-0123456789abcdef"
# Unique per run, so two test runs (a developer's and CI's) can share one PostgreSQL.
PG_SCHEMA = f"rollback_bot_test_{os.getpid()}"
PG_URL = os.environ.get("TEST_DATABASE_URL")

# A test needing PostgreSQL says so with this marker (these params carry it), whatever its ids.
POSTGRESQL = pytest.param("postgresql", marks=pytest.mark.postgresql)
BACKENDS = ["sqlite", POSTGRESQL]
PG_ONLY = [POSTGRESQL]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgresql: needs TEST_DATABASE_URL")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if PG_URL:
        return
    skip = pytest.mark.skip(reason="TEST_DATABASE_URL not set (PostgreSQL tests)")
    for item in items:
        if item.get_closest_marker("postgresql") is not None:
            item.add_marker(skip)


def _pg_url_with_schema(url: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{PG_SCHEMA}"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a schema private to this test run, migrated."""
    assert PG_URL is not None
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {PG_SCHEMA}"))
    url = _pg_url_with_schema(PG_URL)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE"))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: a SQLite file, or the PostgreSQL test schema truncated."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "registry.db"
        shutil.copy(template, path)
        return f"sqlite:///{path}"
    if not PG_URL:  # a PostgreSQL case not marked as one: never an error on a fresh machine
        pytest.skip("TEST_DATABASE_URL not set (PostgreSQL tests)")
    url: str = request.getfixturevalue("pg_url")
    engine = make_engine(url)
    tables = ", ".join(t.name for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url, pool_size=25, max_overflow=10)
    yield eng
    eng.dispose()


@pytest.fixture
def settings(db_url: str) -> Settings:
    return load_settings(database_url=db_url, rollback_api_token=API_TOKEN)


@pytest.fixture
def client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    app = create_app(settings, engine)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        test_client.headers["Authorization"] = f"Bearer {API_TOKEN}"
        yield test_client


OPERATOR = Actor(operator="tester", trigger=Trigger.CLI)


def make_prompt(
    engine: Engine,
    name: str = "customer-support",
    versions: tuple[str, ...] = ("v1.8.0", "v1.9.0", "v2.0.0"),
    deploy: tuple[str, ...] | None = None,
    now: datetime | None = None,
) -> None:
    """Register `versions` of `name`, then deploy `deploy` in order (default: all of them),
    at `now` (default: the time of each step)."""
    with write_session(engine) as session:
        for label in versions:
            registry.create_version(
                session=session,
                prompt=name,
                version=label,
                template=f"{name} {label}: {{q}}",
                created_by="tester",
                now=now or utcnow(),
            )
    for label in versions if deploy is None else deploy:
        with write_session(engine) as session:
            registry.deploy(
                session=session, prompt=name, version=label, actor=OPERATOR, now=now or utcnow()
            )


def roll_back(engine: Engine, name: str = "customer-support") -> None:
    """Roll `name` back to its previous known-good version, as an operator would."""
    with write_session(engine) as session:
        registry.rollback(
            session=session,
            prompt=name,
            target=None,
            actor=OPERATOR,
            now=utcnow(),
            reason="by hand",
            dedup_window=timedelta(0),
        )


@pytest.fixture(scope="session", autouse=True)
def _charts_ready() -> None:
    """Draw one chart before any test: the first import of matplotlib in a fresh environment
    compiles it and builds its font cache (many seconds), which would otherwise land inside
    whichever timed test first uploads a chart to Slack."""
    from bot.dashboard.charts import figure, png
    from bot.dashboard.data import ChartData

    png(figure("warm-up", ChartData([], [], []), {}))
