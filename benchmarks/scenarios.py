"""What the bot does per traffic scenario, over many seeds (tests/simulator.py).

    python benchmarks/scenarios.py [--seeds 100] [--minutes 30] [--jobs N]

Each run: v1.9.0 serves an hour of healthy traffic, v2.0.0 takes over and serves the scenario's
traffic for `--minutes` of simulated time, checked every 30 s on a fresh SQLite file. Prints, per
scenario: how many runs were rolled back automatically and how long after the switch, the most
common first notice (severity and action) and when it came, and incidents opened per run.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.simulator
# tests.conftest (make_prompt) imports Starlette's TestClient, which warns on import.
warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
logging.getLogger("bot").setLevel(logging.ERROR)  # the notices are counted, not printed

from tests.simulator import SCENARIOS, Outcome, simulate_many, worker_pool  # noqa: E402

COLUMNS = (
    "scenario",
    "seeds",
    "rollbacks",
    "rollback p50",
    "rollback p95",
    "first notice",
    "first at p50",
    "incidents/run",
)


def nearest_rank(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank, as rollback_latency.py reports p99."""
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * q + 0.5) - 1)]


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} s"


def row(name: str, outcomes: list[Outcome]) -> tuple[str, ...]:
    """One table row for a scenario's runs."""
    times = [o.rollback_s for o in outcomes if o.rollback_s is not None]
    firsts = [o.first_notice for o in outcomes if o.first_notice is not None]
    label, count, first_at = "none", 0, None
    if firsts:
        (label, count), *_ = Counter(f"{n.severity} {n.action}" for n in firsts).most_common(1)
        first_at = statistics.median(
            n.seconds for n in firsts if f"{n.severity} {n.action}" == label
        )
    return (
        name,
        str(len(outcomes)),
        str(len(times)),
        seconds(statistics.median(times) if times else None),
        seconds(nearest_rank(times, 0.95) if times else None),
        f"{label} ({count}/{len(outcomes)})",
        seconds(first_at),
        f"{statistics.fmean(o.incidents for o in outcomes):.2f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d')} {platform.node()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    started = time.perf_counter()
    rows = [COLUMNS, tuple("---" for _ in COLUMNS)]
    with tempfile.TemporaryDirectory() as tmp, worker_pool(args.jobs) as pool:
        for scenario in SCENARIOS:
            outcomes = simulate_many(
                scenario, range(args.seeds), folder=Path(tmp), pool=pool, minutes=args.minutes
            )
            rows.append(row(scenario.name, outcomes))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    print(
        f"{args.seeds} seeds x {len(SCENARIOS)} scenarios, {args.minutes} simulated min each, "
        f"{args.jobs} processes: {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
