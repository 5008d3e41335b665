"""Fail points: how ROLLBACK_FAILPOINTS is read (the kills themselves: tests/reliability/)."""

from __future__ import annotations

import signal

import pytest

from bot.faults import _parse


def test_names_visit_numbers_and_actions() -> None:
    assert _parse("rollback.committed, verify.checked@2, rollout.judged@3:stop,") == {
        "rollback.committed": (1, signal.SIGKILL),
        "verify.checked": (2, signal.SIGKILL),
        "rollout.judged": (3, signal.SIGSTOP),
    }
    assert _parse("") == {}


@pytest.mark.parametrize(
    "bad", ["verify.checked@", "verify.checked@0", "verify.checked@x", "@2", "x:pause", ":stop"]
)
def test_a_malformed_entry_is_not_armed_and_is_named(
    bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert _parse(f"{bad},rollback.committed") == {"rollback.committed": (1, signal.SIGKILL)}
    assert repr(bad) in caplog.text and "ROLLBACK_FAILPOINTS" in caplog.text
