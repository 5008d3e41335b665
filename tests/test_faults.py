"""Fail points: how ROLLBACK_FAILPOINTS is read (the kills themselves: tests/reliability/)."""

from __future__ import annotations

import pytest

from bot.faults import _parse


def test_names_and_visit_numbers() -> None:
    assert _parse("rollback.committed, verify.checked@2,") == {
        "rollback.committed": 1,
        "verify.checked": 2,
    }
    assert _parse("") == {}


@pytest.mark.parametrize("bad", ["verify.checked@", "verify.checked@0", "verify.checked@x", "@2"])
def test_a_malformed_entry_is_not_armed_and_is_named(
    bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert _parse(f"{bad},rollback.committed") == {"rollback.committed": 1}
    assert repr(bad) in caplog.text and "ROLLBACK_FAILPOINTS" in caplog.text
