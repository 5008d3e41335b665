"""Slack ack latency under concurrency, and click-to-registry-switched time.

    python benchmarks/slack_ack.py [--concurrency 50]

Runs the real server (SQLite, Slack app on) against the Slack Web API stand-in of the tests,
then fires signed requests over HTTP: `--concurrency` slash commands at once (each rolling a
different prompt back), then as many Rollback clicks at once on one incident card (each opens
the rollback dialog: views.open must reach Slack within the click's 3-second trigger), then as
many dialogs sent at once (the rollback itself, done before the answer so a refusal shows in
the dialog). Target: ack p99 <= 300 ms; every views.open well within 3 s.

The reference, measured first in the same run: the same signed commands from the same threads
to a bare Starlette endpoint that only checks the signature (benchmarks/_bare_slack.py), the
floor this machine sets for 50 concurrent signed requests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import _server  # noqa: E402
import httpx  # noqa: E402
from _server import PIDS, api, free_port, header, server  # noqa: E402
from sqlmodel import select  # noqa: E402

from bot.db import make_engine, write_session  # noqa: E402
from bot.incidents.records import open_incident  # noqa: E402
from bot.judging.verdict import Decision  # noqa: E402
from bot.metrics import Target  # noqa: E402
from bot.models import Action, Prompt, PromptVersion, Severity, utcnow  # noqa: E402
from tests.slack_kit import FakeSlack, SlackSender, target_choice  # noqa: E402

BOT_TOKEN = "xoxb-benchmark-token-0123456789"
SECRET = "benchmark-signing-secret-0123456789"


def fire(calls: list, n: int) -> list[float]:
    """Run the n calls at the same instant; return each one's HTTP latency in ms."""
    barrier, latencies, lock = threading.Barrier(n), [], threading.Lock()

    def one(i: int) -> None:
        barrier.wait()
        started = time.perf_counter()
        response = calls[i]()
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status_code == 200, response.text
        with lock:
            latencies.append(elapsed)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(latencies)


def p99(latencies: list[float]) -> float:
    return latencies[max(0, int(len(latencies) * 0.99) - 1)]


def summary(name: str, latencies: list[float]) -> str:
    return (
        f"{name}: n={len(latencies)} p50 {statistics.median(latencies):.0f} ms, "
        f"p99 {p99(latencies):.0f} ms, max {latencies[-1]:.0f} ms"
    )


