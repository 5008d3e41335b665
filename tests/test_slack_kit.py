"""The Slack test kit speaks Slack's protocol: real slack_sdk clients, a real Bolt app, over HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
import uvicorn
from slack_bolt import App
from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.models.blocks import ActionsBlock, ButtonElement, SectionBlock
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.slack_kit import (
    Call,
    FakeSlack,
    SlackSender,
    block_actions_body,
    sign,
    slash_command_body,
)

BOT_TOKEN = "xoxb-kit-test"
SECRET = "kit-signing-secret"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSlack]:
    with FakeSlack(token=BOT_TOKEN, usergroups={"S_ONCALL": ["U1", "U2"]}) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(fake: FakeSlack) -> None:
    fake.reset()


@pytest.fixture
def web(fake: FakeSlack) -> WebClient:
    return WebClient(token=BOT_TOKEN, base_url=fake.base_url, timeout=5)


def card(action_value: str = "rollback:42") -> list[Any]:
    """A small alert card with one button, built with slack_sdk's block classes."""
    return [
        SectionBlock(block_id="summary", text="*customer-support* v2.0.0 error rate 8%"),
        ActionsBlock(
            block_id="decide",
            elements=[
                ButtonElement(
                    text="Roll back", action_id="approve", value=action_value, style="danger"
                )
            ],
        ),
    ]


# -- Web API --------------------------------------------------------------------------------


def test_auth_test_answers_like_slack_and_checks_the_token(fake: FakeSlack, web: WebClient) -> None:
    answer = web.auth_test()
    assert answer["ok"] is True
    assert (answer["team_id"], answer["user_id"], answer["bot_id"]) == ("T1", "UBOT", "B1")
    assert answer["url"].startswith("https://") and answer["team"] and answer["user"]

    with pytest.raises(SlackApiError) as wrong:
        WebClient(token="xoxb-wrong", base_url=fake.base_url).auth_test()
    assert (wrong.value.response.status_code, wrong.value.response["error"]) == (
        200,
        "invalid_auth",
    )
    with pytest.raises(SlackApiError) as missing:
        WebClient(base_url=fake.base_url).auth_test()
    assert missing.value.response["error"] == "not_authed"
    assert [c.token for c in fake.calls_to("auth.test")] == [BOT_TOKEN, "xoxb-wrong", None]


def test_post_message_with_blocks_resolves_the_channel_and_keeps_the_thread(
    fake: FakeSlack, web: WebClient
) -> None:
    first = web.chat_postMessage(channel="#incidents", text="v2.0.0 is failing", blocks=card())
    reply = web.chat_postMessage(channel="C1", text="rolled back", thread_ts=first["ts"])

    assert first["channel"] == "C1" and reply["channel"] == "C1"
    assert first["ts"] < reply["ts"] and first["ts"].count(".") == 1
    assert len(first["ts"].split(".")[1]) == 6
    assert first["message"]["blocks"][1]["elements"][0]["action_id"] == "approve"
    posted = fake.calls_to("chat.postMessage")[0]
    assert posted.args["blocks"][1]["elements"][0]["value"] == "rollback:42"
    assert [m["text"] for m in fake.thread(first["ts"])] == ["v2.0.0 is failing", "rolled back"]
    assert fake.messages("C1")[1]["thread_ts"] == first["ts"]
    assert fake.message(first["ts"])["reply_count"] == 1

    with pytest.raises(SlackApiError) as unknown:
        web.chat_postMessage(channel="#nowhere", text="x")
    assert unknown.value.response["error"] == "channel_not_found"


def test_form_encoded_blocks_are_decoded_like_json_ones(fake: FakeSlack, web: WebClient) -> None:
    blocks = [block.to_dict() for block in card()]
    web.api_call(
        "chat.postMessage", data={"channel": "C1", "text": "t", "blocks": json.dumps(blocks)}
    )
    assert fake.calls_to("chat.postMessage")[0].args["blocks"] == blocks
    assert fake.messages("C1")[0]["blocks"] == blocks


