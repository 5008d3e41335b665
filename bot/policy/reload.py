"""Policies edited while `serve` runs: reloaded on SIGHUP and when the files change.

A reload validates the whole directory first, exactly as start-up does. A good edit replaces
the live policy set in place (every part of the server holds that one object, so the next
checker pass, verification check and Slack command use it). A broken edit changes nothing:
the last good policy stays in force, and the problems are logged, counted in /metrics and
posted to the incidents channel, so the person who made the edit learns that it did not apply.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bot.models import Severity
from bot.notify import Notice, NoticeKind, Notifier, deliver
from bot.policy.loader import PolicyError, load_policies
from bot.policy.schema import PolicySet
from bot.telemetry import POLICY_RELOADS

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(directory: Path) -> Fingerprint:
    """The policy files' names, sizes and modification times (a change in any is an edit)."""
    found = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            stat = path.stat()
        except OSError:
            continue  # removed while listed: the next look sees it gone
        found.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(found)


class PolicyReloader:
    """Watches ROLLBACK_POLICY_DIR and reloads `policies` in place on an edit or on request."""

    def __init__(
        self,
        *,
        directory: str | Path,
        policies: PolicySet,
        notifier: Notifier,
        accept: Callable[[PolicySet], str | None] = lambda _new: None,
        applied: Callable[[PolicySet], None] = lambda _new: None,
        poll_seconds: float = 2.0,
    ) -> None:
        self.directory = Path(directory)
        self.policies, self.notifier, self.accept = policies, notifier, accept
        self.applied = applied  # told of each policy put in force (warnings about it)
        self.poll_seconds = poll_seconds
        self._seen = fingerprint(self.directory)
        self._requested = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Watch the files in a background thread."""
        self._thread = threading.Thread(target=self._run, name="policy-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        self._requested.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def request(self) -> None:
        """Reload soon (from a signal handler: nothing here may block)."""
        self._requested.set()

    def reload(self, why: str) -> bool:
        """Validate the directory and, if it is good, put it in force; True when applied."""
        with self._lock:
            self._seen = fingerprint(self.directory)
            try:
                new = load_policies(self.directory)
                refusal = self.accept(new)
                if refusal is not None:
                    raise PolicyError([refusal])
            except PolicyError as exc:
                self._rejected(why, exc.problems)
                return False
            if new.prometheus != self.policies.prometheus:
                log.warning(
                    "policies reloaded (%s), but the prometheus: section changed: it takes "
                    "effect at the next restart",
                    why,
                )
            self.policies.adopt(new)
            POLICY_RELOADS.labels("applied").inc()
            log.info(
                "policies reloaded (%s): %d file(s), %d rule(s), %d prompt override(s)",
                why,
                len(new.files),
                len(new.rules),
                len(new.prompts),
            )
            self.applied(new)
            return True

    def _rejected(self, why: str, problems: list[str]) -> None:
        POLICY_RELOADS.labels("rejected").inc()
        shown = "\n".join(f"• {p}" for p in problems[:10])
        log.error("policy edit rejected (%s); the last good policy stays in force:\n%s", why, shown)
        digest = hashlib.sha256("\n".join(problems).encode()).hexdigest()[:16]
        deliver(
            self.notifier,
            Notice(
                kind=NoticeKind.POLICY_REJECTED,
                severity=Severity.HIGH,
                title="Policy edit rejected: the last good policy stays in force",
                text=f"{shown}\nFix the file(s) in ROLLBACK_POLICY_DIR; `rollback-bot policy "
                "check` shows the same problems.",
                key=f"policy-rejected:{digest}",  # one post for all replicas seeing the edit
            ),
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            requested = self._requested.wait(self.poll_seconds)
            if self._stop.is_set():
                return
            self._requested.clear()
            try:
                if requested:
                    self.reload("SIGHUP")
                elif fingerprint(self.directory) != self._seen:
                    time.sleep(0.2)  # let an editor finish writing (save = truncate + write)
                    self.reload("the files changed")
            except Exception:  # the watcher must outlive anything a reload runs into
                log.exception("policy reload failed; the last good policy stays in force")
