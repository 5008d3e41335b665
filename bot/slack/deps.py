"""What the Slack listeners need, built once at start-up."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import timedelta

from slack_sdk import WebClient
from sqlalchemy import Engine

from bot.config import Settings
from bot.errors import NotAuthorized
from bot.policy import PolicySet
from bot.slack.oncall import OnCall
from bot.slack.outbox import OutboxWorker


@dataclass(frozen=True)
class SlackDeps:
    """The engine, settings, policies, on-call list, outbox worker and the listeners' work pool."""

    engine: Engine
    settings: Settings
    policies: PolicySet
    oncall: OnCall
    worker: OutboxWorker
    pool: Executor  # runs each listener's work after its ack
    client: WebClient  # calls a listener makes itself (views.open): with Slack's retries

    def channel(self, prompt: str) -> str:
        """Where `prompt`'s incidents and announcements go (its policy may route it)."""
        routed = self.policies.for_prompt(prompt).settings.slack_channel
        return routed or self.settings.slack_incidents_channel

    def group(self, prompt: str) -> str | None:
        """The prompt's own on-call user group, if its policy names one."""
        return self.policies.for_prompt(prompt).settings.oncall_usergroup

    @property
    def dedup_window(self) -> timedelta:
        """How long an untargeted rollback counts as a duplicate of the previous one."""
        return timedelta(seconds=self.settings.rollback_dedup_seconds)

    def quiet_for(self, prompt: str) -> timedelta:
        """How long "Investigate" silences new alerts for an incident of `prompt`."""
        return self.policies.for_prompt(prompt).settings.quiet

    def authorize(self, user: str, prompt: str) -> None:
        """Raise NotAuthorized unless `user` is on call for `prompt` (the one check every
        command and button that changes something goes through)."""
        if not self.oncall.allowed(user, self.group(prompt)):
            raise NotAuthorized(self.refusal())

    def refusal(self) -> str:
        """Why a user who is not on call cannot act."""
        if not self.oncall.configured:
            return "nobody is on call yet: set SLACK_ONCALL_USERS or SLACK_ONCALL_USERGROUP"
        return "only on-call engineers may do this; ask the on-call person"
