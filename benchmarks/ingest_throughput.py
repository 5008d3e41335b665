"""Event ingestion throughput through the HTTP API, against a plain-Python reference.

    python benchmarks/ingest_throughput.py [--seconds 6] [--clients 4] [--batch 500] [--runs 3]
        [--database-url postgresql://...] [--no-batch-id] [--distinct-ts]

Each run measures, one after the other on the same machine:
- the project: the real server (`rollback-bot serve`, checker on) in its own process, with
  wrk (one thread, `--clients` connections) posting pre-encoded batches to POST /api/events
  for `--seconds`, each under a fresh `batch_id` as the serving client sends them
  (`--no-batch-id` leaves it out); error answers are counted and wrk keeps going. All events
  of a batch share one `ts` unless `--distinct-ts` gives each its own;
- the reference (benchmarks/_ingest_reference.py): the same bodies, from as many threads,
  parsed with json.loads, folded per batch and written with the same SQL statements on the
  same schema straight through sqlite3 or psycopg, no HTTP;
and prints both rates and their ratio; then min/median/max over the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _ingest_reference import Reference, psycopg_connect, sqlite_connect
from _server import PIDS, TOKEN, api, header, scratch_schema, server

PROMPT, VERSIONS = "customer-support", ("v1.9.0", "v2.0.0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--no-batch-id", action="store_true", help="send batches without an id")
    parser.add_argument(
        "--distinct-ts",
        action="store_true",
        help="a different ts (to the microsecond) for every event, instead of one per batch",
    )
    args = parser.parse_args()
    print(header())
    bodies = _bodies(args.batch, args.distinct_ts)
    backend = "PostgreSQL" if (args.database_url or "").startswith("postgresql") else "SQLite"
    results: list[tuple[float, float]] = []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as tmp:
            reference = _reference(args, bodies, tmp)
            project = _project(args, bodies, tmp)
        results.append((project, reference))
        print(
            f"run {run}: project {project:,.0f} events/s, reference {reference:,.0f} events/s, "
            f"ratio {project / reference:.2f}x",
            flush=True,
        )
    projects = sorted(p for p, _ in results)
    references = sorted(r for _, r in results)
    ratios = sorted(p / r for p, r in results)
    print(
        f"{backend}, {args.clients} clients, batches of {args.batch}, {args.runs} runs "
        f"(min/median/max): project {_spread(projects, '{:,.0f}')} events/s; "
        f"reference {_spread(references, '{:,.0f}')} events/s; "
        f"ratio {_spread(ratios, '{:.2f}')}x"
    )


def _spread(values: list[float], fmt: str) -> str:
    return " / ".join(fmt.format(v) for v in (values[0], statistics.median(values), values[-1]))


def _bodies(batch: int, distinct_ts: bool = False) -> list[bytes]:
    rng = random.Random(7)
    now = datetime.now(UTC)
    return [
        json.dumps(
            {
                "events": [
                    {
                        "prompt": PROMPT,
                        "version": rng.choice(VERSIONS),
                        "error": rng.random() < 0.02,
                        "latency_ms": rng.lognormvariate(6, 0.4),
                        "quality": round(rng.random(), 3),
                        "ts": (now - timedelta(microseconds=i if distinct_ts else 0)).isoformat(),
                    }
                    for i in range(batch)
                ]
            }
        ).encode()
        for _ in range(20)
    ]


def _with_id(body: bytes, args: argparse.Namespace) -> bytes:
    """'{"events":...}' -> '{"batch_id":"…","events":...}' (a fresh id, unless --no-batch-id)."""
    if args.no_batch_id:
        return body
    return b'{"batch_id":"%s",' % uuid.uuid4().hex.encode() + body[1:]


def _reference(args: argparse.Namespace, bodies: list[bytes], tmp: str) -> float:
    """The reference's events/s on a fresh database with the project's schema."""
    from bot.db import make_engine, write_session
    from bot.migrate import upgrade
    from bot.models import utcnow
    from bot.registry import changes

    with contextlib.ExitStack() as stack:
        if args.database_url:
            url = stack.enter_context(scratch_schema(args.database_url, "bench_ingest_ref"))
        else:
            url = f"sqlite:///{tmp}/reference.db"
        engine = make_engine(url)
        upgrade(engine)
        with write_session(engine) as session:
            for label in VERSIONS:
                changes.create_version(
                    session=session,
                    prompt=PROMPT,
                    version=label,
                    template="t",
                    created_by="benchmark",
                    now=utcnow(),
                )
        engine.dispose()
        if url.startswith("postgresql"):
            reference = Reference(psycopg_connect(url), "postgresql")
        else:
            reference = Reference(sqlite_connect(f"{tmp}/reference.db"), "sqlite")
        cpu = time.process_time()
        events, elapsed = reference.run(
            bodies, args.clients, args.seconds, lambda body: _with_id(body, args)
        )
        cpu = time.process_time() - cpu
        print(
            f"  reference: {events} events in {elapsed:.1f} s = {events / elapsed:,.0f}/s; "
            f"CPU {cpu / events * 1e6:.1f} µs/event"
        )
        return events / elapsed


LUA = """
local bodies, counter, prefix = {}, 0, "%(prefix)s"
for i = 1, %(count)d do
  local f = assert(io.open("%(dir)s/body" .. i .. ".json", "rb"))
  bodies[i] = f:read("*a")
  f:close()