def reference(n: int) -> list[float]:
    """n signed commands at once to the bare endpoint; its answer latencies."""
    port = free_port()
    script = Path(__file__).resolve().parent / "_bare_slack.py"
    proc = subprocess.Popen([sys.executable, str(script), str(port), SECRET])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit("the reference server did not start") from None
                time.sleep(0.05)
        sender = SlackSender(f"{base}/slack/events", SECRET, timeout=30)
        return fire([lambda i=i: sender.command(f"p{i} v1", user_id="U1") for i in range(n)], n)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--root", help="run `python -m bot serve` from this checkout instead")
    args = parser.parse_args()
    if args.root:
        _server.ROOT = Path(args.root).resolve()
    n = args.concurrency
    print(header())
    floor = reference(n)
    print(summary(f"reference: {n} concurrent signed commands to a bare endpoint, answer", floor))
    with (
        FakeSlack(token=BOT_TOKEN) as fake,
        tempfile.TemporaryDirectory() as tmp,
        server(
            f"sqlite:///{tmp}/slack.db",
            SLACK_BOT_TOKEN=BOT_TOKEN,
            SLACK_SIGNING_SECRET=SECRET,
            SLACK_API_URL=fake.base_url,
            SLACK_ONCALL_USERS="U1",
            CHECKER_ENABLED="false",
        ) as base,
        api(base) as client,
    ):
        sender = SlackSender(f"{base}/slack/events", SECRET, slack=fake, timeout=30)
        for i in range(n):
            for label in ("v1", "v2"):
                client.post(
                    f"/api/prompts/p{i}/versions", json={"version": label, "template": label}
                )
                client.post(f"/api/prompts/p{i}/deploy", json={"version": label})
        commands = [lambda i=i: sender.command(f"p{i} v1", user_id="U1") for i in range(n)]
        settle(fake)
        cpu_before = cpu_seconds(PIDS[base])
        started = time.perf_counter()
        acks = fire(commands, n)
        while any(
            client.get(f"/api/prompts/p{i}").json()["active_version"] != "v1" for i in range(n)
        ):
            time.sleep(0.01)
        switched = time.perf_counter() - started
        quiet = settle(fake)  # every post, thread reply and answer made
        work = cpu_seconds(PIDS[base]) - cpu_before
        print(summary(f"{n} concurrent /rollback commands, ack", acks))
        print(f"  p99 {p99(acks) / p99(floor):.2f}x the reference's")
        print(
            f"  all {n} prompts switched {switched * 1000:.0f} ms after the first command was sent"
        )
        print(
            f"  server CPU from the burst until Slack had every post and answer "
            f"({quiet:.1f} s): {work:.2f} s, {work / n * 1000:.1f} ms a command "
            f"(ack, rollback, outbox, answer; polls of this script included)"
        )

        # An open incident on prompt "cs" (as the checker would record it), then n clicks at once.
        for label in ("v1", "v2"):
            client.post("/api/prompts/cs/versions", json={"version": label, "template": label})
            client.post("/api/prompts/cs/deploy", json={"version": label})
        value = json.dumps(
            {"incident": open_incident_on(f"sqlite:///{tmp}/slack.db"), "target": "v1"}
        )
        clicks = [
            lambda: sender.click("incident_rollback", value, "U1", "1700000000.000100", "C1")
            for _ in range(n)
        ]
        sent_at = time.time()
        acks = fire(clicks, n)
        deadline = time.monotonic() + 10
        while len(fake.views()) < n and time.monotonic() < deadline:
            time.sleep(0.005)
        opens = sorted(
            (c.at - sent_at) * 1000 for c in fake.calls_to("views.open") if c.status == 200
        )
        print(summary(f"{n} concurrent Rollback clicks on one card, ack", acks))
        print(f"  p99 {p99(acks) / p99(floor):.2f}x the reference's")
        print(summary(f"  click to views.open at Slack ({len(opens)} dialogs opened)", opens))

        views = [v["view"] for v in fake.views()]
        submits = [lambda v=v: sender.submit_view(v, "U1", target_choice("v1")) for v in views[:n]]
        started = time.perf_counter()
        acks = fire(submits, len(submits))
        while client.get("/api/prompts/cs").json()["active_version"] != "v1":
            time.sleep(0.005)
        switched = time.perf_counter() - started
        history = client.get("/api/prompts/cs/history").json()
        print(summary(f"{len(submits)} rollback dialogs sent at once, answer", acks))
        print(
            f"  sent to registry switched: {switched * 1000:.0f} ms; rollbacks recorded: "
            f"{[e['kind'] for e in history].count('rollback')}"
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(fake: FakeSlack, quiet: float = 1.0) -> float:
    """Wait until the Slack stand-in has had no call for `quiet` seconds; returns the wait."""
    started = time.monotonic()
    seen, since = len(fake.calls), time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.05)
        if len(fake.calls) != seen:
            seen, since = len(fake.calls), time.monotonic()
    return time.monotonic() - started - quiet


def open_incident_on(url: str) -> int:
    """Record a high-severity incident for cs v2 directly in the database; returns its id."""
    engine = make_engine(url)
    with write_session(engine) as session:
        prompt = session.exec(select(Prompt).where(Prompt.name == "cs")).one()
        version = session.exec(
            select(PromptVersion).where(
                PromptVersion.prompt_id == prompt.id, PromptVersion.label == "v2"
            )
        ).one()
        target = Target(
            prompt="cs",
            version="v2",
            version_id=version.id,
            prompt_id=prompt.id,
            share_pct=100,
            serving_since=None,
            window=timedelta(minutes=5),
            baseline_window=timedelta(hours=1),
        )
        incident = open_incident(
            session,
            target=target,
            now=utcnow(),
            observe_until=None,
            decision=Decision("cs", "v2", Severity.HIGH, Action.PAGE),
        )
        return int(incident.id)


if __name__ == "__main__":
    main()
