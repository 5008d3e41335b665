"""Fuzzing policy files and baselines: every policy is either refused with `file:line: field:`
lines, or one under which a clearly healthy version is never rolled back and an 8%-error
version always is. Values come from a hostile pool (NaN, infinities, negatives, huge numbers,
wrong types, duplicate keys) mixed with values that are legitimately valid for the field."""

from __future__ import annotations

import json
import math
import re
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.judging.verdict import decide
from bot.metrics import Baseline, VersionMetrics, WindowStats
from bot.models import Action
from bot.policy import PolicyError, load_policies
from tests.reliability.kit import record

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = yaml.safe_load((ROOT / "policies" / "default.yaml").read_text())
PROBLEM = re.compile(r"^\S+\.yaml(:\d+)?: \S")

HOSTILE = st.sampled_from(
    [
        math.nan,
        math.inf,
        -math.inf,
        -1,
        -0.5,
        1e300,
        -1e300,
        0,
        "5",
        "yes",
        "no",
        "",
        [],
        {},
        None,
        True,
        False,
        "5m",
        "1h",
        5,
        300,
        "critical",
        "none",
        "insufficient_data",
        "page",
    ]
)
# Values each field may legitimately take without changing what the property expects:
# 8% of 1,000 requests stays a significant critical breach, 0.2% stays healthy.
VALID: dict[tuple[str, ...], st.SearchStrategy[Any]] = {
    ("rules", 0, "above"): st.floats(0.5, 5.0),
    ("rules", 0, "severity"): st.just("critical"),
    ("rules", 0, "action"): st.just("rollback"),
    ("rules", 0, "enabled"): st.just(True),
    ("rules", 1, "above"): st.floats(0.5, 5.0),
    ("rules", 1, "enabled"): st.booleans(),
    ("rules", 2, "above"): st.floats(1.0, 99.0),
    ("rules", 4, "above"): st.floats(1.0, 10_000.0),
    ("rules", 0, "act_within"): st.sampled_from(["30s", "2m", "1h"]),
    ("defaults", "window"): st.sampled_from(["1m", "5m", "30m"]),
    ("defaults", "min_requests"): st.integers(1, 1000),
    ("defaults", "confidence"): st.floats(0.8, 0.99),
    ("defaults", "auto_rollback"): st.just(True),
    ("defaults", "verify_every"): st.sampled_from(["1s", "5s"]),
    ("defaults", "observe"): st.sampled_from(["10m", "1h"]),
    ("new_version", "error_rate_pct"): st.floats(0.3, 5.0),
    ("new_version", "severity"): st.just("medium"),
    ("new_version", "action"): st.sampled_from(["observe", "alert"]),
    ("new_version", "duration"): st.sampled_from(["10m", "1h", "2h"]),
}
PATHS = sorted(VALID, key=str)
COUNTS: dict[str, int] = {"refused": 0, "accepted": 0}


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _judge(policies: Any, errors: int) -> Action:
    metrics = VersionMetrics(
        current=WindowStats(
            requests=1000,
            errors=errors,
            latency_p50_ms=400,
            latency_p99_ms=1000,
            quality=0.8,
            quality_count=500,
        ),
        baseline=Baseline(
            source="v1.9.0",
            requests=5000,
            error_rate_pct=0.2,
            latency_p50_ms=400,
            latency_p99_ms=1000,
            quality=0.8,
        ),
    )
    return decide(
        prompt="cs",
        version="v2",
        metrics=metrics,
        policy=policies.for_prompt("cs"),
        age=timedelta(hours=2),
    ).action


def _write(folder: Path, data: dict[str, Any], duplicate: tuple[str, Any] | None) -> None:
    text = yaml.safe_dump(data, sort_keys=False)
    if duplicate is not None:  # the same key again in `defaults` (which already has it)
        key, value = duplicate
        text = text.replace("defaults:\n", f"defaults:\n  {key}: {json.dumps(value)}\n", 1)
    (folder / "default.yaml").write_text(text)


