"""The metrics source misbehaves: Prometheus down, slow past the timeout, answering NaN or
nothing. No crash, no rollback on missing data, one "metrics source down" alert after the
configured failures and one "recovered" when it answers again.

The Prometheus here is a stand-in speaking its HTTP query API (/api/v1/query), so each fault
can be switched on and off; the real Prometheus server is exercised by tests/test_prometheus.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import Engine

from tests.reliability.kit import (
    FAST_POLICY,
    Bot,
    ledger,
    record,
    seed_prompt,
    wait_rollback,
    wait_until,
    write_policy,
)
from tests.slack_kit import FakeSlack

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

PROMETHEUS_POLICY = (
    FAST_POLICY.replace("defaults:\n", "defaults:\n  source: prometheus\n")
    + """
prometheus:
  url: {url}
  timeout: 1s
  queries:
    requests: sum(increase(llm_requests_total{{prompt="$prompt",version="$version"}}[$window]))
    errors: sum(increase(llm_errors_total{{prompt="$prompt",version="$version"}}[$window]))
"""
)


class FaultyPrometheus:
    """/api/v1/query answering 8% errors on 1,000 requests, or the fault set by `mode`."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.queries = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.queries += 1
                query = parse_qs(urlsplit(self.path).query).get("query", [""])[0]
                mode = owner.mode
                if mode == "down":
                    self.close_connection = True
                    self.send_response(503)
                    self.end_headers()
                    return
                if mode == "slow":
                    time.sleep(2.5)  # past the policy's 1 s timeout
                value = "1000" if "requests" in query else "80"
                result: list[Any] = [{"metric": {}, "value": [time.time(), value]}]
                if mode == "nan":
                    result[0]["value"][1] = "NaN"
                elif mode == "empty":
                    result = []
                body = json.dumps(
                    {"status": "success", "data": {"resultType": "vector", "result": result}}
                ).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (timeout): expected in "slow"

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_prometheus_down_slow_nan_or_empty_never_rolls_back_and_alerts_once(
    db_url: str,
    engine: Engine,
    slack: FakeSlack,
    tmp_path: Path,
    make_bot: Callable[..., Bot],
) -> None:
    prometheus = FaultyPrometheus()
    prometheus.mode = "empty"  # no data yet while the prompt is set up
    try:
        policies = write_policy(
            tmp_path / "policies-prometheus", PROMETHEUS_POLICY.format(url=prometheus.url)
        )
        bot = make_bot("prometheus", policies=policies)
        bot.start()
        seed_prompt(bot)
        alerts: dict[str, float] = {}
        for mode in ("down", "slow", "nan"):
            prometheus.mode = mode
            started = time.monotonic()
            wait_until(
                lambda: ledger(engine, slack).count("Metrics source prometheus is down"),
                timeout=30,
                what=f"the down alert ({mode})",
            )
            alerts[mode] = round(time.monotonic() - started, 2)
            assert not ledger(engine, slack).rollbacks, f"rolled back on missing data ({mode})"
            prometheus.mode = "empty"  # answers again, with no samples: insufficient data
            wait_until(
                lambda: ledger(engine, slack).count("Metrics source prometheus recovered"),
                timeout=30,
                what=f"the recovery notice ({mode})",
            )
            time.sleep(1.5)  # a few passes on empty answers: no rollback, no alert
            found = ledger(engine, slack)
            assert not found.rollbacks
            assert found.count("Metrics source prometheus is down") == 1
            assert found.count("Metrics source prometheus recovered") == 1
            # Each outage is alerted once: start the next from a clean slate.
            slack.reset()
        assert bot.alive()
        # With real figures again (8% errors on 1,000 requests) the rollback happens.
        prometheus.mode = "ok"
        wait_rollback(engine, slack, timeout=15)
        record(
            "metrics source faults",
            faults=",".join(["down", "slow", "nan", "empty"]),
            queries_answered=prometheus.queries,
            rollbacks_on_missing_data=0,
            **{f"down_alert_after_{mode}_s": s for mode, s in alerts.items()},
        )
    finally:
        prometheus.close()