end
local headers = {["Authorization"] = "Bearer %(token)s", ["Content-Type"] = "application/json"}
setup = function(thread)
  counter = counter + 1
  thread:set("thread_id", counter)
end
request = function()
  counter = counter + 1
  local body = bodies[counter %% #bodies + 1]
  if prefix ~= "" then  -- '{"events":...}' -> '{"batch_id":"…","events":...}'
    body = '{"batch_id":"' .. prefix .. thread_id .. "-" .. counter .. '",' .. body:sub(2)
  end
  return wrk.format("POST", "/api/events", headers, body)
end
"""


def _project(args: argparse.Namespace, bodies: list[bytes], tmp: str) -> float:
    """The server's events/s through POST /api/events, posted by wrk (one thread, a connection
    per client: a load generator in C takes little of the CPU the server is measured with);
    prints latencies, error answers and CPU."""
    with contextlib.ExitStack() as stack:
        url = args.database_url or f"sqlite:///{tmp}/ingest.db"
        if url.startswith("postgresql"):
            url = stack.enter_context(scratch_schema(url, "bench_ingest"))
            from bot.db import make_engine
            from bot.migrate import upgrade

            upgrade(make_engine(url))
        base = stack.enter_context(server(url))
        client = stack.enter_context(api(base))
        for label in VERSIONS:
            client.post(
                f"/api/prompts/{PROMPT}/versions", json={"version": label, "template": "t"}
            ).raise_for_status()
        for i, body in enumerate(bodies, 1):
            Path(tmp, f"body{i}.json").write_bytes(body)
        script = Path(tmp, "post.lua")
        prefix = "" if args.no_batch_id else uuid.uuid4().hex[:12]
        script.write_text(
            LUA % {"prefix": prefix, "count": len(bodies), "dir": tmp, "token": TOKEN}
        )
        deadlocks_before = _deadlocks(url)
        server_cpu = _cpu(PIDS[base])
        command = ["wrk", "-t1", f"-c{args.clients}", f"-d{args.seconds:.0f}s", "--latency"]
        out = subprocess.run(
            [*command, "--timeout", "30s", "-s", str(script), base],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        server_cpu = _cpu(PIDS[base]) - server_cpu
        found = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
        assert found, out
        elapsed = float(found.group(2)) / (1000 if found.group(3) == "ms" else 1)
        failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = int(failed.group(1)) if failed else 0
        sent = (int(found.group(1)) - errors) * args.batch
        p50, p99 = (re.search(rf"\s{q}%\s+(\S+)", out) for q in (50, 99))
        broken = re.search(r"Socket errors: .*", out)
        stored = _stored(url)
        if stored < sent:  # wrk counts answers: a batch answered 200 must be in the table
            raise SystemExit(f"{sent} events answered 200 but {stored} stored")
        print(
            f"  project: {sent} events in {elapsed:.1f} s = {sent / elapsed:,.0f}/s "
            f"({'no batch_id' if args.no_batch_id else 'batch_id each'}); per batch p50 "
            f"{p50.group(1) if p50 else '?'}, p99 {p99.group(1) if p99 else '?'}; "
            f"error answers {errors}{'; ' + broken.group(0) if broken else ''}; "
            f"CPU {server_cpu / max(sent, 1) * 1e6:.1f} µs/event in the server"
            + (
                f"; PostgreSQL deadlocks {_deadlocks(url) - deadlocks_before}"
                if url.startswith("postgresql")
                else ""
            )
        )
        return sent / elapsed


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stored(url: str) -> int:
    """Events in the server's buckets (each accepted batch once, a duplicate never)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        found = conn.execute(text("SELECT COALESCE(SUM(requests), 0) FROM metric_bucket"))
        total = int(found.scalar_one())
    engine.dispose()
    return total


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