def test_update_edits_the_stored_message_and_refuses_ephemerals(
    fake: FakeSlack, web: WebClient
) -> None:
    ts = web.chat_postMessage(channel="C1", text="pending", blocks=card())["ts"]
    updated = web.chat_update(channel="C1", ts=ts, text="rolled back by <@U1>", blocks=[])
    assert (updated["channel"], updated["ts"], updated["text"]) == (
        "C1",
        ts,
        "rolled back by <@U1>",
    )
    assert fake.message(ts)["blocks"] == [] and "edited" in fake.message(ts)

    with pytest.raises(SlackApiError) as missing:
        web.chat_update(channel="C1", ts="1600000000.000001", text="x")
    assert missing.value.response["error"] == "message_not_found"

    eph = web.chat_postEphemeral(channel="C1", user="U1", text="only you")
    with pytest.raises(SlackApiError) as ephemeral:
        web.chat_update(channel="C1", ts=eph["message_ts"], text="x")
    assert ephemeral.value.response["error"] == "cant_update_message"
    assert fake.ephemerals(user="U1")[0]["text"] == "only you"


def test_conversations_open_gives_each_user_a_stable_dm(web: WebClient) -> None:
    first = web.conversations_open(users="U1")
    again = web.conversations_open(users=["U1"])
    other = web.conversations_open(users="U2")
    assert first["channel"]["id"].startswith("D")
    assert again["channel"]["id"] == first["channel"]["id"] and again["already_open"] is True
    assert other["channel"]["id"] != first["channel"]["id"]
    assert web.chat_postMessage(channel="U1", text="hi")["channel"] == first["channel"]["id"]


def test_usergroups_and_users(fake: FakeSlack, web: WebClient) -> None:
    assert web.usergroups_users_list(usergroup="S_ONCALL")["users"] == ["U1", "U2"]
    with pytest.raises(SlackApiError) as unknown:
        web.usergroups_users_list(usergroup="S_NOPE")
    assert unknown.value.response["error"] == "no_such_subteam"

    user = web.users_info(user="U1")["user"]
    assert (user["id"], user["name"], user["real_name"], user["tz"]) == (
        "U1",
        "alice",
        "Alice",
        "Europe/Paris",
    )
    with pytest.raises(SlackApiError) as missing:
        web.users_info(user="U404")
    assert missing.value.response["error"] == "user_not_found"


def test_unknown_method(web: WebClient) -> None:
    with pytest.raises(SlackApiError) as unknown:
        web.api_call("nope.nothing")
    assert unknown.value.response["error"] == "unknown_method"


# -- faults ---------------------------------------------------------------------------------


def test_rate_limit_is_retried_by_the_sdk_handler(fake: FakeSlack) -> None:
    web = WebClient(
        token=BOT_TOKEN, base_url=fake.base_url, retry_handlers=[RateLimitErrorRetryHandler()]
    )
    fake.fail_next("chat.postMessage", 1, status=429, retry_after=0)
    assert web.chat_postMessage(channel="C1", text="after a 429")["ok"] is True

    limited, delivered = fake.calls_to("chat.postMessage")
    assert (limited.status, limited.fault, limited.faulted) == (429, "ratelimited", True)
    assert (delivered.status, delivered.faulted, delivered.ok) == (200, False, True)
    assert [m["text"] for m in fake.messages()] == ["after a 429"]


def test_rate_limit_without_handler_surfaces_retry_after(fake: FakeSlack, web: WebClient) -> None:
    fake.fail_next("chat.update", 1, retry_after=7)
    with pytest.raises(SlackApiError) as limited:
        web.chat_update(channel="C1", ts="1.0", text="x")
    assert limited.value.response.status_code == 429
    assert limited.value.response.headers["Retry-After"] == "7"
    assert limited.value.response["error"] == "ratelimited"


def test_server_error_surfaces_without_retry(fake: FakeSlack, web: WebClient) -> None:
    fake.fail_next("chat.postMessage", 1, status=502)
    with pytest.raises(SlackApiError) as failed:
        web.chat_postMessage(channel="C1", text="x")
    assert failed.value.response.status_code == 502
    assert [c.fault for c in fake.calls_to("chat.postMessage")] == ["http_502"]
    assert fake.messages() == []
    assert web.chat_postMessage(channel="C1", text="x")["ok"] is True  # only the next one failed


