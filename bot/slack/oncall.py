"""Who may act on incidents and who is paged: SLACK_ONCALL_USERS, SLACK_ONCALL_USERGROUP, and a
prompt's own `oncall_usergroup` from its policy. User groups are read and cached."""

from __future__ import annotations

import logging
import threading
import time

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

log = logging.getLogger(__name__)

GROUP_TTL_S = 300.0  # usergroups.users.list is tier 2: cache it
FAILED_RETRY_S = 30.0


class OnCall:
    """Answers "may this user act?" and "whom do we page?", caching user groups."""

    def __init__(self, *, users: frozenset[str], usergroup: str, client: WebClient) -> None:
        self.users, self.usergroup, self.client = users, usergroup, client
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()
        self._refreshing: set[str] = set()

    @property
    def configured(self) -> bool:
        """Whether anyone at all is on call."""
        return bool(self.users or self.usergroup)

    def members(self, group: str | None = None) -> frozenset[str]:
        """Everyone on call (listed users, the global group, and `group` if the prompt has one)."""
        found = self.users | self._group(self.usergroup)
        return found | self._group(group) if group else found

    def allowed(self, user_id: str, group: str | None = None) -> bool:
        """Whether `user_id` may roll back or investigate (for a prompt routed to `group`)."""
        return user_id in self.members(group)

    def _group(self, group: str) -> frozenset[str]:
        """Cached members; a stale entry is answered at once and refreshed in the background.

        Only a group never read before waits for Slack, so a rollback that pages on-call never
        holds its transaction on a slow or unreachable Slack for long.
        """
        if not group:
            return frozenset()
        with self._lock:
            cached = self._groups.get(group)
            if cached is not None:
                fetched_at, members = cached
                if time.monotonic() - fetched_at >= GROUP_TTL_S and group not in self._refreshing:
                    self._refreshing.add(group)
                    threading.Thread(target=self._refresh, args=(group,), daemon=True).start()
                return members
        self._refresh(group)
        with self._lock:
            return self._groups.get(group, (0.0, frozenset()))[1]

    def _refresh(self, group: str) -> None:
        try:
            answer = self.client.usergroups_users_list(usergroup=group)
            found: frozenset[str] | None = frozenset(answer.get("users") or [])
        except (SlackApiError, SlackClientError, OSError) as exc:
            # Keep the last known members: a Slack hiccup must not lock on-call out.
            log.warning("could not read user group %s: %s", group, exc)
            found = None
        with self._lock:
            self._refreshing.discard(group)
            _, previous = self._groups.get(group, (0.0, frozenset()))
            # A failed read is tried again after FAILED_RETRY_S rather than on every call.
            fetched_at = time.monotonic() - (GROUP_TTL_S - FAILED_RETRY_S if found is None else 0)
            self._groups[group] = (fetched_at, previous if found is None else found)
