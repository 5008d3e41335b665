"""Detection latency: from the first bad event posted to the rollback committed.

    python benchmarks/detection_latency.py [--interval 5] [--trials 5]

Runs the real server (SQLite, the default policy) with ROLLBACK_CHECK_INTERVAL=--interval;
each trial deploys a fresh prompt, posts a batch with an 8% error rate at a random moment
of the check cycle, and polls /resolve until the old version is served.
Target: <= check interval + 1 s.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from _server import api, header, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    print(header())
    rng = random.Random(3)
    results = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        server(f"sqlite:///{tmp}/latency.db", ROLLBACK_CHECK_INTERVAL=str(args.interval)) as base,
        api(base) as client,
    ):
        for trial in range(args.trials):
            name = f"customer-support-{trial}"
            for label in ("v1.9.0", "v2.0.0"):
                client.post(
                    f"/api/prompts/{name}/versions", json={"version": label, "template": label}
                ).raise_for_status()
                client.post(
                    f"/api/prompts/{name}/deploy", json={"version": label}
                ).raise_for_status()
            time.sleep(rng.uniform(0, args.interval))
            events = [
                {"prompt": name, "version": "v2.0.0", "error": i % 100 < 8, "latency_ms": 400}
                for i in range(1000)
            ]
            started = time.perf_counter()
            client.post("/api/events", json={"events": events}).raise_for_status()
            while client.get(f"/api/prompts/{name}/resolve").json()["version"] != "v1.9.0":
                if time.perf_counter() - started > args.interval * 3 + 10:
                    raise SystemExit(f"trial {trial}: no rollback")
                time.sleep(0.02)
            results.append(time.perf_counter() - started)
    print(
        f"interval {args.interval:g} s, {args.trials} trials: first bad event -> rollback "
        f"committed in {', '.join(f'{r:.2f}' for r in results)} s; max {max(results):.2f} s "
        f"(target <= {args.interval + 1:g} s)"
    )


if __name__ == "__main__":
    main()
