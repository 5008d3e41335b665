"""Serving: cached get() cost, rollback propagation (one server, two replicas), idle CPU with
10,000 prompts, PromptClient.close(), /resolve throughput.

    python benchmarks/serving.py [--clients 50] [--rounds 5] [--runs 3] [--seconds 5]
        [--pg postgresql://...] [--idle-prompts 10000] [--idle-seconds 10]

References measured in the same run (issue 17): an in-process SSE broadcast to the same
clients (benchmarks/_broadcast.py: no database, no feed) for propagation, and a raw
PostgreSQL LISTEN/NOTIFY one way for replicas. Targets: one server p99 within 2x of the
broadcast; two replicas p99 <= 10 ms above it; an idle server with 10,000 prompts <= 2% of
a core; PromptClient.close() <= 100 ms, and the server lets go of closed streams at once.
The PostgreSQL parts need --pg (or TEST_DATABASE_URL).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _server import PIDS, TOKEN, api, free_port, header, scratch_schema, server  # noqa: E402

from bot.client import PromptClient  # noqa: E402
from bot.db import make_engine, write_session  # noqa: E402
from bot.migrate import upgrade  # noqa: E402
from bot.models import Prompt, PromptVersion, Routing, utcnow  # noqa: E402


def get_cost() -> None:
    client = PromptClient("http://127.0.0.1:9", TOKEN, start=False)
    base = {
        "prompt": "p",
        "revision": 1,
        "active_version": "v1",
        "split": None,
        "order": ["v1"],
        "templates": {"v1": "t"},
    }
    client._apply(base)
    plain = min(timeit.repeat(lambda: client.get("p"), number=200_000, repeat=5)) / 200_000
    client._apply(
        {
            **base,
            "revision": 2,
            "split": {"v1": 90, "v2": 10},
            "order": ["v1", "v2"],
            "templates": {"v1": "t", "v2": "u"},
        }
    )
    split = (
        min(timeit.repeat(lambda: client.get("p", key="user-42"), number=100_000, repeat=5))
        / 100_000
    )
    print(f"get() cached: {plain * 1e6:.2f} us; with a sticky split: {split * 1e6:.2f} us")


def spread(values: list[float], unit: str = "ms", scale: float = 1000) -> str:
    """min / median / max of one figure over the runs."""
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{low * scale:.1f} / {mid * scale:.1f} / {high * scale:.1f} {unit}"


Runs = list[tuple[float, float]]  # (p50, p99) per run


def percentiles(delays: list[float]) -> tuple[float, float]:
    delays = sorted(delays)
    return statistics.median(delays), delays[max(0, int(len(delays) * 0.99) - 1)]


def connected_clients(base: str, clients_n: int) -> list[PromptClient]:
    """`clients_n` PromptClients following prompt "cs" on `base`, each with its stream open."""
    clients = [PromptClient(base, TOKEN, prompts=["cs"]) for _ in range(clients_n)]
    deadline = time.monotonic() + 30
    while any(c.stats.stream_connects == 0 for c in clients):
        if time.monotonic() > deadline:
            raise SystemExit("clients did not connect")
        time.sleep(0.05)
    return clients


def propagation(
    stream_base: str, change: Callable[[str], None], clients_n: int, rounds: int, runs: int
) -> tuple[Runs, Runs]:
    """(p50, p99) per run of `rounds` switches until every one of `clients_n` PromptClients
    following `stream_base` serves the new version: from sending the change, and from its
    answer (a client can be ahead of the answer: then the figure is negative)."""
    clients = connected_clients(stream_base, clients_n)
    time.sleep(1)  # every stream has had its snapshot
    from_sent: Runs = []
    from_answer: Runs = []
    switch = 0
    for _run in range(runs):
        delays: list[float] = []
        after: list[float] = []
        for _round in range(rounds):
            switch += 1
            target = "v1.9.0" if switch % 2 else "v2.0.0"
            done: list[float] = []
            lock = threading.Lock()

            def watch(
                c: PromptClient,
                t: str = target,
                out: list[float] = done,
                guard: threading.Lock = lock,
            ) -> None:
                if not c.wait_for("cs", t, timeout=20):
                    raise SystemExit(f"a client never saw {t}")
                with guard:
                    out.append(time.perf_counter())

            threads = [threading.Thread(target=watch, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            sent = time.perf_counter()
            change(target)
            answered = time.perf_counter()
            for t in threads:
                t.join()
            delays.extend(d - sent for d in done)
            after.extend(d - answered for d in done)
            time.sleep(0.2)
        from_sent.append(percentiles(delays))
        from_answer.append(percentiles(after))
    for c in clients:
        c.close()
    return from_sent, from_answer


def seed_cs(base: str) -> None:
    with api(base) as client:
        for label in ("v1.9.0", "v2.0.0"):
            client.post(
                "/api/prompts/cs/versions", json={"version": label, "template": label}
            ).raise_for_status()
            client.post("/api/prompts/cs/deploy", json={"version": label}).raise_for_status()


def bot_change(base: str) -> Callable[[str], None]:
    """A switch through the bot's API: a rollback to v1.9.0, a deploy of v2.0.0."""
    client = api(base)

    def change(target: str) -> None:
        if target == "v1.9.0":
            client.post(
                "/api/rollback", json={"prompt": "cs", "target_version": "v1.9.0", "force": True}
            ).raise_for_status()
        else:
            client.post(
                "/api/prompts/cs/deploy", json={"version": "v2.0.0", "force": True}
            ).raise_for_status()

    return change


