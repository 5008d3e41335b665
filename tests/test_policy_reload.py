"""The policy watcher: an edit of the files is picked up by itself, a broken one is refused."""

from __future__ import annotations

import time
from pathlib import Path

from bot.notify import LogNotifier, NoticeKind
from bot.policy import load_policies
from bot.policy.reload import PolicyReloader
from tests.reliability.kit import FAST_POLICY, wait_until, write_policy


def test_an_edit_is_applied_by_itself_and_a_broken_one_keeps_the_last_good(tmp_path: Path) -> None:
    folder = write_policy(tmp_path / "policies")
    policies = load_policies(folder)
    notifier = LogNotifier()
    reloader = PolicyReloader(
        directory=folder, policies=policies, notifier=notifier, poll_seconds=0.05
    )
    reloader.start()
    try:
        time.sleep(0.05)  # a different mtime from the first write, whatever the file system
        (folder / "default.yaml").write_text(
            FAST_POLICY.replace("defaults:\n", "defaults:\n  auto_rollback: false\n")
        )
        wait_until(lambda: not policies.defaults.auto_rollback, timeout=5, what="the edit")
        (folder / "default.yaml").write_text("defaults: {auto_rollback: true}\nrules: [oops")
        wait_until(lambda: notifier.sent, timeout=5, what="the rejection")
        assert [n.kind for n in notifier.sent] == [NoticeKind.POLICY_REJECTED]
        assert "default.yaml" in notifier.sent[0].text
        assert policies.defaults.auto_rollback is False  # the last good policy stays
        assert policies.for_prompt("customer-support").settings.auto_rollback is False
    finally:
        reloader.stop()
