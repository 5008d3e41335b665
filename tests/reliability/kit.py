"""The reliability suite's tools: real `rollback-bot serve` processes, traffic, and the ledger.

`Bot` runs the server as a user would (`python -m bot serve`, scheduler and Slack app on),
against a FakeSlack and a real database, and can SIGKILL it. `ledger()` reads what the
database and Slack ended up with; `assert_consistent()` checks that they agree: routing = the
last audit entry, one verification per rollback, incidents point at real rollbacks, every
outbox row delivered exactly once, no message posted twice. `FIGURES` collects each
scenario's measurements for the summary printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import Engine
from sqlmodel import col, select

from bot.db import read_session
from bot.models import (
    AuditEntry,
    Incident,
    OutboxStatus,
    Prompt,
    PromptVersion,
    Routing,
    SlackOutbox,
    Verification,
)
from bot.slack.blocks import ROLLBACK_ACTION
from bot.slack.outbox import CHART_UPLOAD
from tests.conftest import API_TOKEN
from tests.slack_kit import FakeSlack, SlackSender
from tests.test_serve import free_port

ROOT = Path(__file__).resolve().parents[2]
BOT_TOKEN = "xoxb-reliability-0123456789"
SIGNING_SECRET = "reliability-signing-secret-0123456789"
PROMPT = "customer-support"
SECRETS = (API_TOKEN, BOT_TOKEN, SIGNING_SECRET)

# Every scenario adds its figures here; conftest prints them at the end of the run.
FIGURES: dict[str, dict[str, Any]] = {}

T = TypeVar("T")

FAST_POLICY = """\
defaults:
  verify_every: 1s
  verify_for: 5s
  gradual_stage: 3s
rules:
  - name: error_rate_critical
    metric: error_rate_pct
    above: 5.0
    severity: critical
    action: rollback
    act_within: 2m
  - name: error_rate_high
    metric: error_rate_pct
    above: 2.0
    severity: high
    action: page
    act_within: 5m
"""


def record(scenario: str, **figures: Any) -> None:
    """Add figures for `scenario` to the run's summary."""
    FIGURES.setdefault(scenario, {}).update(figures)


def write_policy(directory: Path, text: str = FAST_POLICY) -> Path:
    """A policy directory holding `text` as default.yaml."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "default.yaml").write_text(text)
    return directory


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    every: float = 0.05,
    what: str | Callable[[], str] = "",
) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {detail or probe}")
        time.sleep(every)


@dataclass
class Bot:
    """One `rollback-bot serve` process (API, checker, Slack app, outbox) on its own port."""

    name: str
    db_url: str
    slack: FakeSlack
    policy_dir: Path
    logs: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    started: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.logs / f"{self.name}.log"

    def start(self, *, failpoints: str = "", wait: bool = True) -> Bot:
        """Start (or restart) the process; with `failpoints` armed (see bot/faults.py)."""
        environment = {
            **os.environ,
            "DATABASE_URL": self.db_url,
            "ROLLBACK_API_TOKEN": API_TOKEN,
            "PORT": str(self.port),
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": self.slack.base_url,
            "SLACK_ONCALL_USERS": "U1",
            "ROLLBACK_POLICY_DIR": str(self.policy_dir),
            "ROLLBACK_CHECK_INTERVAL": "0.5",
            "CHECKER_LEASE_SECONDS": "2",
            "VERIFY_POLL_SECONDS": "0.2",
            "LOG_LEVEL": "INFO",
            "ROLLBACK_FAILPOINTS": failpoints,
            **self.env,
        }
        self.logs.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            out.write(f"--- start {self.started} failpoints={failpoints!r}\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bot", "serve"],
                env=environment,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started += 1
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.tail()}")
            try:
                return httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=timeout, what=f"{self.name} to serve")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end (a fail point killed it); returns its exit status."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no lease release, no flush."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM and wait (what a deploy does)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def is_leader(self) -> bool:
        """Whether this process holds the checker lease (from its own /metrics)."""
        try:
            text = httpx.get(f"{self.base}/metrics", timeout=2).text
        except httpx.TransportError:
            return False
        return any(
            line.startswith("rollback_bot_checker_leader ") and line.split()[-1] == "1.0"
            for line in text.splitlines()
        )

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30
        )

    def sender(self) -> SlackSender:
        return SlackSender(f"{self.base}/slack/events", SIGNING_SECRET, slack=self.slack)

    def tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


def new_slack() -> FakeSlack:
    """A FakeSlack with the channels and users the bots use."""
    channels = {"incidents": "C1"}
    return FakeSlack(token=BOT_TOKEN, users={"U1": {"name": "alice"}}, channels=channels)


def seed_prompt(bot: Bot, prompt: str = PROMPT) -> None:
    """v1.9.0 (live, then replaced) and v2.0.0 (live now), through the bot's own API."""
    with bot.api() as api:
        for label in ("v1.9.0", "v2.0.0"):
            created = api.post(
                f"/api/prompts/{prompt}/versions",
                json={"version": label, "template": f"{label}: {{q}}"},
            )
            assert created.status_code == 201, created.text
            deployed = api.post(f"/api/prompts/{prompt}/deploy", json={"version": label})
            assert deployed.status_code == 200, deployed.text


