"""Finding a message the outbox may already have posted.

Slack's Web API has no idempotency key: when a post's outcome is unknown (the process died
after sending it, the answer timed out, Slack answered 5xx), posting again could show the
message twice. So every post carries message metadata naming its outbox row, and before a post
in doubt is sent again its channel (or thread) is searched for that name.
"""

from __future__ import annotations

import re
from typing import Any

from slack_sdk import WebClient

EVENT_TYPE = "rollback_bot_outbox"
# Messages searched: a post in doubt is retried within seconds, so it is among the newest.
LOOKBACK = 200
# Answers meaning "this token may not search here": post anyway, as before the lookup existed.
CANNOT_SEARCH = frozenset(
    {
        "missing_scope",
        "not_in_channel",
        "channel_not_found",
        "thread_not_found",
        "not_allowed_token_type",
    }
)
_CONVERSATION_ID = re.compile(r"^[CGD][A-Z0-9]+$")


def tag(key: str) -> dict[str, Any]:
    """The metadata that marks a post as the outbox row `key`."""
    return {"event_type": EVENT_TYPE, "event_payload": {"key": key}}


def is_conversation_id(channel: str) -> bool:
    """Whether `channel` is an id the history methods accept (not a "#name")."""
    return bool(_CONVERSATION_ID.match(channel))


def channel_by_name(client: WebClient, name: str) -> str | None:
    """The id of the channel called `name` ("#incidents" or "incidents"), if the bot sees it."""
    wanted = name.removeprefix("#")
    cursor = None
    for _ in range(20):  # 20 pages of 1,000 channels; workspaces larger than that use ids
        answer = client.conversations_list(
            types="public_channel,private_channel",
            exclude_archived=True,
            limit=1000,
            cursor=cursor,
        )
        for channel in answer.get("channels") or []:
            if channel.get("name") == wanted:
                return str(channel["id"])
        cursor = (answer.get("response_metadata") or {}).get("next_cursor")
        if not cursor:
            return None
    return None


def find(client: WebClient, *, key: str, channel: str, thread_ts: str | None) -> str | None:
    """The ts of the message tagged `key` among the newest in `channel` (or the thread)."""
    if thread_ts is not None:
        answer = client.conversations_replies(
            channel=channel, ts=thread_ts, include_all_metadata=True, limit=LOOKBACK
        )
    else:
        answer = client.conversations_history(
            channel=channel, include_all_metadata=True, limit=LOOKBACK
        )
    for message in answer.get("messages") or []:
        metadata = message.get("metadata") or {}
        payload = metadata.get("event_payload") or {}
        if metadata.get("event_type") == EVENT_TYPE and payload.get("key") == key:
            return str(message["ts"])
    return None
