"""The metrics source misbehaves: Prometheus down, slow past the timeout, answering NaN or
nothing. No crash, no rollback on missing data, one "metrics source down" alert after the
configured failures and one "recovered" when it answers again.

The Prometheus is the real server (Debian's package) scraping a fake application's /metrics
every second: down is the server stopped, slow is the server paused (SIGSTOP: it accepts the
connection and never answers), NaN is the application exposing NaN, empty is the application
exposing no series for the prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.conftest import PG_ONLY
from tests.prometheus_kit import Exporter, PrometheusServer, Traffic, require_prometheus
from tests.reliability.kit import (
    FAST_POLICY,
    PROMPT,
    Bot,
    ledger,
    record,
    seed_prompt,
    wait_rollback,
    wait_until,
    write_policy,
)
from tests.slack_kit import FakeSlack

pytestmark = pytest.mark.parametrize("db_url", PG_ONLY, indirect=True)

# A short window, so that NaN samples leave it within seconds of the application's recovery.
PROMETHEUS_POLICY = (
    FAST_POLICY.replace("defaults:\n", "defaults:\n  source: prometheus\n  window: 10s\n")
    + """
prometheus:
  url: {url}
  timeout: 1s
  queries:
    requests: sum(increase(llm_requests_total{{prompt="$prompt",version="$version"}}[$window]))
    errors: sum(increase(llm_errors_total{{prompt="$prompt",version="$version"}}[$window]))
"""
)
# v2.0.0 at 8% errors, 250 requests a second.
BAD = {(PROMPT, "v2.0.0"): Traffic(requests=25, errors=2, slow=0, scored=0, score=0.0)}


def test_prometheus_down_slow_nan_or_empty_never_rolls_back_and_alerts_once(
    db_url: str,
    engine: Engine,
    slack: FakeSlack,
    tmp_path: Path,
    make_bot: Callable[..., Bot],
) -> None:
    exporter = Exporter(BAD)
    exporter.mode = "none"  # no data yet while the prompt is set up
    prometheus = PrometheusServer(require_prometheus(), tmp_path, exporter.port)
    faults = {
        "down": (prometheus.stop, prometheus.start),
        "slow": (prometheus.pause, prometheus.resume),
        # NaN samples stay in the query window until they age out of it (10 s).
        "nan": (
            lambda: setattr(exporter, "mode", "nan"),
            lambda: setattr(exporter, "mode", "none"),
        ),
    }
    try:
        prometheus.start()
        policies = write_policy(
            tmp_path / "policies-prometheus", PROMETHEUS_POLICY.format(url=prometheus.url)
        )
        bot = make_bot("prometheus", policies=policies)
        bot.start()
        seed_prompt(bot)
        alerts: dict[str, float] = {}
        recoveries: dict[str, float] = {}
        for mode, (fail, recover) in faults.items():
            started = time.monotonic()
            fail()
            wait_until(
                lambda: ledger(engine, slack).count("Metrics source prometheus is down"),
                timeout=30,
                what=f"the down alert ({mode})",
            )
            alerts[mode] = round(time.monotonic() - started, 2)
            assert not ledger(engine, slack).rollbacks, f"rolled back on missing data ({mode})"
            started = time.monotonic()
            recover()  # answers again, with no samples: insufficient data
            wait_until(
                lambda: ledger(engine, slack).count("Metrics source prometheus recovered"),
                timeout=40,
                what=f"the recovery notice ({mode})",
            )
            recoveries[mode] = round(time.monotonic() - started, 2)
            time.sleep(1.5)  # a few passes on empty answers: no rollback, no alert
            found = ledger(engine, slack)
            assert not found.rollbacks
            assert found.count("Metrics source prometheus is down") == 1
            assert found.count("Metrics source prometheus recovered") == 1
            # Each outage is alerted once: start the next from a clean slate.
            slack.reset()
        assert bot.alive()
        # With real figures again (8% errors) the rollback happens.
        started = time.monotonic()
        exporter.mode = "ok"
        wait_rollback(engine, slack, timeout=30)
        record(
            "metrics source faults (real Prometheus)",
            faults=",".join(["down", "slow", "nan", "empty"]),
            rollbacks_on_missing_data=0,
            rollback_after_real_figures_s=round(time.monotonic() - started, 2),
            **{f"down_alert_after_{mode}_s": s for mode, s in alerts.items()},
            **{f"recovered_after_{mode}_s": s for mode, s in recoveries.items()},
        )
    finally:
        prometheus.stop()
        exporter.close()
