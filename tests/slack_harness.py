"""The bot's server with its Slack app, on real HTTP, talking to a FakeSlack."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from bot.api.app import create_app
from bot.config import load_settings
from bot.policy import load_policies
from bot.slack.app import SlackService
from tests.conftest import API_TOKEN
from tests.live_kit import serving
from tests.slack_kit import FakeSlack, SlackSender
from tests.socket_kit import FakeSocketMode, socket_mode

BOT_TOKEN = "xoxb-test-token-0123456789"
SIGNING_SECRET = "test-signing-secret-0123456789"
POLICIES = Path(__file__).resolve().parent.parent / "policies"


@dataclass
class Harness:
    fake: FakeSlack
    sender: SlackSender
    service: SlackService
    base_url: str
    socket: FakeSocketMode | None = None  # with slack_app_token: Slack's Socket Mode endpoint

    def card(self, incident_id: int) -> dict:
        """The incident's card message as Slack shows it now."""
        for message in self.fake.messages("C1"):
            if f"Incident #{incident_id}" in str(message.get("blocks")):
                return message
        raise AssertionError(f"no card for incident #{incident_id}")


@contextmanager
def running(
    engine: Engine,
    db_url: str,
    policy_dir: Path = POLICIES,
    signing_secret: str | None = SIGNING_SECRET,
    refuse_app_token: bool = False,
    **overrides: str,
) -> Iterator[Harness]:
    """FakeSlack, then the bot's server (API + Slack app + outbox) on a free port."""
    channels = {"incidents": "C1", "cs-incidents": "C2"}
    with (
        FakeSlack(token=BOT_TOKEN, users={"U2": {"name": "bob"}}, channels=channels) as fake,
        ExitStack() as stack,
    ):
        app_token = overrides.get("slack_app_token")
        # refuse_app_token: Slack knows a different app-level token than the bot was given.
        accepted = "xapp-1-A1-not-the-bots-token-0123" if refuse_app_token else app_token
        socket = stack.enter_context(socket_mode(fake, accepted)) if accepted else None
        settings = load_settings(
            database_url=db_url,
            rollback_api_token=API_TOKEN,
            slack_bot_token=BOT_TOKEN,
            slack_signing_secret=signing_secret,
            slack_api_url=fake.base_url,
            **{"slack_oncall_users": "U1", **overrides},
        )
        service = SlackService(settings=settings, engine=engine, policies=load_policies(policy_dir))
        service.worker.poll_seconds = 0.2
        app = create_app(settings, engine, slack=service)
        with serving(app) as base:
            yield Harness(
                fake,
                SlackSender(f"{base}/slack/events", SIGNING_SECRET, slack=fake),
                service,
                base,
                socket,
            )
