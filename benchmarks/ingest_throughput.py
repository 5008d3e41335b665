"""Event ingestion throughput through the HTTP API: POST /api/events in batches of 500.

    python benchmarks/ingest_throughput.py [--seconds 10] [--clients 4] [--batch 500]

Runs the real server (SQLite file, checker on) in its own process and posts pre-encoded
batches from client threads for a fixed time, each under a fresh `batch_id` as the serving
client sends them (`--no-batch-id` leaves it out). Target: >= 20,000 events/s on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _server import api, header, scratch_schema, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--no-batch-id", action="store_true", help="send batches without an id")
    args = parser.parse_args()
    print(header())
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/ingest.db"
        with contextlib.ExitStack() as stack:
            if url.startswith("postgresql"):
                url = stack.enter_context(scratch_schema(url, "bench_ingest"))
                from bot.db import make_engine
                from bot.migrate import upgrade

                upgrade(make_engine(url))
            base = stack.enter_context(server(url))
            client = stack.enter_context(api(base))
            for label in ("v1.9.0", "v2.0.0"):
                client.post(
                    "/api/prompts/customer-support/versions",
                    json={"version": label, "template": "t"},
                ).raise_for_status()
            rng = random.Random(7)
            now = datetime.now(UTC).isoformat()
            bodies = [
                json.dumps(
                    {
                        "events": [
                            {
                                "prompt": "customer-support",
                                "version": rng.choice(["v1.9.0", "v2.0.0"]),
                                "error": rng.random() < 0.02,
                                "latency_ms": rng.lognormvariate(6, 0.4),
                                "quality": round(rng.random(), 3),
                                "ts": now,
                            }
                            for _ in range(args.batch)
                        ]
                    }
                ).encode()
                for _ in range(20)
            ]
            sent, latencies, lock = [0], [], threading.Lock()
            errors: dict[int, int] = {}
            deadlocks_before = _deadlocks(url)
            stop = time.perf_counter() + args.seconds

            def worker(index: int) -> None:
                with api(base) as own:
                    i = index
                    while time.perf_counter() < stop:
                        started = time.perf_counter()
                        body = bodies[i % len(bodies)]
                        if (
                            not args.no_batch_id
                        ):  # '{"events":...}' -> '{"batch_id":"…","events":...}'
                            body = b'{"batch_id":"%s",' % uuid.uuid4().hex.encode() + body[1:]
                        r = own.post(
                            "/api/events",
                            content=body,
                            headers={"Content-Type": "application/json"},
                        )
                        with lock:  # an error is counted and the client keeps going
                            if r.status_code == 200:
                                sent[0] += args.batch
                            else:
                                errors[r.status_code] = errors.get(r.status_code, 0) + 1
                            latencies.append((time.perf_counter() - started) * 1000)
                        i += 1

            began = time.perf_counter()
            threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - began
            latencies.sort()
            print(
                f"{sent[0]} events in {elapsed:.1f} s = {sent[0] / elapsed:,.0f} events/s "
                f"({args.clients} clients, batches of {args.batch}, "
                f"{'no batch_id' if args.no_batch_id else 'batch_id each'}); per batch p50 "
                f"{statistics.median(latencies):.1f} ms, p99 "
                f"{latencies[int(len(latencies) * 0.99) - 1]:.1f} ms; errors {errors or 'none'}"
                + (
                    f"; PostgreSQL deadlocks {_deadlocks(url) - deadlocks_before}"
                    if url.startswith("postgresql")
                    else ""
                )
            )


def _deadlocks(url: str) -> int:
    """pg_stat_database.deadlocks of the database (0 for SQLite)."""
    if not url.startswith("postgresql"):
        return 0
    from sqlalchemy import create_engine, text

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        ).scalar_one()
    engine.dispose()
    return int(found)


if __name__ == "__main__":
    main()