def test_outage_answers_503_or_drops_connections(fake: FakeSlack, web: WebClient) -> None:
    fake.set_down(True)
    with pytest.raises(SlackApiError) as down:
        web.auth_test()
    assert down.value.response.status_code == 503

    fake.set_down(True, close=True)
    with pytest.raises(OSError):  # RemoteDisconnected, after the default connection retry
        web.auth_test()
    assert [c.fault for c in fake.calls] == ["http_503", "connection_closed", "connection_closed"]

    fake.set_down(False)
    assert web.auth_test()["ok"] is True


def test_delay_makes_a_client_time_out(fake: FakeSlack) -> None:
    fake.set_delay(0.5)
    impatient = WebClient(token=BOT_TOKEN, base_url=fake.base_url, timeout=0.1)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        impatient.auth_test()
    assert time.monotonic() - started < 0.4
    slow = fake.wait_for(lambda calls: [c for c in calls if c.method == "auth.test"], timeout=2)
    assert slow[0].ok  # the server answered, after the client had given up


def test_wait_for_polls_until_the_predicate_holds(fake: FakeSlack, web: WebClient) -> None:
    later = threading.Timer(0.1, lambda: web.chat_postMessage(channel="C1", text="later"))
    later.start()
    posted: list[Call] = fake.wait_for(lambda calls: [c for c in calls if c.ok], timeout=2)
    assert posted[0].args["text"] == "later"
    with pytest.raises(AssertionError, match="chat.postMessage"):
        fake.wait_for(lambda calls: len(calls) > 5, timeout=0.05)


# -- inbound signing and bodies -------------------------------------------------------------


def test_signature_verifier_accepts_sign_and_rejects_forged_or_stale() -> None:
    verifier = SignatureVerifier(SECRET)
    body = slash_command_body(text="customer-support")
    assert verifier.is_valid_request(body, sign(body, SECRET))
    assert not verifier.is_valid_request(body, sign(body, "wrong"))
    assert not verifier.is_valid_request(body, sign(body, SECRET, int(time.time()) - 600))
    assert not verifier.is_valid_request(body + b"&x=1", sign(body, SECRET))


def test_slash_command_body_has_slacks_fields(fake: FakeSlack) -> None:
    form = {
        k: v[0] for k, v in parse_qs(slash_command_body(text="cs v1", slack=fake).decode()).items()
    }
    assert {
        "token",
        "team_id",
        "team_domain",
        "channel_id",
        "channel_name",
        "user_id",
        "user_name",
        "command",
        "text",
        "api_app_id",
        "response_url",
        "trigger_id",
    } <= form.keys()
    assert (form["command"], form["text"], form["user_id"]) == ("/rollback", "cs v1", "U1")
    assert form["response_url"].startswith(f"{fake.url}/response/")


def test_block_actions_body_has_slacks_shape(fake: FakeSlack, web: WebClient) -> None:
    ts = web.chat_postMessage(channel="C1", text="alert", blocks=card())["ts"]
    body = block_actions_body("approve", "rollback:42", "U2", ts, "C1", slack=fake)
    payload = json.loads(parse_qs(body.decode())["payload"][0])
    assert payload["type"] == "block_actions"
    assert payload["user"]["id"] == "U2" and payload["team"]["id"] == "T1"
    assert payload["container"] == {
        "type": "message",
        "message_ts": ts,
        "channel_id": "C1",
        "is_ephemeral": False,
    }
    assert payload["message"]["blocks"][1]["block_id"] == "decide"
    action = payload["actions"][0]
    assert (action["action_id"], action["block_id"], action["value"], action["type"]) == (
        "approve",
        "decide",
        "rollback:42",
        "button",
    )
    ephemeral = block_actions_body("approve", "v", "U2", ts, "C1", is_ephemeral=True)
    assert "message" not in json.loads(parse_qs(ephemeral.decode())["payload"][0])


def test_response_url_records_posts_and_refuses_the_sixth(fake: FakeSlack) -> None:
    url = fake.new_response_url(channel="C1", user="U1")
    hook = WebhookClient(url)
    assert hook.send(text="only you").status_code == 200
    assert hook.send(text="everyone", response_type="in_channel").status_code == 200
    assert [m["text"] for m in fake.ephemerals(user="U1")] == ["only you"]
    assert [m["text"] for m in fake.messages("C1")] == ["everyone"]
    for _ in range(3):
        hook.send(text="again")
    assert hook.send(text="sixth").status_code == 404
    assert len(fake.responses(url)) == 6


