"""Policy files: the default encodes the table; every problem names file, line and field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.models import Action, Severity
from bot.policy import PolicyError, load_policies
from tests.detection_kit import POLICY_DIR

ROOT = Path(__file__).resolve().parent.parent


def test_default_policy_is_the_seed_table() -> None:
    policy = load_policies(POLICY_DIR).for_prompt("customer-support")
    table = [(r.metric.value, r.above, r.severity, r.action) for r in policy.rules]
    assert table == [
        ("error_rate_pct", 5.0, Severity.CRITICAL, Action.ROLLBACK),
        ("error_rate_pct", 2.0, Severity.HIGH, Action.PAGE),
        ("quality_drop_pct", 20.0, Severity.HIGH, Action.ALERT),
        ("quality_drop_pct", 10.0, Severity.MEDIUM, Action.OBSERVE),
        ("latency_increase_pct", 100.0, Severity.HIGH, Action.PAGE),
    ]
    limits = policy.new_version
    assert limits is not None
    assert (limits.error_rate_pct, limits.latency_increase_pct, limits.quality_drop_pct) == (
        0.5,
        10,
        5,
    )
    assert policy.settings.min_requests == 50
    assert policy.settings.observe.total_seconds() == 3600


def write(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path


def test_per_prompt_overrides(tmp_path: Path) -> None:
    write(tmp_path, "default.yaml", (POLICY_DIR / "default.yaml").read_text())
    write(
        tmp_path,
        "customer-support.yaml",
        """
prompts:
  customer-support:
    window: 2m
    auto_rollback: false
    rules:
      - name: error_rate_critical
        above: 4
        runbook: https://runbooks.example.com/cs/errors
      - name: latency_p99_doubled
        enabled: false
      - name: quality_floor
        metric: quality
        below: 0.6
        severity: medium
        action: alert
