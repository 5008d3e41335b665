"""On-call user groups: read once, then answered from the cache and refreshed in the background."""

from __future__ import annotations

import time

import pytest
from slack_sdk import WebClient

from bot.slack import oncall
from bot.slack.oncall import OnCall
from tests.slack_kit import FakeSlack


def _wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_stale_group_is_answered_at_once_and_refreshed_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FakeSlack(token="xoxb-t") as fake:
        fake.set_usergroup("S1", ["U1"])
        group = OnCall(
            users=frozenset(),
            usergroup="S1",
            client=WebClient(token="xoxb-t", base_url=fake.base_url),
        )
        assert group.members() == {"U1"}  # never read before: waits for Slack
        monkeypatch.setattr(oncall, "GROUP_TTL_S", 0.0)  # from now on every entry is stale
        fake.set_usergroup("S1", ["U2"])
        fake.set_delay(0.5)
        started = time.monotonic()
        assert group.members() == {"U1"}  # the cached answer, without waiting for Slack
        assert time.monotonic() - started < 0.2
        fake.set_delay(0.0)
        _wait(lambda: group.members() == {"U2"})


def test_slack_down_keeps_the_last_known_members(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeSlack(token="xoxb-t") as fake:
        fake.set_usergroup("S1", ["U1"])
        group = OnCall(
            users=frozenset(),
            usergroup="S1",
            client=WebClient(token="xoxb-t", base_url=fake.base_url),
        )
        assert group.members() == {"U1"}
        monkeypatch.setattr(oncall, "GROUP_TTL_S", 0.0)
        fake.set_down(True)
        calls = len(fake.calls)
        assert group.members() == {"U1"}
        _wait(lambda: len(fake.calls) > calls)  # the background read failed...
        time.sleep(0.1)
        assert group.members() == {"U1"}  # ...and on-call is not locked out
