"""The Block Kit builders, called directly: content people read, within Slack's limits."""

from __future__ import annotations

import json

from bot.slack.blocks import (
    ACKNOWLEDGE_ACTION,
    ROLLBACK_ACTION,
    IncidentCard,
    card_text,
    figures_lines,
    incident_card,
    to_dicts,
)

FIGURES = {
    "requests": 1000,
    "error_rate_pct": 8.0,
    "error_rate_ci_pct": [6.7, 9.5],
    "age_s": 754,
    "quality": 0.61,
    "quality_drop_pct": 23.75,
    "latency_p99_ms": 2100.0,
    "latency_increase_pct": 110.0,
    "baseline": {
        "source": "v1.9.0 over the 60 min before v2.0.0 took over",
        "requests": 5000,
        "quality": 0.8,
        "latency_p99_ms": 1000.0,
    },
}
FIRED = [
    {
        "rule": "error_rate_critical",
        "metric": "error_rate_pct",
        "value": 8.0,
        "threshold": 5.0,
        "runbook": "https://runbooks.example.com/errors",
        "note": None,
    }
]


def card(**kw) -> IncidentCard:
    base = {
        "incident_id": 7,
        "prompt": "customer-support",
        "version": "v2.0.0",
        "severity": "high",
        "status": "open",
        "fired": FIRED,
        "figures": FIGURES,
        "target": "v1.9.0",
    }
    return IncidentCard(**{**base, **kw})


def test_open_card_shows_the_figures_and_both_buttons() -> None:
    blocks = to_dicts(incident_card(card()))
    text = json.dumps(blocks)
    assert blocks[0]["text"]["text"] == "HIGH: customer-support v2.0.0"
    assert "*Version age*\\n12 min" in text
    assert "\\u2022 error rate 8.0% is above 5% (`error_rate_critical`)" in text
    assert "error_rate_pct" not in text
    assert "8.0% of 1,000 requests (95% bounds 6.70% to 9.50%)" in text
    assert "*Quality* 0.610 vs baseline 0.800 (drop 23.8%)" in text
    assert "*Latency p99* 2,100 ms vs baseline 1,000 ms (change 110.0%)" in text
    assert "<https://runbooks.example.com/errors|Runbook>" in text
    actions = blocks[-1]
    assert [e["action_id"] for e in actions["elements"]] == [ROLLBACK_ACTION, ACKNOWLEDGE_ACTION]
    # No confirm on Rollback: it opens the rollback dialog, which is the confirmation.
    assert "confirm" not in actions["elements"][0]
    assert actions["elements"][0]["text"]["text"] == "Rollback to v1.9.0"
    assert json.loads(actions["elements"][0]["value"]) == {"incident": 7, "target": "v1.9.0"}


def test_acted_card_has_no_buttons_and_says_what_was_done() -> None:
    blocks = to_dicts(
        incident_card(card(state="Rolled back v2.0.0 → v1.9.0 by <@U1>", status="rolled_back"))
    )
    assert all(b["type"] != "actions" for b in blocks)
    assert "Rolled back v2.0.0 → v1.9.0 by <@U1>" in blocks[-1]["text"]["text"]
    assert card_text(card(state="Rolled back")) == "[HIGH] customer-support v2.0.0: Rolled back"


def test_limits_hold_with_huge_inputs() -> None:
    many = [{**FIRED[0], "rule": f"rule_{i}", "note": "n" * 500} for i in range(40)]
    blocks = to_dicts(
        incident_card(card(prompt="p" * 100, version="v" * 64, fired=many, extra=["x" * 5000]))
    )
    assert len(blocks) <= 50
    for block in blocks:
        if block["type"] == "section" and "text" in block:
            assert len(block["text"]["text"]) <= 3000
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= 150
    assert len(card_text(card(state="s" * 5000))) <= 3000


def test_missing_figures_read_as_not_available() -> None:
    lines = figures_lines({"requests": 0})
    assert lines[0].startswith("*Error rate* n/a of 0 requests")
    assert "*Latency p99* n/a vs baseline n/a" in lines[-1]
