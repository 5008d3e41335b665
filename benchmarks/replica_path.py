"""Where the time of "rollback through replica A -> clients on replica B" goes (serving.py's
two-replica figure, measured from the request), part by part, in one run:

    python benchmarks/replica_path.py [--n 200] [--runs 3] [--pg postgresql://...]

1. the switch request alone, as serving.py sends it (a rollback to v1.9.0, then a forced
   deploy of v2.0.0, alternately, through the API), to one server on SQLite and one on
   PostgreSQL, with no stream connected: from sending it to its answer;
2. the hop to another server: a switch committed through one engine, to a change feed
   LISTENing in this process (the path replica B's feed takes: NOTIFY with the state, parsed
   and fanned out to a subscriber queue), from the commit's return to the queue having it
   (it can be negative: PostgreSQL delivers at commit, before the commit call returns);
3. the reference: raw LISTEN/NOTIFY one way between two plain psycopg connections.

Each figure is p50 / p99 per run, min / median / max over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import threading
import time

from _server import header, scratch_schema, server
from serving import Runs, bot_change, percentiles, raw_notify, seed_cs, spread

from bot import registry
from bot.api.feed import ChangeFeed
from bot.db import make_engine, write_session
from bot.migrate import upgrade
from bot.models import Trigger, utcnow
from bot.registry.changes import Actor

ACTOR = Actor(operator="bench", trigger=Trigger.API)


def report(name: str, runs: Runs) -> None:
    print(
        f"  {name}: p50 {spread([r[0] for r in runs])}, p99 {spread([r[1] for r in runs])} "
        "(min / median / max of the runs)"
    )


def requests(database_url: str, n: int, runs: int) -> Runs:
    """The switch request alone: `n` a run, alternating as serving.py does."""
    results: Runs = []
    with server(database_url, CHECKER_ENABLED="false") as base:
        seed_cs(base)
        change = bot_change(base)
        switch = 0
        for _run in range(runs):
            took = []
            for _ in range(n):
                switch += 1
                started = time.perf_counter()
                change("v1.9.0" if switch % 2 else "v2.0.0")
                took.append(time.perf_counter() - started)
            results.append(percentiles(took))
    return results


def hop(url: str, n: int, runs: int) -> Runs:
    """A switch committed through one engine -> a LISTENing feed's subscriber queue."""
    listening = make_engine(url)
    # Another engine (another URL) is another process to the feed: its commits reach the feed
    # only through PostgreSQL, as a replica's do.
    other = make_engine(url + ("&" if "?" in url else "?") + "application_name=bench-other")
    with write_session(other) as session:
        for label in ("v1", "v2"):
            registry.create_version(
                session=session,
                prompt="hop",
                version=label,
                template=label,
                created_by="bench",
                now=utcnow(),
            )
        registry.deploy(session=session, prompt="hop", version="v1", actor=ACTOR, now=utcnow())

    async def measure() -> Runs:
        feed = ChangeFeed(listening, poll_seconds=30, safety_poll_seconds=30)
        feed.start()
        deadline = time.monotonic() + 10
        while feed.listener is None or not feed.listener.listening:
            if time.monotonic() > deadline:
                raise SystemExit("the feed did not start listening")
            await asyncio.sleep(0.05)
        queue = feed.subscribe()
        results: Runs = []
        switch = 0
        for _run in range(runs):
            delays = []
            for _ in range(n):
                switch += 1
                committed: list[float] = []
                version = "v2" if switch % 2 else "v1"

                def commit(label: str = version, out: list[float] = committed) -> None:
                    with write_session(other) as session:
                        registry.deploy(
                            session=session,
                            prompt="hop",
                            version=label,
                            actor=ACTOR,
                            now=utcnow(),
                        )
                    out.append(time.perf_counter())

                thread = threading.Thread(target=commit)
                thread.start()
                state = await asyncio.wait_for(queue.get(), 10)
                received = time.perf_counter()
                thread.join()
                if state is None or state.active_version != version:
                    raise SystemExit(f"the feed published {state}, not {version}")
                delays.append(received - committed[0])
                await asyncio.sleep(0.005)
            results.append(percentiles(delays))
        await feed.stop()
        return results

    try:
        return asyncio.run(measure())
    finally:
        listening.dispose()
        other.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200, help="switches a run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pg", default=os.environ.get("TEST_DATABASE_URL"))
    args = parser.parse_args()
    if not args.pg:
        raise SystemExit("needs --pg (or TEST_DATABASE_URL): the replica path is PostgreSQL's")
    logging.disable(logging.INFO)
    print(header())
    print(f"the switch request alone, {args.n} a run:")
    with tempfile.TemporaryDirectory() as tmp:
        report("one server on SQLite", requests(f"sqlite:///{tmp}/path.db", args.n, args.runs))
    with scratch_schema(args.pg, f"bench_path_{os.getpid()}") as url:
        upgrade(make_engine(url))
        report("one server on PostgreSQL", requests(url, args.n, args.runs))
    with scratch_schema(args.pg, f"bench_hop_{os.getpid()}") as url:
        upgrade(make_engine(url))
        print(f"the hop to another server, {args.n} a run:")
        report("commit returned -> LISTENing feed's queue", hop(url, args.n, args.runs))
        report("reference: raw LISTEN/NOTIFY one way", raw_notify(url, args.runs, args.n))


if __name__ == "__main__":
    main()