@contextmanager
def broadcast_reference() -> Iterator[str]:
    """The bare SSE broadcast server (benchmarks/_broadcast.py); yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "_broadcast.py"), str(port)], cwd=ROOT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=1).raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("reference server did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def reference_change(base: str) -> Callable[[str], None]:
    client = httpx.Client(base_url=base, timeout=30)

    def change(target: str) -> None:
        client.post("/flip", params={"version": target}).raise_for_status()

    return change


def report(name: str, runs: Runs) -> None:
    print(
        f"  {name}: p50 {spread([r[0] for r in runs])}, p99 {spread([r[1] for r in runs])} "
        "(min / median / max of the runs)"
    )


def ratio(name: str, project: Runs, ref: Runs) -> None:
    p50 = [p[0] / r[0] for p, r in zip(project, ref, strict=True)]
    p99 = [p[1] / r[1] for p, r in zip(project, ref, strict=True)]
    above = [p[1] - r[1] for p, r in zip(project, ref, strict=True)]
    print(
        f"  {name}: p50 {spread(p50, 'x', 1)}, p99 {spread(p99, 'x', 1)}; "
        f"p99 above the reference {spread(above)}"
    )


def raw_notify(pg_url: str, runs: int, count: int = 200) -> Runs:
    """PostgreSQL LISTEN/NOTIFY one way: from sending NOTIFY (autocommit) to a thread blocked
    on the listening connection having it, on two plain psycopg connections."""
    conninfo = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    results: Runs = []
    with (
        psycopg.connect(conninfo, autocommit=True) as listener,
        psycopg.connect(conninfo, autocommit=True) as sender,
    ):
        listener.execute("LISTEN rollback_bot_bench")
        for _run in range(runs):
            received: dict[str, float] = {}

            def listen(into: dict[str, float] = received) -> None:
                for notify in listener.notifies(timeout=30, stop_after=count):
                    into[notify.payload] = time.perf_counter()

            thread = threading.Thread(target=listen)
            thread.start()
            time.sleep(0.2)
            sent: dict[str, float] = {}
            for i in range(count):
                sent[str(i)] = time.perf_counter()
                sender.execute(f"NOTIFY rollback_bot_bench, '{i}'")
                time.sleep(0.005)
            thread.join()
            results.append(percentiles([received[k] - sent[k] for k in sent]))
    return results


def seed_prompts(database_url: str, count: int) -> None:
    """`count` prompts, each with one live version (bulk, straight into the database)."""
    engine = make_engine(database_url)
    now = utcnow()
    with write_session(engine) as session:
        prompts = [Prompt(name=f"idle-{i:05d}", created_at=now) for i in range(count)]
        session.add_all(prompts)
        session.flush()
        versions = [
            PromptVersion(
                prompt_id=p.id or 0, label="v1", template="t", created_by="bench", created_at=now
            )
            for p in prompts
        ]
        session.add_all(versions)
        session.flush()
        session.add_all(
            Routing(prompt_id=v.prompt_id, active_version_id=v.id, revision=1, updated_at=now)
            for v in versions
        )
    engine.dispose()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(base: str, seconds: float, runs: int) -> list[float]:
    """Share of one core the idle server uses (user + system), per run of `seconds`."""
    return [_idle_once(PIDS[base], seconds) for _ in range(runs)]


def _idle_once(pid: int, seconds: float) -> float:
    before, began = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - began)


def server_sockets(pid: int) -> int:
    """How many sockets the server process holds open (its listener, streams, database)."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with suppress(OSError):  # closed while listing
            count += os.readlink(fd).startswith("socket:")
    return count


def settled_sockets(pid: int) -> int:
    """The server's socket count once it has not changed for 0.5 s (at most 30 s)."""
    count, since, deadline = server_sockets(pid), time.monotonic(), time.monotonic() + 30
    while time.monotonic() - since < 0.5 and time.monotonic() < deadline:
        time.sleep(0.05)
        now = server_sockets(pid)
        if now != count:
            count, since = now, time.monotonic()
    return count


