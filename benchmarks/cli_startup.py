"""Start-up: `rollback-bot prompts list` against `python -c "import sqlalchemy"` and
`python -c pass`, and `serve` → first 200 from /healthz against a bare FastAPI app under uvicorn,
each reference measured in the same run (issue 17: at most 3 and 1.5 times). With `serve` it
also starts the bare app plus `import bot.models`: the floor any server answering from the
registry starts from (SQLAlchemy's ORM, SQLModel and the table classes), as a ratio to the bare
app.

    python benchmarks/cli_startup.py [--runs 3] [--n 5] [--no-serve | --no-cli] [--root CHECKOUT]

A run times N invocations of each command, interleaved, as wall time from spawning the process
to its exit (or to the first 200); each line prints min/median/max of the N and the ratio of the
medians. For the servers it also prints the CPU time each had used by its first 200 (Linux), which
a machine shared with other work stretches far less than wall time. The database is a fresh SQLite file migrated by `db upgrade`, holding 5 prompts.
`--root` measures another checkout of the bot (e.g. a `git worktree` of an older commit) with
`python -m bot` in that directory instead of the console script.

`--first-requests` instead starts `serve` with Slack configured (Slack played by the tests'
local stand-in) N times and, as soon as /healthz first answers 200, times the first request
of each kind that loads code on first use (a signed `/rollback` command, a gzipped protobuf
OTLP export, the dashboard's sign-in page), then the same request again.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gzip

import httpx
from _server import TOKEN, free_port, header

ROOT = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = Path(sys.executable).parent / "rollback-bot"

# The reference for `serve`: the smallest FastAPI app with a /healthz, under uvicorn with the
# settings `serve` passes (log level, no log config, proxy headers), on PORT like `serve`.
BARE_FASTAPI = """
import os
import uvicorn
from fastapi import FastAPI

app = FastAPI()

@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}

uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning",
            log_config=None, proxy_headers=True)
"""
# A floor for `serve`: the same bare app that also loads the registry's tables (SQLAlchemy with
# its ORM, SQLModel and the table classes), which any server answering from the registry needs
# before its first answer. No routes, no settings, no policies, no database connection.
FLOOR = "bare FastAPI + the registry's tables"
BARE_FASTAPI_WITH_MODELS = BARE_FASTAPI.replace(
    "\napp = FastAPI()", "import bot.models  # noqa: F401\n\napp = FastAPI()", 1
)


def wall(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Seconds from spawning `argv` to its exit (which must be 0)."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=120)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()[-500:]}")
    return elapsed


# CPU seconds each server had used by its first 200 (user + system, from /proc): on a machine
# shared with other work, wall times stretch with the load while CPU time moves far less.
SERVER_CPU: dict[str, list[float]] = {}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (Linux; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def until_healthy(argv: list[str], env: dict[str, str], cwd: Path, name: str = "") -> float:
    """Seconds from spawning a server to its first 200 from /healthz (polled every 5 ms); the
    server's CPU seconds by then go to SERVER_CPU[name]."""
    port = free_port()
    env = {**env, "PORT": str(port)}
    url = f"http://127.0.0.1:{port}/healthz"
    started = time.perf_counter()
    quiet = subprocess.DEVNULL
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=quiet, stderr=quiet)
    try:
        with httpx.Client(timeout=2) as client:
            while True:
                try:
                    if client.get(url).status_code == 200:
                        elapsed = time.perf_counter() - started
                        used = cpu_seconds(proc.pid)
                        if used is not None:
                            SERVER_CPU.setdefault(name, []).append(used)
                        return elapsed
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.perf_counter() - started > 60:
                    raise SystemExit(f"{' '.join(argv)} did not become healthy")
                time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


SLACK_TOKEN = "xoxb-benchmark-token-0123456789"
SLACK_SECRET = "benchmark-signing-secret-0123456789"


