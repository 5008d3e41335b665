"""GET /resolve throughput against a bare Starlette and a bare FastAPI endpoint, same run.

wrk (2 threads, 32 connections) against `rollback-bot serve` (SQLite, checker off, a prompt
split 50/50 so every request hashes its sticky key), then the same JSON from a bare Starlette
endpoint and a bare FastAPI route (benchmarks/_bare_http.py) under uvicorn with the settings
`serve` uses. Three rounds, the three servers interleaved in each; prints requests/s per round
and the ratios (target, issue 17: /resolve >= 0.7x bare Starlette).

    .venv/bin/python benchmarks/resolve.py [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from _server import TOKEN, api, free_port, header, server  # benchmarks/ is on sys.path

HERE = Path(__file__).resolve().parent
LUA = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "%s?key=user-" .. counter, {["Authorization"] = "Bearer %s"})
end
"""


@contextmanager
def bare(kind: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "_bare_http.py"), kind, str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{base}/api/prompts/cs/resolve", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"bare {kind} server did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def wrk(base: str, seconds: float, script: Path) -> float:
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds:.0f}s", "-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{base}: {errors.group(1)} failed requests\n{out}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert found, out
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    print(header())
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "resolve.lua"
        script.write_text(LUA % ("/api/prompts/cs/resolve", TOKEN))
        url = f"sqlite:///{tmp}/bench.db"
        with (
            server(url, CHECKER_ENABLED="false") as bot,
            bare("starlette") as starlette,
            bare("fastapi") as fastapi,
        ):
            with api(bot) as client:
                for version in ("v1", "v2"):
                    client.post(
                        "/api/prompts/cs/versions",
                        json={"version": version, "template": "You are a helpful agent."},
                    ).raise_for_status()
                client.post("/api/prompts/cs/deploy", json={"version": "v1"}).raise_for_status()
                client.put(
                    "/api/prompts/cs/split", json={"split": {"v1": 50, "v2": 50}}
                ).raise_for_status()
                time.sleep(1)  # the change feed has the split
                client.get("/api/prompts/cs/resolve", params={"key": "warm"}).raise_for_status()
            ratios_s, ratios_f = [], []
            for round_ in range(1, args.rounds + 1):
                figures = {
                    name: wrk(base, args.seconds, script)
                    for name, base in (("bot", bot), ("starlette", starlette), ("fastapi", fastapi))
                }
                ratios_s.append(figures["bot"] / figures["starlette"])
                ratios_f.append(figures["bot"] / figures["fastapi"])
                print(
                    f"round {round_}: /resolve {figures['bot']:,.0f} req/s; bare Starlette "
                    f"{figures['starlette']:,.0f} ({ratios_s[-1]:.2f}x); bare FastAPI "
                    f"{figures['fastapi']:,.0f} ({ratios_f[-1]:.2f}x)"
                )
            print(
                f"ratio to bare Starlette min/median/max {min(ratios_s):.2f}/"
                f"{statistics.median(ratios_s):.2f}/{max(ratios_s):.2f} (target >= 0.70); "
                f"to bare FastAPI {min(ratios_f):.2f}/{statistics.median(ratios_f):.2f}/"
                f"{max(ratios_f):.2f}"
            )


if __name__ == "__main__":
    main()
