"""How every Slack listener runs: ack at once, work later, errors answered in one place.

Listeners are module-level functions `work(deps, body, respond)` — callable from a test with
no HTTP and no Bolt, as in the Bolt starter template — registered as `deferred(work, deps)`
with Bolt's process-before-response mode: the listener Bolt calls acks from the request itself,
before any database or Slack call, and hands the work to the deps' work pool. (Bolt's own
lazy listeners would do the same but deep-copy the whole request, message blocks included,
for each one: most of the time a click takes before its ack.) `run_guarded` turns a known
error into a friendly ephemeral answer and logs an unknown one with an id the user can quote.
`@app.error` remains for errors raised before any listener runs; its answer goes through the
pool too, so a dispatch never waits on Slack.

Because every command and button listener is `deferred`, Bolt's dispatch of those requests
does no I/O and takes a fraction of a millisecond: `runs_inline` lets the HTTP endpoint run it
on the event loop instead of paying for a worker thread on every click. The rollback dialog's
listener does its rollback before answering (so a refusal shows in the dialog) and is
dispatched in a thread.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, Respond

from bot.errors import BotError

if TYPE_CHECKING:
    from bot.slack.deps import SlackDeps

log = logging.getLogger(__name__)

Work = Callable[[dict[str, Any], Respond], None]
Listener = Callable[["SlackDeps", dict[str, Any], Respond], None]


def deferred(work: Listener, deps: SlackDeps) -> Callable[..., None]:
    """A Bolt listener that acknowledges within Slack's 3 seconds, then runs `work` on the
    deps' work pool."""
    bound = partial(work, deps)

    def listener(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()
        deps.pool.submit(run_guarded, bound, body, respond)

    listener.__name__ = listener.__qualname__ = work.__name__  # how Bolt names it in its logs
    listener.deferred = True  # type: ignore[attr-defined]  # checked by tests: see runs_inline
    return listener


def runs_inline(body: dict[str, Any]) -> bool:
    """Whether dispatching this request only acks and queues work (slash commands and button
    clicks, whose listeners are all `deferred`), so it may run on the event loop."""
    return "command" in body or body.get("type") == "block_actions"


def run_guarded(work: Work, body: dict[str, Any], respond: Respond) -> None:
    """Run `work`, answering its errors with `answer`."""
    try:
        work(body, respond)
    except Exception as exc:  # the single place listener errors are turned into answers
        answer(exc, respond)


def answer(error: Exception, respond: Respond | None) -> None:
    """Tell the user what went wrong, ephemerally; log what we did not expect."""
    if isinstance(error, BotError):
        text = f":warning: {error.slack_text}"
    else:
        error_id = uuid.uuid4().hex[:12]
        log.error("slack handler failed, error id %s", error_id, exc_info=error)
        text = f":x: Something went wrong (error id `{error_id}`); nothing more was done."
    if respond is not None:
        respond(text=text, response_type="ephemeral", replace_original=False)


def register_error_handler(app: App, pool: Executor) -> None:
    """Attach the global error handler (errors outside listeners); the answer is sent from
    the pool, so the dispatch that failed (maybe on the event loop) does not wait for Slack."""

    @app.error
    def on_error(error: Exception, respond: Respond | None) -> None:
        try:
            pool.submit(answer, error, respond)
        except RuntimeError:  # the pool is shut down: the server is stopping
            answer(error, None)