""",
    )
    policies = load_policies(tmp_path)
    cs = policies.for_prompt("customer-support")
    assert cs.settings.window.total_seconds() == 120
    assert cs.settings.auto_rollback is False
    rules = {r.name: r for r in cs.rules}
    assert rules["error_rate_critical"].above == 4
    assert str(rules["error_rate_critical"].runbook) == "https://runbooks.example.com/cs/errors"
    assert rules["latency_p99_doubled"].enabled is False
    assert rules["quality_floor"].action == Action.ALERT
    other = policies.for_prompt("billing")
    assert other.settings.window.total_seconds() == 300
    assert {r.name: r.above for r in other.rules}["error_rate_critical"] == 5


INVALID = [
    (
        "rules:\n  - name: x\n    metric: error_rate_pct\n    above: high\n    severity: high\n    action: page\n",
        "default.yaml:4: rules.0.above: must be a number, not 'high'",
    ),
    (
        "rules:\n  - name: x\n    metric: error_rate_pct\n    above: 1\n    severity: low\n    action: page\n",
        "default.yaml:5: rules.0.severity: Input should be",
    ),
    (
        "rules:\n  - name: x\n    metric: error_rate_pct\n    above: 1\n    severity: high\n    action: none\n",
        "default.yaml:2: rules.0: action must be observe, alert, page, rollback",
    ),
    ("defaults:\n  window: soon\n", "default.yaml:2: defaults.window: must be a duration"),
    (
        "defaults:\n  windwo: 5m\n",
        "default.yaml:2: defaults.windwo: Extra inputs are not permitted",
    ),
    (
        "defaults:\n  source: prometheus\n",
        "defaults.source: prometheus is chosen but no file has a prometheus section",
    ),
    ("rules: [\n", "default.yaml:2: not valid YAML"),
    ("- a\n- b\n", "default.yaml:1: a policy file must be a mapping"),
    (
        "prompts:\n  customer-support:\n    rules:\n      - name: brand_new\n        above: 1\n",
        "prompts.customer-support.rules: a new rule needs metric",
    ),
]


def test_sections_and_prompts_may_appear_once(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "defaults:\n  window: 5m\nprompts:\n  cs: {window: 1m}\n")
    write(tmp_path, "rules.yaml", _rule("5"))
    write(tmp_path, "b.yaml", "defaults:\n  window: 2m\nprompts:\n  cs: {window: 2m}\n")
    with pytest.raises(PolicyError) as info:
        load_policies(tmp_path)
    assert len(info.value.problems) == 2
    assert "b.yaml:1: defaults: already set in" in info.value.problems[0]
    assert "b.yaml:4: prompts.cs: already set in" in info.value.problems[1]


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such directory"):
        load_policies(tmp_path / "nope")


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=60,
    )


def test_policy_check_command(tmp_path: Path) -> None:
    ok = run("policy", "check")
    assert ok.returncode == 0
    assert "OK (1 file(s), 5 rules" in ok.stdout
    write(tmp_path, "default.yaml", "defaults:\n  min_requests: 0\n  confidence: 2\n")
    bad = run("policy", "check", str(tmp_path))
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert (
        "default.yaml:2: defaults.min_requests: Input should be greater than or equal to 1"
        in bad.stderr
    )
    assert "default.yaml:3: defaults.confidence" in bad.stderr


def test_serve_refuses_an_invalid_policy(tmp_path: Path) -> None:
    write(tmp_path, "default.yaml", "defaults:\n  min_requests: 0\n")
    result = run(
        "serve", DATABASE_URL=f"sqlite:///{tmp_path}/x.db", ROLLBACK_POLICY_DIR=str(tmp_path)
    )
    assert result.returncode == 2
    assert "default.yaml:2: defaults.min_requests" in result.stderr
    assert "Traceback" not in result.stderr


def _rule(above: str, extra: str = "") -> str:
    return (
        "rules:\n  - name: x\n    metric: error_rate_pct\n"
        f"    above: {above}\n    severity: critical\n    action: rollback\n{extra}"
    )


def _other(metric: str, threshold: str, severity: str = "high", action: str = "page") -> str:
    return (
        f"rules:\n  - name: x\n    metric: {metric}\n    {threshold}\n"
        f"    severity: {severity}\n    action: {action}\n"
    )


WEAKENING = [
    # Values that would switch detection off, or make it fire on healthy traffic.
    (_rule(".nan"), "default.yaml:4: rules.0.above: must be a finite number"),
    (_rule(".inf"), "default.yaml:4: rules.0.above: must be a finite number"),
    (_rule("-1"), "rules.0: above: -1 is outside a percentage: 0 to below 100"),
    (_rule("100"), "rules.0: above: 100 is outside a percentage: 0 to below 100"),
    (_rule("'5'"), "default.yaml:4: rules.0.above: must be a number, not '5'"),
    (_rule("true"), "default.yaml:4: rules.0.above: must be a number, not True"),
    ("", "rules: no rule is enabled, so nothing would ever be detected"),
    ("defaults:\n  window: 5m\n", "rules: no rule is enabled"),
    (_rule("5", "    enabled: false\n"), "rules: no rule is enabled"),
    (_rule("5", "    enabled: 'no'\n"), "rules.0.enabled: must be true or false, not 'no'"),
    (
        _other("quality", "above: 0.5"),
        "rules.0: quality is a score where higher is better: use `below:`",
    ),
    (_other("quality", "below: 1.5"), "rules.0: below: 1.5 is outside a quality score"),
    (_other("error_rate_pct", "below: 5"), "`below:` is only for the quality score"),
    (_other("latency_p99_ms", "above: -5"), "rules.0: above: -5 is outside milliseconds"),
    (_other("latency_increase_pct", "above: 1.0e+400"), "rules.0.above: must be a finite number"),
    (_other("error_rate_pct", "above: 5", severity="none"), "severity must be medium, high"),
    (
        _other("error_rate_pct", "above: 5", action="insufficient_data"),
        "action must be observe, alert, page, rollback",
    ),
    (
        "new_version:\n  severity: critical\n  action: rollback\n  error_rate_pct: -1\n"
        "  duration: 0s\n",
        "default.yaml:4: new_version.error_rate_pct: Input should be greater than or equal to 0",
    ),
    (
        _other("error_rate_pct", "above: 5", severity="critical", action="page"),
        "rules.0: a critical rule rolls back: action must be rollback, not page",
    ),
    ("new_version:\n  severity: critical\n", "new_version: severity must be medium"),
    ("new_version:\n  action: page\n", "new_version: action must be observe, alert"),
    ("new_version:\n  duration: 0s\n", "new_version.duration: must be between 1m and 7d"),
    ("defaults:\n  window: 5\n", "default.yaml:2: defaults.window: give a unit: 5s, 5m or 5h"),
    ("defaults:\n  window: 5s\n", "defaults.window: must be between 10s and 24h (got 5s)"),
    ("defaults:\n  min_requests: 50.5\n", "defaults.min_requests: must be a whole number"),
    (
        "defaults:\n  min_requests: 1000000000\n",
        "defaults.min_requests: Input should be less than or equal to 100000",
    ),
    (
        "defaults:\n  auto_rollback: 'no'\n",
        "defaults.auto_rollback: must be true or false, not 'no'",
    ),
    (
        "defaults:\n  confidence: 0.5\n",
        "defaults.confidence: Input should be greater than or equal to 0.8",
    ),
    (
        "defaults:\n  verify_every: 30s\n  verify_for: 10s\n",
        "verify_for (10s) is shorter than verify_every (30s)",
    ),
    ("defaults:\n  on_persist: observe\n", "on_persist must be alert, page, rollback"),
    (
        "defaults:\n  window: 5m\n  window: 1m\n",
        "default.yaml:3: defaults.window: given twice (first on line 2); keep one",
    ),
    (
        _rule("5", "  - name: y\n    metric: error_rate_pct\n    above: 2\n    above: 3\n"),
        "default.yaml:10: rules.1.above: given twice (first on line 9)",
    ),
    (
        _rule("5", "prompts:\n  cs:\n    rules:\n      - name: x\n        above: -1\n"),
        "prompts.cs.rules: above: -1 is outside",
    ),
    (
        _rule("5", "prompts:\n  cs:\n    rules:\n      - name: x\n        enabled: false\n"),
        "prompts.cs.rules: every rule is disabled for this prompt",
    ),
    (
        # Checked with the defaults it overrides: alone, each value is fine. Accepted, it
        # would fail the checker's whole pass when the prompt is resolved.
        _rule("5", "prompts:\n  cs:\n    verify_for: 3s\n"),
        "prompts.cs: verify_for (3s) is shorter than verify_every (5s)",
    ),
    (
        _rule("5", "defaults:\n  verify_for: 20s\nprompts:\n  cs:\n    verify_every: 30s\n"),
        "prompts.cs: verify_for (20s) is shorter than verify_every (30s)",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [*INVALID, *WEAKENING])
def test_invalid_policies_name_file_line_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    write(tmp_path, "default.yaml", text)
    with pytest.raises(PolicyError) as info:
        load_policies(tmp_path)
    assert any(expected in problem for problem in info.value.problems), info.value.problems


def test_a_quality_floor_fires_below_it_and_only_below(tmp_path: Path) -> None:
    write(tmp_path, "default.yaml", _other("quality", "below: 0.6", "medium", "alert"))
    rule = load_policies(tmp_path).rules[0]
    assert rule.crossed(0.5) and not rule.crossed(0.6) and not rule.crossed(0.9)


def test_an_override_for_an_unregistered_prompt_is_warned_about(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/x.db"
    folder = tmp_path / "policies"
    folder.mkdir()
    write(folder, "default.yaml", _rule("5"))
    write(folder, "overrides.yaml", "prompts:\n  customer-suport:\n    window: 2m\n")
    added = run("prompts", "add", "customer-support", "v1", "--template", "hi", DATABASE_URL=db)
    assert added.returncode == 0, added.stderr
    checked = run("policy", "check", str(folder), DATABASE_URL=db)
    assert checked.returncode == 0  # a warning, not an error: the prompt may come later
    assert (
        "warning: " + str(folder / "overrides.yaml") + ":2: prompts.customer-suport: no prompt "
        "of that name is registered; a typo? (registered: customer-support)"
    ) in checked.stderr
    as_json = run("policy", "check", str(folder), "--json", DATABASE_URL=db)
    report = json.loads(as_json.stdout)
    assert report["ok"] is True and report["prompt_overrides"] == ["customer-suport"]
    assert "customer-suport" in report["warnings"][0]
