"""OFREP proven with OpenFeature's own providers: the Python SDK with
openfeature-provider-ofrep, and (when Node is installed) the Node server SDK with
@openfeature/ofrep-provider, evaluate prompts as flags against the bot served for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from sqlalchemy import Engine

from bot.api.app import create_app
from bot.config import Settings
from tests.conftest import API_TOKEN, make_prompt
from tests.live_kit import serving

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
NODE_DIR = Path(__file__).resolve().parent / "ofrep_node"


@pytest.fixture
def base(settings: Settings, engine: Engine) -> Iterator[str]:
    make_prompt(engine, name="cs", versions=("v1", "v2"))  # v2 serving
    with serving(create_app(settings, engine)) as url:
        yield url


def _client(base: str, token: str = API_TOKEN) -> OpenFeatureClient:
    api.set_provider(
        OFREPProvider(base, headers_factory=lambda: {"Authorization": f"Bearer {token}"}),
        domain=f"ofrep-{token[:4]}",
    )
    return api.get_client(domain=f"ofrep-{token[:4]}")


def _api(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers=AUTH, timeout=10)


def test_the_python_provider_sees_the_version_and_a_rollback_at_once(base: str) -> None:
    flags = _client(base)
    details = flags.get_string_details("cs", "fallback", EvaluationContext(targeting_key="u1"))
    assert (details.value, details.variant, details.reason) == ("v2", "v2", "STATIC")
    assert details.flag_metadata["revision"] == 2
    with _api(base) as bot:
        assert (
            bot.post("/api/rollback", json={"prompt": "cs", "target_version": "v1"}).status_code
            == 200
        )
        rolled_back = time.perf_counter()
    # The provider does not cache: the very next evaluation sees the rollback.
    assert flags.get_string_value("cs", "fallback", EvaluationContext(targeting_key="u1")) == "v1"
    assert time.perf_counter() - rolled_back < 1.0


def test_sticky_split_assignments_match_resolve(base: str) -> None:
    flags = _client(base)
    with _api(base) as bot:
        assert (
            bot.put("/api/prompts/cs/split", json={"split": {"v1": 30, "v2": 70}}).status_code
            == 200
        )
        seen = {}
        for user in (f"user-{i}" for i in range(60)):
            details = flags.get_string_details(
                "cs", "fallback", EvaluationContext(targeting_key=user)
            )
            assert details.reason == "SPLIT"
            seen[user] = details.value
            assert (
                seen[user]
                == bot.get("/api/prompts/cs/resolve", params={"key": user}).json()["version"]
            )
    assert set(seen.values()) == {"v1", "v2"}
    # Without a targeting key a split cannot be sticky: the provider is told so.
    missing = flags.get_string_details("cs", "fallback", EvaluationContext())
    assert missing.value == "fallback" and missing.error_code == ErrorCode.TARGETING_KEY_MISSING


def test_unknown_prompts_objects_and_tokens(base: str) -> None:
    flags = _client(base)
    unknown = flags.get_string_details("customer-suport", "fallback")
    assert unknown.value == "fallback" and unknown.error_code == ErrorCode.FLAG_NOT_FOUND
    assert "no prompt named 'customer-suport'" in (unknown.error_message or "")
    as_object = flags.get_object_value("cs:template", {})
    assert as_object == {"version": "v2", "template": "cs v2: {q}"}
    mismatch = flags.get_string_details("cs:template", "fallback")
    assert mismatch.value == "fallback" and mismatch.error_code == ErrorCode.TYPE_MISMATCH
    stranger = _client(base, token="x" * 32)
    refused = stranger.get_string_details("cs", "fallback")
    assert refused.value == "fallback" and refused.error_code == ErrorCode.GENERAL


def test_keys_no_route_can_take_get_ofrep_errors(client: TestClient) -> None:
    """A key holding "/" matches no route, and a GET no method: OFREP's error body, which
    OpenFeature's providers read, not the bot's own."""
    slashed = client.post("/ofrep/v1/evaluate/flags/team%2Fcs", json={"context": {}})
    assert slashed.status_code == 404
    assert slashed.json() == {
        "key": "team/cs",
        "errorCode": "FLAG_NOT_FOUND",
        "errorDetails": "no prompt named 'team/cs'",
    }
    wrong_method = client.get("/ofrep/v1/evaluate/flags/cs")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["errorCode"] == "GENERAL"
    assert client.get("/api/nothing-here").json()["error"] == "not_found"  # the bot's own


def test_bulk_evaluation_with_etag(client: TestClient, engine: Engine) -> None:
    make_prompt(engine, name="cs", versions=("v1", "v2"))
    make_prompt(engine, name="billing", versions=("v7",))
    body = {"context": {"targetingKey": "u1"}}
    first = client.post("/ofrep/v1/evaluate/flags", json=body)
    assert first.status_code == 200
    flags = {f["key"]: f for f in first.json()["flags"]}
    assert flags["cs"]["value"] == "v2" and flags["billing"]["value"] == "v7"
    etag = first.headers["etag"]
    same = client.post("/ofrep/v1/evaluate/flags", json=body, headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.content == b""
    client.post("/api/rollback", json={"prompt": "cs", "target_version": "v1"})
    changed = client.post("/ofrep/v1/evaluate/flags", json=body, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert {f["key"]: f["value"] for f in changed.json()["flags"]}["cs"] == "v1"
    bad = client.post("/ofrep/v1/evaluate/flags", content=b"{nope")
    assert bad.status_code == 400 and bad.json()["errorCode"] == "PARSE_ERROR"
    wrong = client.post("/ofrep/v1/evaluate/flags/cs", json={"context": []})
    assert wrong.status_code == 400 and wrong.json() == {
        "key": "cs",
        "errorCode": "INVALID_CONTEXT",
        "errorDetails": "context must be an object",
    }


@pytest.mark.skipif(
    shutil.which("node") is None and os.environ.get("CI") != "true",
    reason="Node.js is not installed",
)
def test_the_node_provider_agrees(base: str) -> None:
    if not (NODE_DIR / "node_modules" / "@openfeature" / "ofrep-provider").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--silent"],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )
    with _api(base) as bot:
        bot.put("/api/prompts/cs/split", json={"split": {"v1": 50, "v2": 50}})
        users = [f"user-{i}" for i in range(20)]
        expected = {
            u: bot.get("/api/prompts/cs/resolve", params={"key": u}).json()["version"]
            for u in users
        }
    done = subprocess.run(
        ["node", "evaluate.mjs", base, API_TOKEN, *users],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert {u: answers["split"][u]["value"] for u in users} == expected
    assert all(answers["split"][u]["reason"] == "SPLIT" for u in users)
    assert answers["unknown"]["errorCode"] == "FLAG_NOT_FOUND"
    assert answers["unknown"]["value"] == "fallback"
