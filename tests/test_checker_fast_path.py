"""The checker's fast path (rows read as tuples, policies resolved once per pass, rules read
once per rules tuple) reaches exactly the verdicts the straightforward code reached: every
decision of a varied registry compared with figures recorded before the change."""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert

from bot.db import write_session
from bot.judging.targets import verification_target
from bot.metrics.builtin import BuiltinSource
from bot.metrics.histogram import percentile, percentiles
from bot.models import (
    HISTOGRAM_COLUMNS,
    Prompt,
    PromptVersion,
    Routing,
    Verification,
    metric_bucket,
)
from bot.policy import load_policies
from bot.policy.schema import EffectivePolicy, NewVersionLimits, RulePatch, SettingsPatch
from tests.detection_kit import POLICY_DIR, Clock, make_checker

GOLDEN = Path(__file__).resolve().parent / "golden" / "checker_verdicts.json"
NOW = datetime(2026, 12, 3, 12, 0, 30, tzinfo=UTC)
PROMPTS = 90


def _histogram(rng: random.Random, requests: int) -> dict[str, int]:
    """`requests` latencies spread over a few neighbouring buckets."""
    counts = dict.fromkeys(HISTOGRAM_COLUMNS, 0)
    centre = rng.randrange(3, len(HISTOGRAM_COLUMNS) - 3)
    for _ in range(min(requests, 40)):
        counts[HISTOGRAM_COLUMNS[centre + rng.randint(-2, 2)]] += 1
    # The rest in proportion, so a large window keeps its shape.
    scale = requests / max(1, min(requests, 40))
    counts = {name: int(count * scale) for name, count in counts.items()}
    counts[HISTOGRAM_COLUMNS[centre]] += requests - sum(counts.values())
    if rng.random() < 0.1:  # a slow tail in the open-ended bucket
        counts[HISTOGRAM_COLUMNS[-1]] += max(1, requests // 50)
    return counts


def _bucket(
    rng: random.Random, version_id: int, minute: datetime, requests: int, error_pct: float
) -> dict[str, Any]:
    quality_count = rng.choice([0, requests // 3, requests])
    histogram = _histogram(rng, requests)
    return {
        "version_id": version_id,
        "minute": minute,
        "requests": requests,
        "errors": min(requests, round(requests * error_pct / 100 + rng.random())),
        "latency_sum_ms": 0.0,
        # Scores in eighths: their sums are exact, so every database adds them up alike.
        "quality_sum": quality_count * rng.randint(4, 8) / 8 - rng.randint(0, 3) / 8,
        "quality_count": quality_count,
        **histogram,
    }


def _fill(engine: Engine) -> None:
    """A registry of varied prompts: young and old versions, good and bad predecessors, no
    predecessor, stored baselines, thin and heavy traffic, splits with a canary."""
    rng = random.Random(17)
    prompts, versions, routings, buckets = [], [], [], []
    for i in range(1, PROMPTS + 1):
        prompts.append({"id": i, "name": f"p{i}", "created_at": NOW - timedelta(days=2)})
        ids = {label: 3 * i - 2 + k for k, label in enumerate(("v1", "v2", "v3"))}
        age = timedelta(minutes=rng.choice([2, 20, 45, 90, 600]))
        switched = NOW - age
        stored = {"error_rate_pct": 1.0, "latency_p99_ms": 300.0, "quality": 0.85}
        for label, version_id in ids.items():
            health = "unknown"
            if label == "v1":
                health = rng.choice(["good", "good", "bad", "unknown"])
            elif label == "v2":
                health = rng.choice(["unknown", "unknown", "good"])
            versions.append(
                {
                    "id": version_id,
                    "prompt_id": i,
                    "label": label,
                    "template": "t",
                    "created_by": "test",
                    "created_at": NOW - timedelta(days=1),
                    "health": health,
                    "baseline": stored if rng.random() < 0.25 else None,
                }
            )
        split = {"v2": 90, "v3": 10} if rng.random() < 0.15 else None
        previous = None if rng.random() < 0.1 else ids["v1"]
        routings.append(
            {
                "prompt_id": i,
                "active_version_id": ids["v2"],
                "previous_version_id": previous,
                "split": split,
                "activated_at": switched,
                "updated_at": switched + timedelta(minutes=1) if split else switched,
                "revision": 2,
            }
        )
        base_requests = rng.choice([0, 5, 30, 200])
        for m in range(1, 60, 7):
            if base_requests:
                minute = (switched - timedelta(minutes=m)).replace(second=0, microsecond=0)
                buckets.append(_bucket(rng, ids["v1"], minute, base_requests, rng.uniform(0, 3)))
        serving = ["v2", "v3"] if split else ["v2"]
        error_pct = rng.choice([0.0, 0.5, 1.5, 3.0, 8.0, 20.0])
        per_minute = rng.choice([0, 4, 15, 120, 600])
        for label in serving:
            for m in range(0, min(6, int(age.total_seconds() // 60) + 1)):
                minute = (NOW - timedelta(minutes=m)).replace(second=0, microsecond=0)
                if per_minute:
                    buckets.append(_bucket(rng, ids[label], minute, per_minute, error_pct))
    with write_session(engine) as session:
        session.execute(insert(Prompt), prompts)
        session.execute(insert(PromptVersion), versions)
        session.execute(insert(Routing), routings)
        session.execute(insert(metric_bucket), buckets)


def _policies() -> Any:
    """The project's default policy with a few prompts overriding it."""
    policies = load_policies(POLICY_DIR)
    quality_floor = RulePatch(
        name="quality_floor", metric="quality", below=0.7, severity="high", action="page"
    )
    overrides = {
        "p3": SettingsPatch(auto_rollback=False),
        "p5": SettingsPatch(min_requests=10, window=timedelta(minutes=2)),
        "p7": SettingsPatch(rules=[quality_floor]),
        "p9": SettingsPatch(rules=[RulePatch(name="error_rate_critical", enabled=False)]),
        "p11": SettingsPatch(new_version=NewVersionLimits(error_rate_pct=2.0)),
        "p13": SettingsPatch(confidence=0.99, min_latency_samples=50, min_quality_samples=5),
    }
    return policies.model_copy(update={"prompts": overrides})


def _verifications() -> list[tuple[Verification, int]]:
    """Restored versions judged only from their switch: three inside the window's first
    minute (its earlier counts taken off), one before it."""
    found = []
    for i, since in ((2, 20), (4, 40), (6, 50), (8, 200)):
        started = NOW - timedelta(seconds=since)
        found.append(
            (
                Verification(
                    prompt=f"p{i}",
                    prompt_id=i,
                    version="v2",
                    from_version="v1",
                    started_at=started,
                    pre_switch={"requests": 3.0, "errors": 1.0, HISTOGRAM_COLUMNS[9]: 2.0},
                ),
                3 * i - 1,
            )
        )
    return found


def _snapshot(engine: Engine) -> dict[str, Any]:
    policies = _policies()
    checker, _ = make_checker(engine, Clock(NOW), policies)
    judged = checker.judge(NOW)
    source = BuiltinSource(engine)
    settings = policies.for_prompt(None).settings
    targets = [verification_target(v, vid, settings) for v, vid in _verifications()]
    cut = source.collect(targets, NOW)
    return {
        "decisions": [
            {
                "target": [lv.target.prompt, lv.target.version, lv.target.share_pct],
                "health": lv.health.value,
                "decision": decision.as_dict(),
            }
            for lv, decision in judged
        ],
        "verification_figures": [asdict(cut[t.version_id]) for t in targets],  # type: ignore[call-overload]
    }


def _by_target(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(snapshot["decisions"], key=lambda d: d["target"])


def test_every_verdict_is_the_one_reached_before_the_fast_path(engine: Engine) -> None:
    _fill(engine)
    found = json.loads(json.dumps(_snapshot(engine), sort_keys=True))
    if os.environ.get("WRITE_GOLDEN"):  # run once on the code before the change
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    expected = json.loads(GOLDEN.read_text())
    actions = {d["decision"]["action"] for d in expected["decisions"]}
    # The set is varied enough to mean something: every kind of verdict appears.
    assert {"none", "insufficient_data", "alert", "page", "rollback"} <= actions
    assert len(found["decisions"]) == len(expected["decisions"]) > PROMPTS
    # Every database judges in prompt order (prompt pN has id N), each canary right after its
    # stable version. (The recording was made on SQLite before the live-versions query had an
    # ORDER BY, in its order of names: a stable sort by id keeps each prompt's own order.)
    in_prompt_order = sorted(expected["decisions"], key=lambda d: int(d["target"][0][1:]))
    assert [d["target"] for d in found["decisions"]] == [d["target"] for d in in_prompt_order]
    for got, want in zip(_by_target(found), _by_target(expected), strict=True):
        assert got == want
    assert found["verification_figures"] == expected["verification_figures"]


def test_percentiles_in_one_walk_equal_percentile_for_each() -> None:
    rng = random.Random(5)
    for _ in range(3000):
        counts = [
            rng.choice([0, 0, 0, 1, 3, 100, rng.randint(0, 10**6)]) for _ in HISTOGRAM_COLUMNS
        ]
        if rng.random() < 0.05:
            counts = [0] * len(HISTOGRAM_COLUMNS)
        qs = sorted(rng.choice([0.0, 0.5, 0.99, 1.0, rng.random()]) for _ in range(3))
        assert percentiles(counts, qs) == [percentile(counts, q) for q in qs]


def test_a_prompt_without_an_override_gets_the_validated_defaults() -> None:
    policies = _policies()
    defaults = EffectivePolicy(
        prompt="p1",
        settings=policies.defaults,
        rules=policies.rules,
        new_version=policies.new_version,
        prometheus=policies.prometheus,
    )
    assert policies.for_prompt("p1") == defaults
    assert policies.for_prompt(None) == defaults.model_copy(update={"prompt": None})
    assert policies.for_prompt("p3").settings.auto_rollback is False
