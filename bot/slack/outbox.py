"""The durable Slack outbox: every message is a row, delivered once, retried until it lands.

Rows are delivered in id order per incident and per thread (a card before its updates and
replies, each reply after the one before it, even while an earlier one is being retried).
A row that threads under or updates another waits until that one has its `ts`, and goes out
as soon as it has. Slack's 429 answers are honoured with their Retry-After; 5xx, timeouts,
connection errors and a refused token back off exponentially up to `max_backoff` (5 s), for
as long as `give_up_after` (24 h): an outage of any realistic length delays messages, never
loses them. Only errors about the message itself (`channel_not_found`, `invalid_blocks`, ...)
give up at once. A row given up is logged as an error and counted in /metrics, and so are the
replies and edits that depended on it.
A post whose outcome is unknown (crash, timeout, 5xx) is looked for in Slack before it is sent
again (`bot.slack.posted`), so a lost answer does not show a message twice.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from sqlalchemy import Engine, func, update
from sqlmodel import Session, col, select

from bot.db import read_session, upsert_insert, write_session
from bot.errors import BotError
from bot.faults import failpoint
from bot.liveness import Loop
from bot.models import OutboxStatus, SlackOutbox, utcnow
from bot.runtime.claims import release, take
from bot.slack import posted
from bot.slack.awaiting import Awaiting
from bot.slack.blocks import PERMALINK
from bot.slack.status import TOKEN_REFUSED, SlackStatus
from bot.telemetry import SLACK_ERRORS, SLACK_GIVEN_UP

log = logging.getLogger(__name__)

BATCH = 20
CLAIM_FOR = timedelta(seconds=15)  # renewed before each message is sent
# Backoff after 5xx/timeouts stops growing here, so messages land within ~5 s of Slack's return.
MAX_BACKOFF_S = 5.0
GIVE_UP_AFTER = timedelta(hours=24)
CHART_UPLOAD = "files.upload"  # Slack's three-step file upload of a chart (cards.chart_under)
CHART_STEP = timedelta(minutes=1)
POSTS = frozenset({"chat.postMessage", "dm"})  # calls that add a message (an update does not)
# Errors about one message that no retry can fix. A refused token (`invalid_auth`, ...) is not
# one: every message waits until a person replaces the token, then all are delivered.
PERMANENT = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "missing_scope",
        "invalid_blocks",
        "msg_too_long",
        "message_not_found",
        "cant_update_message",
        "user_not_found",
        "no_text",
        "invalid_arguments",
    }
)


def enqueue(
    session: Session,
    *,
    key: str,
    method: str,
    payload: dict[str, Any],
    parent_key: str | None = None,
    incident_id: int | None = None,
) -> bool:
    """Queue a Slack call once per `key`; returns False when it was already queued."""
    insert = upsert_insert(session)
    result = session.execute(
        insert(SlackOutbox)
        .values(
            dedupe_key=key[:200],
            method=method,
            payload=payload,
            parent_key=parent_key,
            incident_id=incident_id,
            status=OutboxStatus.PENDING,
            attempts=0,
            next_attempt_at=utcnow(),
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(col(SlackOutbox.id))
    )
    # RETURNING yields a row only when the insert happened (rowcount is unreliable here).
    return result.first() is not None


def sent_message(session: Session, key: str) -> SlackOutbox | None:
    """The delivered row for `key` (with its channel and ts), if delivered."""
    row = session.exec(select(SlackOutbox).where(SlackOutbox.dedupe_key == key)).first()
    return row if row is not None and row.status == OutboxStatus.SENT else None


class OutboxWorker:
    """Delivers due rows from a background thread; `wake()` after enqueueing to send at once."""

    def __init__(
        self,
        *,
        engine: Engine,
        client: WebClient,
        clock: Callable[[], datetime] = utcnow,
        poll_seconds: float = 1.0,
        max_backoff: float = MAX_BACKOFF_S,
        give_up_after: timedelta = GIVE_UP_AFTER,
    ) -> None:
        self.engine, self.client, self.clock = engine, client, clock
        self.poll_seconds = poll_seconds
        self.max_backoff, self.give_up_after = max_backoff, give_up_after
        self.loop = Loop("slack-outbox", poll_seconds)
        self._dm_channels: dict[str, str] = {}
        self._channel_ids: dict[str, str] = {}  # "#name" -> id, from posts' answers
        self._images: dict[str, bytes] = {}  # charts drawn, by row, for their upload
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.awaiting = Awaiting(self._is_sent)  # answers waiting for a row to be posted
        self._thread: threading.Thread | None = None
        self.status: SlackStatus | None = None  # told of every call's outcome
        self.slack_down = False  # the last round stopped early: Slack did not answer

    def start(self) -> None:
        """Start the delivery thread."""
        self._thread = threading.Thread(target=self._run, name="slack-outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current round."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        """Deliver now rather than at the next poll."""
        self._wake.set()

    def when_sent(self, key: str, timeout: float, then: Callable[[bool], None]) -> None:
        """Call `then(True)` once the row `key` is posted, or `then(posted yet?)` after
        `timeout` seconds; no thread waits meanwhile (`then` must be quick)."""
        self.awaiting.add(key, timeout, then)

    def _is_sent(self, key: str) -> bool:
        with read_session(self.engine) as session:
            return sent_message(session, key) is not None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                while self.deliver_due() and not self.slack_down and not self._stop.is_set():
                    pass
            except BotError as exc:  # the database is unreachable: try again next poll
                log.warning("outbox round skipped: %s", exc.message)
                wait = self.poll_seconds
            except Exception as exc:  # any other fault: this thread must never die
                wait = self.loop.failed(exc)
            else:
                self.loop.ok()
                wait = self._idle_seconds()
            self._wake.wait(wait)
            self._wake.clear()

    def _idle_seconds(self) -> float:
        """Sleep until the next retry is due (a 0.5 s backoff waits 0.5 s), at most a poll."""
        try:
            with read_session(self.engine) as session:
                due = session.exec(
                    select(func.min(SlackOutbox.next_attempt_at)).where(
                        SlackOutbox.status == OutboxStatus.PENDING
                    )
                ).one()
        except BotError:
            return self.poll_seconds
        if due is None:
            return self.poll_seconds
        return max(0.02, min(self.poll_seconds, (due - self.clock()).total_seconds()))

    def deliver_due(self) -> int:
        """Deliver what is due now; returns how many rows were attempted. A round stops at
        the first sign that Slack is down (the rest keep their turn, with no attempt spent)."""
        rows = self._claim()
        if rows:
            failpoint("outbox.claimed")
        self.slack_down = False
        for done, row in enumerate(rows):
            if self._renew(row) and not self._deliver(row):
                self.slack_down = True
                self._release(rows[done + 1 :])
                return done + 1
        return len(rows)

    def _release(self, rows: list[SlackOutbox]) -> None:
        """Drop this worker's claims on `rows`, untried."""
        if not rows:
            return
        with write_session(self.engine) as session:
            for row in rows:
                if row.claimed_until is not None:
                    release(session, SlackOutbox, row.id, row.claimed_until)

    def _renew(self, row: SlackOutbox) -> bool:
        """Extend this worker's claim on `row` just before sending it; False if it lapsed and
        another worker took the row (a slow Slack can outlast a batch's claim)."""
        now = self.clock()
        until = now + CLAIM_FOR
        # From here until an answer is recorded, the post's outcome is unknown.
        doubt = (
            {"in_doubt_since": func.coalesce(col(SlackOutbox.in_doubt_since), now)}
            if row.method in POSTS
            else {}
        )
        with write_session(self.engine) as session:
            renewed = session.execute(
                update(SlackOutbox)
                .where(
                    col(SlackOutbox.id) == row.id,
                    col(SlackOutbox.claimed_until) == row.claimed_until,
                    col(SlackOutbox.status) == OutboxStatus.PENDING,
                )
                .values(claimed_until=until, **doubt)
                .execution_options(synchronize_session=False)
            )
        if renewed.rowcount != 1:  # type: ignore[attr-defined]
            return False
        row.claimed_until = until
        return True

    def _claim(self) -> list[SlackOutbox]:
        now = self.clock()
        with write_session(self.engine) as session:
            pending = session.exec(
                select(SlackOutbox)
                .where(SlackOutbox.status == OutboxStatus.PENDING)
                .order_by(col(SlackOutbox.id))
                .limit(500)
            ).all()
            blocked: set[str] = set()
            parents = {r.parent_key for r in pending if r.parent_key}
            settled = (
                list(
                    session.exec(
                        select(SlackOutbox).where(
                            col(SlackOutbox.dedupe_key).in_(parents),
                            SlackOutbox.status != OutboxStatus.PENDING,
                        )
                    )
                )
                if parents
                else []
            )
            sent = {r.dedupe_key: r for r in settled if r.status == OutboxStatus.SENT}
            lost = {r.dedupe_key for r in settled if r.status == OutboxStatus.FAILED}
            chosen: list[SlackOutbox] = []
            for row in pending:
                if row.parent_key in lost:  # its card or thread was given up: nothing to attach to
                    self._orphaned(session, row)
                    continue
                # One message at a time per incident and per thread (or edited message):
                # a later one never overtakes an earlier one that is still being retried.
                groups = {f"incident:{row.incident_id}", f"parent:{row.parent_key}"} - {
                    "incident:None",
                    "parent:None",
                }
                waiting = row.parent_key is not None and row.parent_key not in sent
                not_due = row.next_attempt_at > now or (
                    row.claimed_until is not None and row.claimed_until > now
                )
                # A chart never holds back the messages after it (it can be slow to draw, and
                # a card's update matters more than its picture).
                chart = row.method == CHART_UPLOAD
                if groups & blocked or waiting or not_due:
                    blocked |= set() if chart else groups
                    continue
                blocked |= set() if chart else groups
                if take(session, row, now=now, until=now + CLAIM_FOR):
                    if row.parent_key:
                        parent = sent[row.parent_key]
                        row.payload = {
                            **row.payload,
                            "_parent_channel": parent.channel,
                            "_parent_ts": parent.ts,
                        }
                    chosen.append(row)
                if len(chosen) >= BATCH:
                    break
            for row in chosen:
                session.expunge(row)
                row.claimed_until = now + CLAIM_FOR  # the claim's value, to renew it by
            return sorted(chosen, key=lambda r: r.method == CHART_UPLOAD)  # charts last

    def _orphaned(self, session: Session, row: SlackOutbox) -> None:
        log.error(
            "slack %s %s given up: the message it threads under or edits was given up",
            row.method,
            row.dedupe_key,
        )
        SLACK_GIVEN_UP.inc()
        session.execute(
            update(SlackOutbox)
            .where(col(SlackOutbox.id) == row.id, col(SlackOutbox.status) == OutboxStatus.PENDING)
            .values(status=OutboxStatus.FAILED, last_error="parent message given up")
            .execution_options(synchronize_session=False)
        )

    def _deliver(self, row: SlackOutbox) -> bool:
        """Send one row; False when Slack looks down (no answer, 5xx, 429, refused token)."""
        if row.method == CHART_UPLOAD and not self._drawn(row):
            return True  # given up: a chart that cannot be drawn never holds the outbox
        stage = "lookup"
        try:
            in_doubt = row.in_doubt_since is not None and row.method in POSTS
            found = self._found_in_slack(row) if in_doubt else None
            stage = "send"
            channel, ts = found if found is not None else self._call(row)
        except SlackApiError as exc:
            return self._failed(row, exc, refused=stage == "send")
        except (SlackClientError, OSError, TimeoutError) as exc:
            problem = f"{exc.__class__.__name__}: {exc}"
            if self.status is not None:
                self.status.saw_unreachable(problem)
            self._retry(row, problem, None)
            return False
        if self.status is not None:
            self.status.saw_ok()
        failpoint("outbox.sent")
        self._mark(
            row,
            status=OutboxStatus.SENT,
            channel=channel,
            ts=ts,
            sent_at=self.clock(),
            attempts=row.attempts + 1,
            last_error=None,
            in_doubt_since=None,
        )
        self.awaiting.delivered(row.dedupe_key)
        return True

    def _found_in_slack(self, row: SlackOutbox) -> tuple[str, str] | None:
        """(channel, ts) of this row's message if an attempt whose answer was lost posted it."""
        parent_ts = row.payload.get("_parent_ts")
        thread_ts = None if parent_ts is None else str(parent_ts)
        try:
            if thread_ts is not None:
                channel: str | None = str(row.payload.get("_parent_channel"))
            elif row.method == "dm":
                channel = self._dm_channel(str(row.payload["user"]))
            else:
                channel = self._channel_id(str(row.payload.get("channel", "")))
            if channel is None:
                log.warning("slack %s: last answer lost; channel not found", row.dedupe_key)
                return None
            ts = posted.find(self.client, key=row.dedupe_key, channel=channel, thread_ts=thread_ts)
        except SlackApiError as exc:
            error = str(exc.response.get("error") if exc.response.data else "")
            if error not in posted.CANNOT_SEARCH:
                raise
            log.warning("slack %s: last answer lost; search refused (%s)", row.dedupe_key, error)
            return None
        if ts is None:
            return None
        log.info("slack %s was posted (as %s) though its answer was lost", row.dedupe_key, ts)
        return channel, ts

    def _channel_id(self, channel: str) -> str | None:
        """The id of a channel given by id or "#name": learnt from earlier posts (this
        process's, then the rows already sent), else looked up by name in Slack."""
        if posted.is_conversation_id(channel):
            return channel
        if channel not in self._channel_ids:
            found = self._channel_of_sent_rows(channel) or posted.channel_by_name(
                self.client, channel
            )
            if found is None:
                return None
            self._channel_ids[channel] = found
        return self._channel_ids[channel]

    def _channel_of_sent_rows(self, channel: str) -> str | None:
        with read_session(self.engine) as session:
            sent = session.exec(
                select(SlackOutbox)
                .where(
                    SlackOutbox.status == OutboxStatus.SENT,
                    SlackOutbox.method == "chat.postMessage",
                    col(SlackOutbox.parent_key).is_(None),
                    col(SlackOutbox.channel).is_not(None),
                )
                .order_by(col(SlackOutbox.id).desc())
                .limit(posted.LOOKBACK)
            ).all()
        return next((r.channel for r in sent if r.payload.get("channel") == channel), None)

    def _dm_channel(self, user: str) -> str:
        if user not in self._dm_channels:  # a user's DM channel never changes: open it once
            opened = self.client.conversations_open(users=user)
            self._dm_channels[user] = opened["channel"]["id"]
        return self._dm_channels[user]

    def _call(self, row: SlackOutbox) -> tuple[str | None, str | None]:
        payload = {k: v for k, v in row.payload.items() if not k.startswith("_")}
        parent_channel = row.payload.get("_parent_channel")
        parent_ts = row.payload.get("_parent_ts")
        if row.method == "chat.update":
            answer = self.client.chat_update(
                channel=str(parent_channel), ts=str(parent_ts), **payload
            )
            return answer.get("channel"), answer.get("ts")
        if row.method == CHART_UPLOAD:
            return self._upload_chart(row)
        if row.method == "dm":
            payload["channel"] = self._dm_channel(payload.pop("user"))
        if row.payload.get("_link_to"):
            payload = self._with_permalink(payload, str(row.payload["_link_to"]))
        if parent_ts is not None:
            payload |= {"channel": parent_channel, "thread_ts": parent_ts}
        answer = self.client.chat_postMessage(**payload, metadata=posted.tag(row.dedupe_key))
        channel = answer.get("channel")
        if channel and not posted.is_conversation_id(payload["channel"]):
            self._channel_ids[payload["channel"]] = channel
        return channel, answer.get("ts")

    def _drawn(self, row: SlackOutbox) -> bool:
        """Draw the row's chart (kept for the upload); a chart that cannot be drawn is given
        up at once with the reason logged, never retried."""
        from bot.dashboard.charts import figure, png
        from bot.dashboard.data import chart_data

        payload = row.payload
        try:
            since = datetime.fromisoformat(str(payload["since"]))
            with read_session(self.engine) as session:
                chart = chart_data(session, int(payload["prompt_id"]), since, CHART_STEP)
            self._images[row.dedupe_key] = png(
                figure(str(payload["title"]), chart, dict(payload["limits"]))
            )
            return True
        except Exception as exc:  # a drawing bug must not stop Slack delivery
            log.exception("chart %s not drawn", row.dedupe_key)
            self._give_up(row, f"chart not drawn: {exc.__class__.__name__}: {exc}")
            return False

    def _upload_chart(self, row: SlackOutbox) -> tuple[str | None, str | None]:
        """Upload the drawn chart into the card's thread with slack_sdk's files_upload_v2
        (getUploadURLExternal, the upload, completeUploadExternal)."""
        payload = row.payload
        image = self._images.pop(row.dedupe_key)
        answer = self.client.files_upload_v2(
            content=image,
            filename=str(payload["filename"]),
            title=str(payload["title"]),
            alt_txt=str(payload["alt_txt"])[:1000],
            channel=str(payload["_parent_channel"]),
            thread_ts=str(payload["_parent_ts"]),
        )
        files = answer.get("files") or [{}]
        return str(payload["_parent_channel"]), str(files[0].get("id") or "")

    def _with_permalink(self, payload: dict[str, Any], key: str) -> dict[str, Any]:
        """`payload` with the permalink of the message `key` (sent before it: same incident)
        where it says PERMALINK; without one, the link's words stay as plain text."""
        with read_session(self.engine) as session:
            target = sent_message(session, key)
        link = None
        if target is not None and target.channel and target.ts:
            try:
                answer = self.client.chat_getPermalink(channel=target.channel, message_ts=target.ts)
                link = answer.get("permalink")
            except SlackApiError as exc:  # the DM still goes, without the link
                log.info("slack chat.getPermalink for %s: %s", key, exc.response.get("error"))
        text = json.dumps(payload)
        if link:
            text = text.replace(PERMALINK, json.dumps(str(link))[1:-1])
        else:
            text = re.sub(r"<" + re.escape(PERMALINK) + r"\|([^>]*)>", r"\1", text)
        return dict(json.loads(text))

    def _failed(self, row: SlackOutbox, exc: SlackApiError, *, refused: bool) -> bool:
        """Slack answered an error; `refused`: the answer was to the send itself, so a 429 or
        an `ok: false` proves it did not post (a 5xx proves nothing). False when the error
        says Slack as a whole is unusable now (5xx, 429, refused token)."""
        response = exc.response
        error = str(response.get("error") if response.data else response.status_code)
        SLACK_ERRORS.labels(row.method, error).inc()
        if self.status is not None:
            self.status.saw_error(error, status=response.status_code)
        if response.status_code == 429 or error == "ratelimited":
            self._retry(row, "ratelimited", _retry_after(response.headers), settled=refused)
            return False
        if response.status_code >= 500:
            self._retry(row, f"HTTP {response.status_code}: {error}", None)
            return False
        if error not in PERMANENT:
            self._retry(row, f"HTTP {response.status_code}: {error}", None, settled=refused)
            return error not in TOKEN_REFUSED
        self._give_up(row, error)
        return True

    def _retry(
        self, row: SlackOutbox, error: str, after: float | None, *, settled: bool = False
    ) -> None:
        attempts = row.attempts + 1
        if self.clock() - row.created_at >= self.give_up_after:
            self._give_up(
                row, f"{error} (still failing after {self.give_up_after}, {attempts} attempts)"
            )
            return
        backoff = min(2.0 ** min(attempts, 8) * 0.25, self.max_backoff)
        delay = after if after is not None else backoff
        log.info("slack %s %s: %s; retry in %.1f s", row.method, row.dedupe_key, error, delay)
        self._mark(
            row,
            attempts=attempts,
            last_error=error[:500],
            next_attempt_at=self.clock() + timedelta(seconds=delay),
            **({"in_doubt_since": None} if settled else {}),
        )

    def _give_up(self, row: SlackOutbox, error: str) -> None:
        log.error("slack %s %s given up: %s", row.method, row.dedupe_key, error)
        SLACK_GIVEN_UP.inc()
        self._mark(
            row, status=OutboxStatus.FAILED, attempts=row.attempts + 1, last_error=error[:500]
        )

    def _mark(self, row: SlackOutbox, **values: Any) -> None:
        """Record a delivery outcome and release the row's claim, if the claim is still ours
        (a worker paused past its claim must not overwrite the one that took the row over)."""
        with write_session(self.engine) as session:
            session.execute(
                update(SlackOutbox)
                .where(
                    col(SlackOutbox.id) == row.id,
                    col(SlackOutbox.claimed_until) == row.claimed_until,
                )
                .values(claimed_until=None, **values)
                .execution_options(synchronize_session=False)
            )


def _retry_after(headers: Any) -> float:
    """Seconds from a Retry-After header, whatever its case (1 s when absent or odd)."""
    for name, value in dict(headers or {}).items():
        if str(name).lower() == "retry-after":
            text = value[0] if isinstance(value, list) else value
            try:
                return max(float(text), 0.0)
            except (TypeError, ValueError):
                break
    return 1.0
