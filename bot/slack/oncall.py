"""Who may act on incidents: SLACK_ONCALL_USERS and the members of SLACK_ONCALL_USERGROUP."""

from __future__ import annotations

import logging
import threading
import time

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

log = logging.getLogger(__name__)

GROUP_TTL_S = 300.0  # usergroups.users.list is tier 2: cache it


class OnCall:
    """Answers "may this user act?" and "whom do we page?", caching the user group."""

    def __init__(self, *, users: frozenset[str], usergroup: str, client: WebClient) -> None:
        self.users, self.usergroup, self.client = users, usergroup, client
        self._members: frozenset[str] = frozenset()
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        """Whether anyone at all is on call."""
        return bool(self.users or self.usergroup)

    def members(self) -> frozenset[str]:
        """Everyone on call now (listed users and the group's members)."""
        return self.users | self._group()

    def allowed(self, user_id: str) -> bool:
        """Whether `user_id` may roll back or investigate."""
        return user_id in self.users or user_id in self._group()

    def _group(self) -> frozenset[str]:
        if not self.usergroup:
            return frozenset()
        with self._lock:
            if time.monotonic() - self._fetched_at < GROUP_TTL_S:
                return self._members
            try:
                answer = self.client.usergroups_users_list(usergroup=self.usergroup)
                self._members = frozenset(answer.get("users") or [])
                self._fetched_at = time.monotonic()
            except (SlackApiError, SlackClientError, OSError) as exc:
                # Keep the last known members: a Slack hiccup must not lock on-call out.
                log.warning("could not read user group %s: %s", self.usergroup, exc)
            return self._members