def close_cost(base: str, clients_n: int, runs: int) -> None:
    """PromptClient.close() for each of `clients_n` connected clients (target <= 100 ms), and
    when, after the last close, the server was first seen holding no socket for them (an upper
    bound: the first look at /proc takes a few tenths of a millisecond)."""
    pid = PIDS[base]
    closes: list[float] = []
    released: list[float] = []
    for _run in range(runs):
        idle_sockets = settled_sockets(pid)  # earlier clients' sockets all gone
        clients = connected_clients(base, clients_n)
        for c in clients:
            began = time.perf_counter()
            c.close()
            closes.append(time.perf_counter() - began)
        closed_at = time.perf_counter()
        while server_sockets(pid) > idle_sockets:
            if time.perf_counter() - closed_at > 30:
                raise SystemExit("the server still holds the closed clients' sockets after 30 s")
            time.sleep(0.002)
        released.append(time.perf_counter() - closed_at)
    ordered = sorted(closes)
    p50, p99 = percentiles(ordered)
    print(
        f"PromptClient.close(), {clients_n} connected clients x {runs} runs: p50 {p50 * 1000:.1f} "
        f"ms, p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms (target <= 100 ms); "
        f"server first seen back to its idle sockets {spread(released)} after the last close "
        "(min / median / max of the runs; at most this)"
    )


def resolve_throughput(base: str, seconds: float, threads_n: int = 8) -> None:
    count, lock = [0], threading.Lock()
    stop = time.perf_counter() + seconds

    def hammer(i: int) -> None:
        with api(base) as own:
            n = 0
            while time.perf_counter() < stop:
                own.get("/api/prompts/cs/resolve", params={"key": f"u{i}-{n}"}).raise_for_status()
                n += 1
            with lock:
                count[0] += n

    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads_n)]
    began = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(
        f"/resolve: {count[0] / (time.perf_counter() - began):,.0f} requests/s "
        f"({threads_n} client threads on the same 2 cores)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5, help="switches per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5, help="/resolve throughput run")
    parser.add_argument("--pg", default=os.environ.get("TEST_DATABASE_URL"))
    parser.add_argument("--idle-prompts", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=10)
    args = parser.parse_args()
    print(header())
    get_cost()
    quiet = {"CHECKER_ENABLED": "false"}
    n, rounds, runs = args.clients, args.rounds, args.runs
    print(f"rollback -> {n} PromptClients, {runs} runs of {rounds} switches, from the request:")
    with broadcast_reference() as ref_base:
        reference, ref_answer = propagation(ref_base, reference_change(ref_base), n, rounds, runs)
    report("reference: in-process SSE broadcast", reference)
    report("  (from its answer)", ref_answer)
    with (
        tempfile.TemporaryDirectory() as tmp,
        server(f"sqlite:///{tmp}/serving.db", **quiet) as base,
    ):
        seed_cs(base)
        one, one_answer = propagation(base, bot_change(base), n, rounds, runs)
        report("one server (SQLite)", one)
        report("  (from its answer)", one_answer)
        ratio("one server / reference", one, reference)
        close_cost(base, n, runs)
        resolve_throughput(base, args.seconds)
    if args.pg:
        with scratch_schema(args.pg, f"bench_serving_{os.getpid()}") as url:
            upgrade(make_engine(url))
            with server(url, **quiet) as a, server(url, **quiet) as b:
                seed_cs(a)
                replicas, replicas_answer = propagation(b, bot_change(a), n, rounds, runs)
            report("two replicas (PostgreSQL: change on A, clients on B)", replicas)
            report("  (from its answer)", replicas_answer)
            ratio("two replicas / reference", replicas, reference)
            notify = raw_notify(url, runs)
            report("reference: raw LISTEN/NOTIFY one way (200 a run)", notify)
    else:
        print("(no --pg / TEST_DATABASE_URL: replicas not measured)")
    print(f"idle CPU, {args.idle_prompts:,} prompts, checker off, {args.idle_seconds:.0f} s a run:")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/idle.db"
        upgrade(make_engine(url))
        seed_prompts(url, args.idle_prompts)
        with server(url, **quiet) as base:
            time.sleep(3)  # start-up done
            cpu = idle_cpu(base, args.idle_seconds, runs)
        print(f"  SQLite (poll every 0.1 s): {spread(cpu, '% of a core', 100)}")
    if args.pg:
        with scratch_schema(args.pg, f"bench_idle_{os.getpid()}") as url:
            upgrade(make_engine(url))
            seed_prompts(url, args.idle_prompts)
            with server(url, **quiet) as base:
                time.sleep(3)
                cpu = idle_cpu(base, args.idle_seconds, runs)
            print(
                f"  PostgreSQL (LISTEN; safety poll every 2 s): {spread(cpu, '% of a core', 100)}"
            )


if __name__ == "__main__":
    main()