def events(version: str, n: int, errors: int, prompt: str = PROMPT) -> list[dict[str, Any]]:
    """`n` request outcomes for `version`, the first `errors` of them failed."""
    return [
        {"prompt": prompt, "version": version, "error": i < errors, "latency_ms": 300}
        for i in range(n)
    ]


def button(message: dict[str, Any], action_id: str) -> str:
    """The value of button `action_id` on a Slack message."""
    for block in message.get("blocks", []):
        for element in block.get("elements", []) if block.get("type") == "actions" else []:
            if element.get("action_id") == action_id:
                return str(element["value"])
    raise AssertionError(f"no {action_id} button on {message.get('text')}")


@contextmanager
def restored_traffic(*bots: Bot, errors_per_200: int = 3) -> Iterator[None]:
    """The restored version v1.9.0 keeps serving at 1.5% errors (200 outcomes every 0.3 s, to
    the first bot that answers): not recovered (the bar is 1%) yet firing no rule (2%), so every
    verification check is judged, posted, and the verification ends "Not recovered"."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            for bot in bots:
                if bot.alive():
                    with contextlib.suppress(httpx.HTTPError):
                        post_events(bot, events("v1.9.0", 200, errors_per_200))
                        break
            stop.wait(0.3)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def post_events(bot: Bot, batch: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(
        f"{bot.base}/api/events",
        json={"events": batch},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=30,
    )


# --- the ledger -------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the database and Slack hold after a scenario."""

    active: str | None
    audit: list[AuditEntry]
    incidents: list[Incident]
    verifications: list[Verification]
    outbox: list[SlackOutbox]
    delivered: Counter[str]  # successful Slack calls per outbox-style method
    posted: list[tuple[str, str | None, str]]  # (channel, thread_ts, text) of every message

    @property
    def rollbacks(self) -> list[AuditEntry]:
        return [e for e in self.audit if e.kind == "rollback"]

    def texts(self) -> list[str]:
        return [text for _, _, text in self.posted]

    def count(self, fragment: str, channel: str = "C1") -> int:
        """How many messages in `channel` (and its threads) contain `fragment`."""
        return sum(fragment in text for where, _, text in self.posted if where == channel)


def assert_checks_told(found: Ledger, checks: int) -> list[str]:
    """Every verification check told once, in order, in #incidents, and the last always.

    One exception, by design (bot/verification/verifier.py): a check that again finds too
    little traffic is not repeated, so a check may be missing only right after a "waiting
    for traffic" one. Returns the check lines told, in order.
    """
    told: list[str] = []
    for number in range(1, checks + 1):
        lines = [t for c, _, t in found.posted if c == "C1" and f"Check {number}/{checks}:" in t]
        assert len(lines) <= 1, (number, found.texts())
        if lines:
            told.extend(lines)
        else:
            assert number < checks, ("the last check is always told", found.texts())
            assert told and "waiting for traffic" in told[-1], (number, found.texts())
    return told


def ledger(engine: Engine, slack: FakeSlack, prompt: str = PROMPT) -> Ledger:
    with read_session(engine) as session:
        row = session.exec(select(Prompt).where(Prompt.name == prompt)).one()
        routing = session.get(Routing, row.id)
        active = None
        if routing is not None and routing.active_version_id is not None:
            version = session.get(PromptVersion, routing.active_version_id)
            active = version.label if version is not None else None
        audit = list(
            session.exec(
                select(AuditEntry)
                .where(AuditEntry.prompt_id == row.id)
                .order_by(col(AuditEntry.id))
            )
        )
        incidents = list(session.exec(select(Incident).order_by(col(Incident.id))))
        verifications = list(session.exec(select(Verification).order_by(col(Verification.id))))
        outbox = list(session.exec(select(SlackOutbox).order_by(col(SlackOutbox.id))))
    delivered: Counter[str] = Counter(
        c.method
        for c in slack.calls
        if c.ok and c.method in ("chat.postMessage", "chat.update", UPLOAD_DONE)
    )
    posted = [
        (str((c.response or {}).get("channel")), c.args.get("thread_ts"), str(c.args.get("text")))
        for c in slack.calls
        if c.ok and c.method == "chat.postMessage"
    ]
    return Ledger(active, audit, incidents, verifications, outbox, delivered, posted)


