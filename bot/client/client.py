"""PromptClient: cached routing kept fresh by Server-Sent Events, polling as the fallback."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import httpx

from bot.splits import choose

log = logging.getLogger(__name__)


class PromptUnavailable(LookupError):
    """The client never received this prompt and has no fallback template for it."""


@dataclass(frozen=True)
class PromptChoice:
    """The version and template to use for one request."""

    prompt: str
    version: str
    template: str
    revision: int  # -1 for a configured fallback


@dataclass(frozen=True)
class _Entry:
    revision: int
    split: dict[str, int] | None
    order: list[str]
    choices: dict[str, PromptChoice]
    active: PromptChoice | None


@dataclass
class ClientStats:
    """What the client has done, for the app's own metrics."""

    updates: int = 0
    stale_updates_ignored: int = 0
    stream_connects: int = 0
    polls: int = 0
    events_sent: int = 0
    events_dropped: int = 0
    events_rejected: int = 0
    clock_offset_s: float = 0.0  # how far this host's clock is behind the bot's (if > 2 s)
    last_update_at: float | None = None
    errors: list[str] = field(default_factory=list)


class PromptClient:
    """Serve prompt versions from memory; a rollback reaches it in well under a second.

    Args:
        base_url: the bot's URL, e.g. ``http://rollback-bot:8000``.
        token: an API token of the bot (``ROLLBACK_API_TOKEN`` or a named one).
        prompts: the prompts this app serves (all if None).
        fallbacks: template per prompt to use if the bot was never reachable.
        poll_interval: the longest wait between polls while the stream is down.
        flush_interval: how often recorded outcomes are sent.
        max_buffer: outcomes kept while the bot is unreachable; older ones are dropped.
        start: connect at once (otherwise call ``start()``).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        prompts: list[str] | None = None,
        fallbacks: Mapping[str, str] | None = None,
        poll_interval: float = 30.0,
        flush_interval: float = 1.0,
        max_buffer: int = 10_000,
        batch_size: int = 500,
        timeout: float = 5.0,
        start: bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.prompts = prompts
        self.fallbacks = dict(fallbacks or {})
        self.poll_interval, self.flush_interval = poll_interval, flush_interval
        self.batch_size = batch_size
        self.stats = ClientStats()
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, read=60.0),
            transport=transport,
        )
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._outbox: deque[dict[str, Any]] = deque(maxlen=max_buffer)
        self._unsent: tuple[str, list[dict[str, Any]]] | None = None  # a batch to send again
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._response: httpx.Response | None = None
        if start:
            self.start()

    # --- the request path ------------------------------------------------------------------

    def get(self, prompt: str, key: str | None = None) -> PromptChoice:
        """The version and template to use now; sticky per `key` under a traffic split."""
        entry = self._entries.get(prompt)
        if entry is not None:
            if entry.split is None and entry.active is not None:
                return entry.active
            if entry.split:
                return entry.choices[choose(prompt, entry.split, entry.order, key)]
        if prompt in self.fallbacks:
            return PromptChoice(prompt, "fallback", self.fallbacks[prompt], -1)
        raise PromptUnavailable(f"no routing received for {prompt!r} and no fallback configured")

    def record(
        self,
        prompt: str,
        version: str,
        *,
        error: bool,
        latency_ms: float,
        quality: float | None = None,
    ) -> None:
        """Queue one outcome for the bot's metrics; never blocks, drops the oldest when full."""
        if len(self._outbox) == self._outbox.maxlen:
            self.stats.events_dropped += 1
        event: dict[str, Any] = {
            "prompt": prompt,
            "version": version,
            "error": bool(error),
            "latency_ms": float(latency_ms),
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
        }
        if quality is not None:
            event["quality"] = float(quality)
        self._outbox.append(event)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Load the routing once (best effort), then keep it fresh in the background."""
        try:
            self._poll()
        except (httpx.HTTPError, ValueError) as exc:
            self._note(f"initial load failed: {exc}")
        for target, name in (
            (self._follow, "prompt-client-stream"),
            (self._flush_loop, "prompt-client-flush"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Send what is queued, stop the background threads, close connections."""
        self._stop.set()
        self._flush()
        if self._response is not None:
            self._hang_up(self._response)
            self._response.close()
        self._http.close()
        for thread in self._threads:
            thread.join(timeout=2)

    @staticmethod
    def _hang_up(response: httpx.Response) -> None:
        """Shut the stream's socket down: the stream thread's blocked read returns at once
        (closing the response from another thread does not wake it), and the server sees the
        client go instead of holding the stream open."""
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> PromptClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def wait_for(self, prompt: str, version: str, timeout: float = 5.0) -> bool:
        """Block until `prompt` serves `version` to everyone (for tests and scripts)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if self._serves_only(prompt, version):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)

    def _serves_only(self, prompt: str, version: str) -> bool:
        entry = self._entries.get(prompt)
        active = entry.active if entry is not None and entry.split is None else None
        return active is not None and active.version == version

    # --- keeping the cache fresh -----------------------------------------------------------

    def _apply(self, state: dict[str, Any]) -> None:
        prompt, revision = state["prompt"], int(state["revision"])
        choices = {
            label: PromptChoice(prompt, label, template, revision)
            for label, template in state["templates"].items()
        }
        entry = _Entry(
            revision,
            state.get("split"),
            list(state["order"]),
            choices,
            choices.get(state.get("active_version") or ""),
        )
        with self._lock:
            current = self._entries.get(prompt)
            if current is not None and current.revision >= revision:
                self.stats.stale_updates_ignored += 1  # an older update arriving late never wins
                return
            self._entries[prompt] = entry
        self.stats.updates += 1
        self.stats.last_update_at = time.monotonic()
        with self._changed:
            self._changed.notify_all()

    def _params(self) -> dict[str, str]:
        return {"prompts": ",".join(self.prompts)} if self.prompts else {}

    def _poll(self) -> None:
        answer = self._http.get("/api/routing", params=self._params())
        answer.raise_for_status()
        self.stats.polls += 1
        unknown = unquote(answer.headers.get("x-unknown-prompts", ""))
        if unknown:
            log.warning("prompt client: the server has no prompt named %s (a typo?)", unknown)
            self._note(f"the server has no prompt named {unknown}")
        for state in answer.json():
            self._apply(state)

    def _follow(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._stream()
                backoff = 0.5
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                self._note(f"stream: {exc}")
            if self._stop.is_set():
                return
            # The stream is down: poll so the app still catches up, then try the stream again.
            try:
                self._poll()
            except (httpx.HTTPError, ValueError) as exc:
                self._note(f"poll: {exc}")
            self._stop.wait(backoff * (1 + random.random() / 2))
            backoff = min(backoff * 2, self.poll_interval)

    def _stream(self) -> None:
        with self._http.stream("GET", "/api/stream", params=self._params()) as answer:
            self._response = answer
            answer.raise_for_status()
            self.stats.stream_connects += 1
            for data in _sse_data(answer.iter_lines()):
                if self._stop.is_set():
                    return
                self._apply(json.loads(data))

    # --- reporting outcomes ----------------------------------------------------------------

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_interval):
            self._flush()

    def _flush(self) -> None:
        while self._unsent is not None or self._outbox:
            if self._unsent is None:
                batch: list[dict[str, Any]] = []
                while self._outbox and len(batch) < self.batch_size:
                    batch.append(self._outbox.popleft())
                # Retried whole under the same id: the bot stores a batch once even when an
                # earlier try landed but its answer was lost.
                self._unsent = (uuid.uuid4().hex, batch)
            batch_id, batch = self._unsent
            # Our clock at sending: the bot corrects the events' times by how far it is off.
            sent_at = datetime.now(UTC).isoformat()
            try:
                answer = self._http.post(
                    "/api/events",
                    json={"batch_id": batch_id, "sent_at": sent_at, "events": batch},
                )
            except httpx.HTTPError as exc:
                self._note(f"events: {exc}")
                return  # kept for the next try
            if answer.status_code == 200:
                self.stats.events_sent += len(batch)
                self._check_clock(answer)
            elif answer.status_code in (401, 403, 413, 422):
                self.stats.events_rejected += len(batch)  # retrying would not help
                self._note(f"events refused: {answer.status_code} {answer.text[:200]}")
            else:
                return
            self._unsent = None

    def _check_clock(self, answer: httpx.Response) -> None:
        try:
            offset = float(answer.json().get("clock_offset_s") or 0.0)
        except (ValueError, AttributeError):
            return
        if offset and self.stats.clock_offset_s == 0.0:
            log.warning(
                "prompt client: this host's clock is %.1f s %s the bot's; the bot corrects the "
                "times of the outcomes it reports, but fix the clock (NTP)",
                abs(offset),
                "behind" if offset > 0 else "ahead of",
            )
        self.stats.clock_offset_s = offset

    def _note(self, error: str) -> None:
        log.debug("prompt client: %s", error)
        self.stats.errors = [*self.stats.errors[-19:], error]


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The `data:` payload of each Server-Sent Event (comments and other fields skipped)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
