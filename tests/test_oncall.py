"""On-call user groups: read once, then answered from the cache and refreshed in the background."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from slack_sdk import WebClient

from bot.slack import oncall
from bot.slack.oncall import OnCall
from tests.reliability.kit import wait_until
from tests.slack_kit import FakeSlack


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack(token="xoxb-t") as slack:
        slack.set_usergroup("S1", ["U1"])
        yield slack


@pytest.fixture
def group(fake: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> OnCall:
    """S1, read once (a group never read before waits for Slack); every entry stale after."""
    on_call = OnCall(
        users=frozenset(), usergroup="S1", client=WebClient(token="xoxb-t", base_url=fake.base_url)
    )
    assert on_call.members() == {"U1"}
    monkeypatch.setattr(oncall, "GROUP_TTL_S", 0.0)
    return on_call


def test_a_stale_group_is_answered_at_once_and_refreshed_behind(
    fake: FakeSlack, group: OnCall
) -> None:
    fake.set_usergroup("S1", ["U2"])
    fake.set_delay(0.5)
    started = time.monotonic()
    assert group.members() == {"U1"}  # the cached answer, without waiting for Slack
    assert time.monotonic() - started < 0.2
    fake.set_delay(0.0)
    wait_until(lambda: group.members() == {"U2"}, timeout=5, what="the background refresh")


def test_slack_down_keeps_the_last_known_members(fake: FakeSlack, group: OnCall) -> None:
    fake.set_down(True)
    calls = len(fake.calls)
    assert group.members() == {"U1"}
    wait_until(lambda: len(fake.calls) > calls, timeout=5, what="the background read to fail")
    time.sleep(0.1)
    assert group.members() == {"U1"}  # the read failed; on-call is not locked out
