"""Serving: cached get() cost, rollback propagation to 50 clients, /resolve throughput.

    python benchmarks/serving.py [--clients 50] [--rounds 5] [--seconds 5]

Targets: get() <= 5 us cached; propagation p99 <= 1 s (a 60 s cache TTL would average 30 s);
/resolve >= 2,000 requests/s on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _server import TOKEN, api, header, server  # noqa: E402

from bot.client import PromptClient  # noqa: E402


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


def propagation(base: str, clients_n: int, rounds: int) -> None:
    with api(base) as client:
        for label in ("v1.9.0", "v2.0.0"):
            client.post("/api/prompts/cs/versions", json={"version": label, "template": label})
            client.post("/api/prompts/cs/deploy", json={"version": label})
        clients = [PromptClient(base, TOKEN, prompts=["cs"]) for _ in range(clients_n)]
        time.sleep(2)  # every stream connected
        delays: list[float] = []
        for round_ in range(rounds):
            target = "v1.9.0" if round_ % 2 == 0 else "v2.0.0"
            done, lock = [], threading.Lock()

            def watch(
                c: PromptClient,
                t: str = target,
                out: list[float] = done,
                guard: threading.Lock = lock,
            ) -> None:
                c.wait_for("cs", t, timeout=10)
                with guard:
                    out.append(time.perf_counter())

            threads = [threading.Thread(target=watch, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            if target == "v1.9.0":
                client.post(
                    "/api/rollback",
                    json={"prompt": "cs", "target_version": "v1.9.0", "force": True},
                ).raise_for_status()
            else:
                client.post(
                    "/api/prompts/cs/deploy", json={"version": "v2.0.0", "force": True}
                ).raise_for_status()
            committed = time.perf_counter()
            for t in threads:
                t.join()
            delays.extend(d - committed for d in done)
        for c in clients:
            c.close()
    delays.sort()
    p99 = delays[max(0, int(len(delays) * 0.99) - 1)]
    print(
        f"propagation to {clients_n} clients over {rounds} switches: p50 "
        f"{statistics.median(delays) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {delays[-1] * 1000:.0f} ms (from the API's answer to the client serving it)"
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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    print(header())
    get_cost()
    with (
        tempfile.TemporaryDirectory() as tmp,
        server(f"sqlite:///{tmp}/serving.db", CHECKER_ENABLED="false") as base,
    ):
        propagation(base, args.clients, args.rounds)
        resolve_throughput(base, args.seconds)


if __name__ == "__main__":
    main()