def first_requests(
    argv: list[str], env: dict[str, str], cwd: Path
) -> dict[str, tuple[float, float]]:
    """Start a server with Slack configured; once /healthz answers 200, each request that
    loads code on first use, timed the first time and the second: {name: (first, second)}."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from tests.slack_kit import FakeSlack, SlackSender

    export = gzip.compress(ExportTraceServiceRequest().SerializeToString())
    otlp = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "gzip",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with FakeSlack(token=SLACK_TOKEN) as fake:
        env = {
            **env,
            "PORT": str(port),
            "SLACK_BOT_TOKEN": SLACK_TOKEN,
            "SLACK_SIGNING_SECRET": SLACK_SECRET,
            "SLACK_API_URL": fake.base_url,
            "SLACK_ONCALL_USERS": "U1",
        }
        quiet = subprocess.DEVNULL
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=quiet, stderr=quiet)
        sender = SlackSender(f"{base}/slack/events", SLACK_SECRET, slack=fake, timeout=30)
        requests: dict[str, Callable[[httpx.Client], httpx.Response]] = {
            "Slack /rollback command (ack)": lambda _c: sender.command("p0", user_id="U1"),
            "OTLP export (protobuf, gzip)": lambda c: c.post(
                "/v1/traces", content=export, headers=otlp
            ),
            "dashboard sign-in page": lambda c: c.get("/ui/sign-in"),
        }
        try:
            with httpx.Client(base_url=base, timeout=30) as client:
                started = time.perf_counter()
                while True:
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if proc.poll() is not None or time.perf_counter() - started > 60:
                        raise SystemExit(f"{' '.join(argv)} did not become healthy")
                    time.sleep(0.005)
                timed: dict[str, tuple[float, float]] = {}
                for name, request in requests.items():
                    times = []
                    for _ in range(2):
                        began = time.perf_counter()
                        answer = request(client)
                        times.append(time.perf_counter() - began)
                        if answer.status_code != 200:
                            raise SystemExit(f"{name}: {answer.status_code} {answer.text[:200]}")
                    timed[name] = (times[0], times[1])
                return timed
        finally:
            sender.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


def spread(values: list[float]) -> str:
    return (
        f"min {min(values) * 1000:7.1f}  median {statistics.median(values) * 1000:7.1f}  "
        f"max {max(values) * 1000:7.1f} ms"
    )


def measure(
    runs: int,
    n: int,
    cases: dict[str, Callable[[], float]],
    target: str,
    reference: str,
    also: tuple[str, ...] = (),
) -> None:
    """Print each case per run, interleaving their N invocations; then the ratio of medians
    (of `target` and of each case in `also` to `reference`)."""
    for run in range(1, runs + 1):
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(n):
            for name, case in cases.items():
                times[name].append(case())
        print(f"run {run}:")
        for name, values in times.items():
            print(f"  {name:<38} {spread(values)}")
        for name in (target, *also):
            ratio = statistics.median(times[name]) / statistics.median(times[reference])
            print(f"  ratio {name} / {reference}: {ratio:.2f}x (medians)")
        cpu = {name: SERVER_CPU.pop(name, []) for name in cases}
        if cpu[target] and cpu[reference]:
            for name, values in cpu.items():
                print(f"  {name:<38} CPU by then: {spread(values)}")
            for name in (target, *also):
                ratio = statistics.median(cpu[name]) / statistics.median(cpu[reference])
                print(f"  CPU ratio {name} / {reference}: {ratio:.2f}x (medians)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=5, help="invocations per command per run")
    parser.add_argument("--no-serve", action="store_true", help="only the CLI")
    parser.add_argument("--no-cli", action="store_true", help="only serve")
    parser.add_argument("--root", type=Path, default=None, help="measure this checkout")
    parser.add_argument(
        "--first-requests", action="store_true", help="time the first requests after start"
    )
    args = parser.parse_args()

    print(header())
    with tempfile.TemporaryDirectory() as folder:
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{folder}/startup.db",
            "ROLLBACK_API_TOKEN": TOKEN,
            "ROLLBACK_POLICY_DIR": str(ROOT / "policies"),
            "LOG_LEVEL": "WARNING",
        }
        if args.root is not None:
            cwd = args.root.resolve()
            env["PYTHONPATH"] = str(cwd)
            bot = [sys.executable, "-m", "bot"]
            label = f"python -m bot (in {cwd})"
        else:
            cwd, bot, label = ROOT, [str(CONSOLE_SCRIPT)], "rollback-bot"
        python = [sys.executable]
        wall([*bot, "db", "upgrade"], env, cwd)
        for i in range(5):
            wall([*bot, "prompts", "add", f"p{i}", "v1", "--template", "t {q}"], env, cwd)
        wall([*bot, "prompts", "deploy", "p0", "v1"], env, cwd)

        if args.first_requests:
            print(f"\n{label} serve, Slack on: the first request of each kind after the first")
            print(f"200 from /healthz, then the same request again; N={args.n} starts:")
            firsts: dict[str, list[tuple[float, float]]] = {}
            for _ in range(args.n):
                for name, pair in first_requests([*bot, "serve"], env, cwd).items():
                    firsts.setdefault(name, []).append(pair)
            for name, pairs in firsts.items():
                print(f"  {name:<32} first:  {spread([first for first, _ in pairs])}")
                print(f"  {'':<32} second: {spread([second for _, second in pairs])}")
            return
        if not args.no_cli:
            print(f"\n{label} prompts list, N={args.n} a run:")
            target = f"{label.split(' (')[0]} prompts list"
            reference = 'python -c "import sqlalchemy"'
            measure(
                args.runs,
                args.n,
                {
                    target: lambda: wall([*bot, "prompts", "list"], env, cwd),
                    reference: lambda: wall([*python, "-c", "import sqlalchemy"], env, cwd),
                    "python -c pass": lambda: wall([*python, "-c", "pass"], env, cwd),
                },
                target,
                reference,
            )
        if args.no_serve:
            return
        print(f"\n{label} serve → first 200 from /healthz, N={args.n} a run (checker on):")
        measure(
            args.runs,
            args.n,
            {
                "serve": lambda: until_healthy([*bot, "serve"], env, cwd, "serve"),
                "bare FastAPI under uvicorn": lambda: until_healthy(
                    [*python, "-c", BARE_FASTAPI], env, cwd, "bare FastAPI under uvicorn"
                ),
                FLOOR: lambda: until_healthy(
                    [*python, "-c", BARE_FASTAPI_WITH_MODELS], env, cwd, FLOOR
                ),
            },
            "serve",
            "bare FastAPI under uvicorn",
            also=(FLOOR,),
        )


if __name__ == "__main__":
    main()
