"""Sign in with Slack on the dashboard: OpenID Connect's code flow against a stand-in of
Slack's authorize page and `openid.connect.token` (called by slack_sdk's WebClient), over real
HTTP; only on-call people of the bot's workspace get a session, and Slack names them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import Engine

from bot import registry
from bot.db import read_session
from bot.people import by
from tests.conftest import make_prompt
from tests.slack_harness import Harness, running
from tests.slack_kit import FakeSlack


@pytest.fixture
def harness(engine: Engine, db_url: str) -> Iterator[Harness]:
    client_id, secret = FakeSlack().oidc_client
    with running(engine, db_url, slack_client_id=client_id, slack_client_secret=secret) as h:
        yield h


def _through_slack(h: Harness, browser: httpx.Client) -> httpx.Response:
    """What a browser does: the bot's button, Slack's authorize page, back to the bot."""
    to_slack = browser.get("/ui/sign-in/slack")
    assert to_slack.status_code == 303
    query = parse_qs(urlsplit(to_slack.headers["location"]).query)
    authorize = h.fake.base_url.removesuffix("/").removesuffix("/api") + "/openid/connect/authorize"
    assert to_slack.headers["location"].startswith(f"{authorize}?")
    assert query["scope"] == ["openid profile"] and query["response_type"] == ["code"]
    assert query["client_id"] == [h.fake.oidc_client[0]] and query["nonce"][0]
    assert query["redirect_uri"] == [f"{h.base_url}/ui/sign-in/slack/callback"]
    back = httpx.get(to_slack.headers["location"], follow_redirects=False)
    assert back.status_code == 302
    return browser.get(back.headers["location"])


def test_an_on_call_engineer_signs_in_with_slack_and_is_named_in_what_they_do(
    harness: Harness, engine: Engine
) -> None:
    make_prompt(engine)  # v2.0.0 serving
    harness.fake.wait_for(lambda _calls: harness.service.status.team_id == "T1")  # auth.test
    with httpx.Client(base_url=harness.base_url, follow_redirects=False) as browser:
        page = browser.get("/ui/sign-in").text
        assert 'href="/ui/sign-in/slack"' in page
        signed_in = _through_slack(harness, browser)
        assert (signed_in.status_code, signed_in.headers["location"]) == (303, "/ui")
        [token_call] = harness.fake.calls_to("openid.connect.token")
        assert token_call.args["code"] and "client_secret" not in token_call.args  # Basic auth
        overview = browser.get("/ui")
        assert overview.status_code == 200 and "Signed in as <strong>@U1</strong>" in overview.text
        page = browser.get("/ui/prompts/customer-support").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        done = browser.post(
            "/ui/prompts/customer-support/rollback",
            data={"csrf": csrf, "target": "v1.9.0", "expected_version": "v2.0.0"},
            follow_redirects=True,
        )
        assert "Rolled back v2.0.0 → v1.9.0." in done.text
    with read_session(engine) as session:
        [latest, *_] = registry.history(session=session, name="customer-support")
    assert (latest.operator, latest.trigger.value) == ("<@U1>", "dashboard")
    # What Slack is told about it names the person (Slack shows <@U1> as @alice).
    assert by(latest.operator, latest.trigger) == "by <@U1> from the dashboard"


@pytest.mark.parametrize(
    ("who", "team", "refusal"),
    [
        ("U2", None, "Only on-call engineers"),  # in the workspace, not on call
        ("U1", "T9", "in another workspace than the bot"),
    ],
)
def test_slack_sign_in_refuses_who_may_not_act(
    harness: Harness, who: str, team: str | None, refusal: str
) -> None:
    harness.fake.oidc_user, harness.fake.oidc_team = who, team
    harness.fake.wait_for(lambda _calls: harness.service.status.team_id == "T1")
    with httpx.Client(base_url=harness.base_url, follow_redirects=False) as browser:
        answer = _through_slack(harness, browser)
        assert answer.status_code == 401 and refusal in answer.text
        assert "rollback_bot_session" not in browser.cookies
        assert browser.get("/ui").headers["location"] == "/ui/sign-in"


def test_a_replayed_or_forged_callback_gives_no_session(harness: Harness) -> None:
    with httpx.Client(base_url=harness.base_url, follow_redirects=False) as browser:
        to_slack = browser.get("/ui/sign-in/slack")
        back = httpx.get(to_slack.headers["location"], follow_redirects=False)
        callback = back.headers["location"]
        forged_state = re.sub(r"state=[^&]+", "state=forged", callback)
        refused = browser.get(forged_state)
        assert refused.status_code == 401 and "expired or was replayed" in refused.text
        assert "rollback_bot_session" not in browser.cookies
        assert browser.get(callback).status_code == 303  # the genuine one, once
    with httpx.Client(base_url=harness.base_url, follow_redirects=False) as other:
        replayed = other.get(callback)  # another browser (no state cookie) replays the URL
        assert replayed.status_code == 401 and "not started here" in replayed.text
        assert "rollback_bot_session" not in other.cookies