# -- a real Bolt app behind uvicorn ---------------------------------------------------------


class BoltServer:
    """A Bolt App served by uvicorn on a free port; the sync app is dispatched in a thread pool."""

    def __init__(self, app: App) -> None:
        async def events(request: Request) -> Response:
            body = await request.body()
            bolt_response = await run_in_threadpool(app.dispatch, to_bolt_request(request, body))
            return to_starlette_response(bolt_response)

        asgi = Starlette(routes=[Route("/slack/events", events, methods=["POST"])])
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/slack/events"
        self._server = uvicorn.Server(uvicorn.Config(asgi, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> BoltServer:
        self._thread.start()
        deadline = time.monotonic() + 5
        while not self._server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture(scope="module")
def bolt(fake: FakeSlack) -> Iterator[tuple[BoltServer, list[tuple[str, str, str]]]]:
    seen: list[tuple[str, str, str]] = []
    # Bolt takes the token from `client` (and warns that `token=` is unused when both are given).
    app = App(signing_secret=SECRET, client=WebClient(token=BOT_TOKEN, base_url=fake.base_url))

    @app.command("/rollback")
    def rollback(ack: Any, command: dict[str, str], respond: Any) -> None:
        ack(f"Rolling back {command['text']}")
        seen.append(("command", command["user_id"], command["text"]))
        respond(text=f"<@{command['user_id']}> rolled back {command['text']}")

    @app.action("approve")
    def approve(ack: Any, body: dict[str, Any], action: dict[str, str], client: WebClient) -> None:
        ack()
        user = body["user"]["id"]
        seen.append(("click", user, action["value"]))
        container = body["container"]
        client.chat_update(
            channel=container["channel_id"], ts=container["message_ts"], text=f"approved by {user}"
        )

    with BoltServer(app) as server:
        yield server, seen


@pytest.fixture
def sender(fake: FakeSlack, bolt: tuple[BoltServer, list[tuple[str, str, str]]]) -> SlackSender:
    bolt[1].clear()
    return SlackSender(bolt[0].url, SECRET, slack=fake)


def test_bolt_acks_a_signed_command_and_its_respond_reaches_the_fake(
    fake: FakeSlack, bolt: tuple[BoltServer, list[tuple[str, str, str]]], sender: SlackSender
) -> None:
    answer = sender.command("customer-support v1.9.0", user_id="U1")
    assert answer.status_code == 200
    assert answer.text == "Rolling back customer-support v1.9.0"  # ack(str) answers plain text
    fake.wait_for(lambda calls: any(c.method == "response_url" for c in calls))
    assert fake.responses()[0]["text"] == "<@U1> rolled back customer-support v1.9.0"
    assert bolt[1] == [("command", "U1", "customer-support v1.9.0")]


@pytest.mark.parametrize(
    "forgery",
    [{"secret": "wrong"}, {"timestamp": int(time.time()) - 600}, {"signed": False}],
    ids=["forged", "stale", "unsigned"],
)
def test_bolt_refuses_forged_stale_and_unsigned_requests(
    bolt: tuple[BoltServer, list[tuple[str, str, str]]],
    sender: SlackSender,
    forgery: dict[str, Any],
) -> None:
    answer = sender.command("customer-support", **forgery)
    assert answer.status_code == 401
    assert answer.json() == {"error": "invalid request"}
    assert bolt[1] == []


def test_bolt_action_listener_gets_the_clicking_user_and_value(
    fake: FakeSlack,
    web: WebClient,
    bolt: tuple[BoltServer, list[tuple[str, str, str]]],
    sender: SlackSender,
) -> None:
    ts = web.chat_postMessage(channel="#incidents", text="alert", blocks=card("rollback:42"))["ts"]
    answer = sender.click("approve", "rollback:42", "U2", ts, "C1")
    assert answer.status_code == 200
    fake.wait_for(lambda calls: any(c.method == "chat.update" for c in calls))
    assert bolt[1] == [("click", "U2", "rollback:42")]
    assert fake.message(ts)["text"] == "approved by U2"
