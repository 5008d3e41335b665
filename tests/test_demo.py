"""`rollback-bot demo` runs the whole loop and shows it as readable text."""

from __future__ import annotations

import re
import time

from bot.demo.run import run_demo


def test_demo_shows_alert_rollback_verification_and_postmortem() -> None:
    lines: list[str] = []
    started = time.monotonic()
    assert run_demo(lines.append) is True
    assert time.monotonic() - started < 60
    out = "\n".join(lines)
    assert "2. Deployed v2.0.0" in out
    assert "3. Rolled back automatically to v1.9.0" in out
    assert "── #incidents" in out
    assert "CRITICAL: customer-support v2.0.0" in out
    assert "Rolled back v2.0.0 → v1.9.0 automatically." in out
    assert "Check 1/6: " in out  # on a busy machine it may come before v1.9.0's first traffic
    assert re.search(r"Check \d/6: error rate \d+\.\d% \(n=\d+\)", out)
    assert "Recovered: v1.9.0 is healthy" in out
    assert "*Post-mortem draft: customer-support v2.0.0" in out
    assert "Demo finished in" in out