def _load(folder: str) -> tuple[Any, list[str]]:
    try:
        return load_policies(folder), []
    except PolicyError as exc:
        return None, exc.problems


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.lists(
        st.sampled_from(PATHS).flatmap(
            lambda path: st.tuples(st.just(path), HOSTILE | VALID[path])
        ),
        min_size=1,
        max_size=4,
    ),
    duplicate=st.none() | st.tuples(st.sampled_from(["window", "min_requests"]), HOSTILE),
)
@example(changes=[(("rules", 0, "action"), "page")], duplicate=None)  # was accepted: no rollback
@example(changes=[(("defaults", "auto_rollback"), False)], duplicate=None)  # pages instead
def test_every_policy_is_refused_or_keeps_detection(
    changes: list[tuple[tuple[Any, ...], Any]], duplicate: tuple[str, Any] | None
) -> None:
    data = yaml.safe_load(yaml.safe_dump(DEFAULT))
    for path, value in changes:
        _set(data, path, value)
    with tempfile.TemporaryDirectory() as tmp:
        _write(Path(tmp), data, duplicate)
        policies, problems = _load(tmp)
    if policies is None:
        COUNTS["refused"] += 1
        assert problems and all(PROBLEM.match(p) for p in problems), problems
        return
    assert duplicate is None, "a duplicate key was accepted"
    COUNTS["accepted"] += 1
    assert _judge(policies, errors=2) != Action.ROLLBACK, changes  # 0.2%: healthy
    # 8%: rolled back, or paged where `auto_rollback: false` (the documented switch for people
    # deciding) is set; never merely alerted, observed or ignored.
    rolls_back = policies.for_prompt("cs").settings.auto_rollback
    expected = Action.ROLLBACK if rolls_back else Action.PAGE
    assert _judge(policies, errors=80) == expected, changes


SEQUENCE: list[int] = []
BASELINES = {"stored": 0, "refused": 0}
BASELINE_VALUES = st.sampled_from(
    [math.nan, math.inf, -math.inf, 1e400, -5, 7, 500, -1, 0, True, "0.8", None, [], 0.8, 0.5, 1]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    baseline=st.dictionaries(
        st.sampled_from(
            ["quality", "error_rate_pct", "latency_p99_ms", "latency_p50_ms", "qualty"]
        ),
        BASELINE_VALUES,
        min_size=1,
        max_size=4,
    )
)
def test_baselines_are_stored_only_when_finite_known_and_in_range(
    client: TestClient, baseline: dict[str, Any]
) -> None:
    SEQUENCE.append(len(SEQUENCE))
    version = f"v{len(SEQUENCE)}"
    body = json.dumps({"version": version, "template": "t", "baseline": baseline})
    answer = client.post(
        "/api/prompts/fz/versions", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code in (201, 422), answer.text
    BASELINES["stored" if answer.status_code == 201 else "refused"] += 1
    if answer.status_code == 201:
        stored = answer.json()["baseline"] or {}
        limits = {
            "quality": (0, 1),
            "error_rate_pct": (-0.0, 100),
            "latency_p99_ms": (0, 3.6e6),
            "latency_p50_ms": (0, 3.6e6),
        }
        for key, value in stored.items():
            low, high = limits[key]
            assert isinstance(value, float | int) and not isinstance(value, bool)
            assert math.isfinite(value) and low <= value <= high
            assert key != "error_rate_pct" or value >= 0
            assert key == "error_rate_pct" or value > 0


def test_fuzz_counts_recorded() -> None:
    if COUNTS["accepted"] or COUNTS["refused"]:  # run with the fuzz above: both kinds seen
        assert COUNTS["accepted"] > 10 and COUNTS["refused"] > 10, COUNTS
    record("policy fuzz", **COUNTS)
    record("baseline fuzz", **BASELINES)
