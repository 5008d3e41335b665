"""Dashboard render times, with the JSON API's list of the same prompts as the reference.

    python benchmarks/dashboard.py

In-process (FastAPI's TestClient, SQLite file): for 10 and 1,000 prompts, each serving a
version with 5 minutes of traffic buckets, the median of 7 renders of the overview (`/ui`)
against `GET /api/prompts` over the same database; then one prompt's chart over 1 h (two
versions, a point a minute): series query + figure + SVG, and the same figure as PNG.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _server import TOKEN, header
from fastapi.testclient import TestClient
from sqlalchemy import insert

from bot.api.app import create_app
from bot.config import load_settings
from bot.dashboard import charts, data
from bot.db import make_engine, read_session, write_session
from bot.migrate import upgrade
from bot.models import HISTOGRAM_COLUMNS, Trigger, metric_bucket, utcnow
from bot.registry.changes import Actor, create_version, deploy


def _seed(engine, count: int) -> None:  # type: ignore[no-untyped-def]
    now = utcnow().replace(second=0, microsecond=0)
    actor = Actor("bench", Trigger.CLI)
    with write_session(engine) as session:
        for i in range(count):
            for label in ("v1", "v2"):
                create_version(
                    session=session,
                    prompt=f"p{i:04d}",
                    version=label,
                    template="t",
                    created_by="bench",
                    now=now - timedelta(hours=2),
                )
            deploy(
                session=session,
                prompt=f"p{i:04d}",
                version="v1",
                actor=actor,
                now=now - timedelta(hours=2),
            )
            deploy(
                session=session,
                prompt=f"p{i:04d}",
                version="v2",
                actor=actor,
                now=now - timedelta(hours=1),
            )
    with write_session(engine) as session:
        ids = [
            row[0]
            for row in session.execute(
                metric_bucket.metadata.tables["prompt_version"]
                .select()
                .with_only_columns(metric_bucket.metadata.tables["prompt_version"].c.id)
            )
        ]
        rows = [
            {
                "version_id": vid,
                "minute": now - timedelta(minutes=m),
                "requests": 100,
                "errors": 2,
                "latency_sum_ms": 40000.0,
                "quality_sum": 80.0,
                "quality_count": 100,
                **{c: (100 if c == HISTOGRAM_COLUMNS[10] else 0) for c in HISTOGRAM_COLUMNS},
            }
            for vid in ids
            for m in range(0, 60 if count <= 10 else 5)
        ]
        session.execute(insert(metric_bucket), rows)


def _median(work, runs: int = 7) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    print(header())
    for count in (10, 1000):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/d.db"
            engine = make_engine(url)
            upgrade(engine)
            _seed(engine, count)
            settings = load_settings(
                database_url=url,
                rollback_api_token=TOKEN,
                checker_enabled=False,
                rollback_policy_dir=str(Path(__file__).resolve().parent.parent / "policies"),
            )
            with TestClient(create_app(settings, engine)) as client:
                client.post("/ui/sign-in", data={"token": TOKEN})
                auth = {"Authorization": f"Bearer {TOKEN}"}
                first = client.get("/ui")
                assert first.status_code == 200, (first.status_code, first.text[:300])
                reference = _median(lambda c=client, a=auth: c.get("/api/prompts", headers=a))
                page = _median(lambda c=client: c.get("/ui"))
                print(
                    f"{count} prompts: overview {page:.1f} ms (median of 7); "
                    f"GET /api/prompts {reference:.1f} ms ({page / reference:.2f}x)"
                )
                if count == 10:
                    with read_session(engine) as session:
                        found = data.chart_data(
                            session, 1, utcnow() - timedelta(hours=1), timedelta(minutes=1)
                        )
                    svg_ms = _median(lambda c=found: charts.svg(charts.figure("p", c, {})))
                    png_ms = _median(lambda c=found: charts.png(charts.figure("p", c, {})))
                    full = _median(lambda c=client: c.get("/ui/prompts/p0000"))
                    print(
                        f"chart of 2 versions x 60 points: SVG {svg_ms:.0f} ms, PNG "
                        f"{png_ms:.0f} ms; whole prompt page {full:.0f} ms"
                    )


if __name__ == "__main__":
    main()
