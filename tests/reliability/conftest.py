"""Fixtures of the reliability suite, and the summary of its figures at the end of the run."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.reliability.kit import FIGURES, Bot, new_slack, secrets_in, write_policy
from tests.slack_kit import FakeSlack


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with new_slack() as fake:
        yield fake


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return write_policy(tmp_path / "policies")


@pytest.fixture
def make_bot(
    db_url: str, slack: FakeSlack, policy_dir: Path, tmp_path: Path
) -> Iterator[Callable[..., Bot]]:
    """Makes (unstarted) bots on the test's database, Slack and policies; at the end all are
    killed and their logs checked for secrets."""
    made: list[Bot] = []

    def make(name: str, *, url: str | None = None, policies: Path | None = None) -> Bot:
        bot = Bot(name, url or db_url, slack, policies or policy_dir, tmp_path / "logs")
        made.append(bot)
        return bot

    yield make
    for bot in made:
        bot.kill()
    leaked = {bot.name: secrets_in(bot.log_file) for bot in made}
    assert not any(leaked.values()), f"secrets in server logs: {leaked}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for scenario, figures in sorted(FIGURES.items()):
        shown = ", ".join(f"{k}={v}" for k, v in figures.items())
        terminalreporter.write_line(f"{scenario}: {shown}")
    report = os.environ.get("RELIABILITY_REPORT")
    if report:
        Path(report).write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")