def pending(engine: Engine, slack: FakeSlack) -> str:
    """What is still pending, for a timeout's message."""
    found = ledger(engine, slack)
    rows = [
        (r.dedupe_key, r.attempts, r.last_error, r.next_attempt_at, r.claimed_until)
        for r in found.outbox
        if r.status == OutboxStatus.PENDING
    ]
    running = [(v.id, v.checks_done) for v in found.verifications if v.status == "running"]
    return f"outbox pending {rows}; verifications running {running}"


def settled(engine: Engine, slack: FakeSlack) -> Ledger | None:
    """The ledger once nothing is pending (no outbox row, no running verification)."""
    found = ledger(engine, slack)
    busy = any(r.status == OutboxStatus.PENDING for r in found.outbox) or any(
        v.status == "running" for v in found.verifications
    )
    return None if busy else found


def wait_rollback(engine: Engine, slack: FakeSlack, timeout: float = 15) -> Ledger:
    """The ledger once a rollback is recorded."""
    return wait_until(
        lambda: (found := ledger(engine, slack)).rollbacks and found,
        timeout=timeout,
        what="the rollback",
    )


def wait_settled(engine: Engine, slack: FakeSlack, timeout: float = 60) -> Ledger:
    """The ledger once nothing is pending; a timeout names what still is."""
    return wait_until(
        lambda: settled(engine, slack), timeout=timeout, what=lambda: pending(engine, slack)
    )


def wait_card(slack: FakeSlack, timeout: float = 20) -> dict[str, Any]:
    """The incident card with a Rollback button, once Slack has it."""
    return wait_until(
        lambda: next((m for m in slack.messages("C1") if ROLLBACK_ACTION in str(m)), None),
        timeout=timeout,
        what="the alert card",
    )


UPLOAD_DONE = "files.completeUploadExternal"


def assert_consistent(found: Ledger) -> dict[str, int]:
    """Routing, audit log, incidents, verifications, outbox and Slack agree; returns counts."""
    routing_changes = [e for e in found.audit if e.kind in ("deploy", "rollback", "split")]
    if routing_changes and routing_changes[-1].kind != "split":
        assert found.active == routing_changes[-1].to_version, (found.active, routing_changes[-1])
    rollback_ids = [e.id for e in found.rollbacks]
    verified = Counter(v.audit_id for v in found.verifications)
    assert sorted(verified) == sorted(rollback_ids), "one verification per rollback"
    assert all(n == 1 for n in verified.values())
    for incident in found.incidents:
        if incident.rollback_audit_id is not None:
            assert incident.rollback_audit_id in rollback_ids, incident
    pointed = Counter(i.rollback_audit_id for i in found.incidents if i.rollback_audit_id)
    assert all(n == 1 for n in pointed.values()), "one incident per rollback"
    # A chart that could not be drawn is given up at once, by design (docs/slack.md); it is
    # counted, not a lost message. Every other row must be sent.
    undrawn = [
        r for r in found.outbox if r.method == CHART_UPLOAD and r.status != OutboxStatus.SENT
    ]
    failed = [r for r in found.outbox if r.status != OutboxStatus.SENT and r not in undrawn]
    assert not failed, (
        f"outbox rows not delivered: {[(r.dedupe_key, r.last_error) for r in failed]}"
    )
    sent = Counter(
        {"chat.update": "chat.update", CHART_UPLOAD: UPLOAD_DONE}.get(r.method, "chat.postMessage")
        for r in found.outbox
    )
    # A post is exactly once. An edit whose answer was lost is sent again: editing a message
    # to the same content twice shows nothing twice, so edits are at least once.
    duplicates = found.delivered["chat.postMessage"] - sent["chat.postMessage"]
    assert (
        found.delivered["chat.postMessage"] == sent["chat.postMessage"]
        and found.delivered["chat.update"] >= sent["chat.update"]
        # A chart whose upload answer was lost may be uploaded again (docs/slack.md).
        and found.delivered[UPLOAD_DONE] >= sent[UPLOAD_DONE]
    ), (
        f"Slack calls {found.delivered} != outbox rows {sent}: {found.posted} "
        f"{[(r.dedupe_key, r.method, r.status) for r in found.outbox]}"
    )
    repeated = [m for m, n in Counter(found.posted).items() if n > 1]
    assert not repeated, f"messages posted twice: {repeated}"
    return {
        "rollbacks": len(rollback_ids),
        "messages_delivered": sum(sent.values()),
        "duplicates": duplicates + len(repeated),
        "lost": len(failed),
        "charts_not_drawn": len(undrawn),
    }


def secrets_in(path: Path) -> list[str]:
    """Which of the suite's secrets appear in a log file (must be none)."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return [secret for secret in SECRETS if secret in text]
