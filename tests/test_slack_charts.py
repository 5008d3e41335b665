"""Charts in Slack: when an incident opens, a PNG chart of its figures is uploaded into the
card's thread through Slack's three-step upload (files.getUploadURLExternal, the bytes to the
URL it gives, files.completeUploadExternal with the thread) by slack_sdk's files_upload_v2,
with alt text; a Slack outage delays it without losing it, and never delays a rollback."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine

from tests.slack_harness import running
from tests.test_slack_app import _active, _checker_pass, _wait_card

PNG = b"\x89PNG\r\n\x1a\n"


def _wait(probe, timeout: float = 20):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("outage", [False, True])
def test_an_opened_incident_gets_a_chart_in_its_thread(
    engine: Engine, db_url: str, outage: bool
) -> None:
    with running(engine, db_url, slack_charts="true") as harness:
        fake = harness.fake
        if outage:  # the upload's first step fails twice: retried, not lost
            fake.fail_next("files.getUploadURLExternal", count=2, status=503)
        _checker_pass(engine, harness, errors=30)  # 3%: a high incident, paged, not rolled back
        card = _wait_card(harness, lambda c: True)
        complete = _wait(lambda: [c for c in fake.calls_to("files.completeUploadExternal") if c.ok])
        steps = [c.method for c in fake.calls if c.method.startswith(("files.", "upload"))]
        ok_steps = [m for m in steps if m != "files.getUploadURLExternal"]
        assert steps[-3:] == [
            "files.getUploadURLExternal",
            "upload",
            "files.completeUploadExternal",
        ]
        assert ok_steps[-2:] == ["upload", "files.completeUploadExternal"]
        if outage:
            assert steps.count("files.getUploadURLExternal") == 3
        [upload] = fake.uploads().values()
        assert upload["content"].startswith(PNG)
        assert 10_000 < len(upload["content"]) < 1_000_000
        assert upload["length"] == len(upload["content"])
        assert upload["filename"].startswith("customer-support-v2.0.0-incident-")
        assert "error rate, quality and p99 latency" in upload["alt_txt"]
        args = complete[0].args
        assert args["channel_id"] == "C1" and args["thread_ts"] == card["ts"]
        assert _active(engine) == "v2.0.0"  # a high incident: nothing rolled back


def test_a_slack_outage_never_delays_the_rollback(engine: Engine, db_url: str) -> None:
    with running(engine, db_url) as harness:
        harness.fake.set_down(True)
        started = time.monotonic()
        _checker_pass(engine, harness, errors=80)  # 8%: rolled back in the pass itself
        assert _active(engine) == "v1.9.0"
        assert time.monotonic() - started < 5
        harness.fake.set_down(False)
        _wait(lambda: [c for c in harness.fake.calls_to("chat.postMessage") if c.ok])
