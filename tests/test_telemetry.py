"""GET /metrics: the bot's own figures in Prometheus' text format."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from bot.metrics.builtin import BuiltinSource
from bot.policy import load_policies
from bot.verification.verifier import Verifier
from tests.conftest import make_prompt
from tests.detection_kit import POLICY_DIR, Clock, activated_at, make_checker, traffic


def _samples(client: TestClient) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics", headers={"Authorization": ""})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_metrics_report_checks_verdicts_rollbacks_and_durations(
    client: TestClient, engine: Engine
) -> None:
    before = _samples(client)
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    clock = Clock(activated_at(engine))
    traffic(engine, version="v2.0.0", n=1000, errors=80, at=clock.now)
    clock.advance(minutes=2)
    checker, _ = make_checker(engine, clock)
    checker.tick()
    clock.advance(seconds=5)
    traffic(engine, version="v1.9.0", n=200, at=clock.now)
    Verifier(
        engine=engine,
        policies=load_policies(POLICY_DIR),
        sources={"builtin": BuiltinSource(engine)},
        notifier=checker.notifier,
        clock=lambda: clock.now + timedelta(seconds=0),
    ).run_due()
    after = _samples(client)
    assert after[("rollback_bot_rollbacks", (("trigger", "automatic"),))] == 1
    critical = ("rollback_bot_decisions_total", (("action", "rollback"), ("severity", "critical")))
    assert after[critical] - before.get(critical, 0) == 1
    assert after[("rollback_bot_check_seconds_count", ())] >= 1
    assert after[("rollback_bot_detection_to_rollback_seconds_count", ())] == 1
    assert after[("rollback_bot_rollback_to_recovery_seconds_count", ())] == 1
    assert after[("rollback_bot_slack_outbox_depth", ())] == 0
    assert ("rollback_bot_checker_leader", ()) in after
    _promtool_accepts(client.get("/metrics", headers={"Authorization": ""}).text)


def _promtool_accepts(text: str) -> None:
    """Prometheus' own linter: base units, _total counters, help text on every metric."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool (Debian's prometheus package) is required in CI")
        pytest.skip("promtool is not installed")
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, ""), lint.stdout + lint.stderr


def test_json_log_lines_carry_the_incident() -> None:
    import json
    import logging

    from bot.logs import JsonFormatter

    record = logging.LogRecord(
        "bot.notify", logging.WARNING, __file__, 1, "rolled back %s", ("cs",), None
    )
    record.incident = 7
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["message"], entry["incident"], entry["level"]) == ("rolled back cs", 7, "WARNING")
