"""The dashboard: sign-in, pages drawn from the real figures, a rollback through the
lifecycle, live updates. The browser tests drive Debian's chromium (headless) through
chromium-driver with Selenium, and save a screenshot of each page under test-artifacts/."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import select

from bot import registry
from bot.api.app import create_app
from bot.config import Settings
from bot.db import read_session
from bot.models import AuditEntry, ChangeKind, metric_bucket, utcnow
from tests.conftest import API_TOKEN, make_prompt
from tests.detection_kit import Clock, activated_at, make_checker, traffic
from tests.live_kit import serving

ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("SCREENSHOT_DIR", ROOT / "test-artifacts" / "screenshots"))


def _signed_in(client: TestClient) -> str:
    """Sign in; returns the CSRF token of the overview's forms."""
    answer = client.post("/ui/sign-in", data={"token": API_TOKEN}, follow_redirects=False)
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Max-Age=43200" in cookie
    page = client.get("/ui").text
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


def _rollbacks(engine: Engine) -> list[AuditEntry]:
    with read_session(engine) as session:
        return list(
            session.exec(select(AuditEntry).where(AuditEntry.kind == ChangeKind.ROLLBACK)).all()
        )


def test_pages_need_a_session_and_a_valid_token(client: TestClient) -> None:
    anonymous = TestClient(client.app)
    for path in ("/ui", "/ui/prompts/customer-support", "/ui/incidents/1"):
        answer = anonymous.get(path, follow_redirects=False)
        assert (answer.status_code, answer.headers["location"]) == (303, "/ui/sign-in")
    assert anonymous.get("/", follow_redirects=False).headers["location"] == "/ui"
    wrong = anonymous.post("/ui/sign-in", data={"token": "x" * 40})
    assert wrong.status_code == 401 and "That token is not accepted." in wrong.text
    forged = anonymous.get(
        "/ui", cookies={"rollback_bot_session": "e30=.deadbeef"}, follow_redirects=False
    )
    assert forged.status_code == 303
    assert anonymous.get("/ui/stream").status_code == 401


def test_a_rollback_from_the_dashboard_happens_once_and_names_the_person(
    client: TestClient, engine: Engine
) -> None:
    make_prompt(engine)  # v2.0.0 serving
    csrf = _signed_in(client)
    form = {"csrf": csrf, "target": "v1.9.0", "expected_version": "v2.0.0", "reason": "bad"}
    first = client.post("/ui/prompts/customer-support/rollback", data=form)
    assert first.status_code == 200 and "Rolled back v2.0.0 → v1.9.0." in first.text
    again = client.post("/ui/prompts/customer-support/rollback", data=form)
    assert "Not done:" in again.text  # a double submit: the state changed meanwhile
    [rollback] = _rollbacks(engine)
    assert (rollback.operator, rollback.trigger.value, rollback.reason) == (
        "api",
        "dashboard",
        "bad",
    )
    forged = client.post("/ui/prompts/customer-support/rollback", data={**form, "csrf": "forged"})
    assert forged.status_code == 403 and len(_rollbacks(engine)) == 1
    # A link made elsewhere cannot make the page claim a rollback that did not happen.
    claim = "Rolled back v1.9.0 → v1.8.0."
    crafted = client.get("/ui/prompts/customer-support", params={"message": claim, "seal": "0"})
    assert crafted.status_code == 200 and claim not in crafted.text


def test_the_chart_table_is_the_stored_figures(client: TestClient, engine: Engine) -> None:
    make_prompt(engine)
    now = utcnow()
    traffic(engine, version="v2.0.0", n=400, errors=32, at=now - timedelta(minutes=3))
    traffic(engine, version="v2.0.0", n=100, errors=0, at=now)
    _signed_in(client)
    page = client.get("/ui/prompts/customer-support").text
    assert "<svg" in page and 'id="error_rate-v2.0.0"' in page  # the version's line is drawn
    rows = re.findall(
        r"<tr><td>v2\.0\.0</td><td>[^<]+</td><td class=\"num\">(\d+)</td>"
        r"<td class=\"num\">([\d.]+)</td>",
        page,
    )
    assert sorted(rows) == [("100", "0.00"), ("400", "8.00")]


@pytest.fixture
def browser() -> Iterator[object]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs the browser tests: apt-get install chromium chromium-driver")
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots in {SHOTS}")
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: object, probe, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda _d: probe())


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_in_a_real_browser(browser: object, settings: Settings, engine: Engine) -> None:
    from selenium.webdriver.common.by import By

    d: object = browser
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    make_prompt(engine, name="billing", versions=("v7",))
    clock = Clock(activated_at(engine))
    traffic(engine, version="v2.0.0", n=1000, errors=80, at=clock.now)
    clock.advance(minutes=2)
    checker, _ = make_checker(engine, clock)
    with read_session(engine) as session:
        stored = int(session.execute(select(metric_bucket.c.requests)).scalar_one())
    with serving(create_app(settings, engine)) as base:
        d.get(f"{base}/ui")  # type: ignore[attr-defined]
        assert "/ui/sign-in" in d.current_url  # type: ignore[attr-defined]
        d.find_element(By.ID, "token").send_keys(API_TOKEN)  # type: ignore[attr-defined]
        d.find_element(By.CSS_SELECTOR, "form.card button").click()  # type: ignore[attr-defined]
        _wait(d, lambda: d.current_url.endswith("/ui"))  # type: ignore[attr-defined]
        rows = {
            r.get_attribute("data-prompt"): r
            for r in d.find_elements(By.CSS_SELECTOR, "#prompts tbody tr")
        }  # type: ignore[attr-defined]
        assert set(rows) == {"billing", "customer-support"}
        row = rows["customer-support"]
        assert row.find_element(By.CLASS_NAME, "serving").text == "v2.0.0"
        assert row.find_element(By.CLASS_NAME, "error-rate").text == "8.0% (6.7 to 9.5)"
        assert row.find_element(By.CLASS_NAME, "verdict").text == "no open incident"

        # Live: the checker rolls v2.0.0 back; the open overview shows the incident and the
        # restored version without a reload (routing pushed at once, the row within seconds).
        assert len(checker.tick().rollbacks) == 1
        verdict = row.find_element(By.CLASS_NAME, "verdict")
        _wait(d, lambda: verdict.text.startswith("critical incident on v2.0.0 (rolled back"))
        assert row.find_element(By.CLASS_NAME, "serving").text == "v1.9.0"
        assert (
            row.find_element(By.CSS_SELECTOR, ".verdict a")
            .get_attribute("href")
            .endswith("/ui/incidents/1")
        )
        assert "alert" in row.get_attribute("class")
        d.save_screenshot(str(SHOTS / "overview.png"))  # type: ignore[attr-defined]

        # Live: a rollback elsewhere (the API) shows on the open overview without a reload.
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {API_TOKEN}"}) as api:
            assert (
                api.post(
                    "/api/prompts/billing/versions", json={"version": "v8", "template": "t"}
                ).status_code
                == 201
            )
            assert (
                api.post("/api/prompts/billing/deploy", json={"version": "v8"}).status_code == 200
            )
        cell = d.find_element(By.CSS_SELECTOR, '#prompts tr[data-prompt="billing"] .serving')  # type: ignore[attr-defined]
        _wait(d, lambda: cell.text == "v8")
        assert d.find_element(By.ID, "live").text == "billing now serves v8."  # type: ignore[attr-defined]

        # The prompt page: a chart drawn from the stored figures.
        d.get(f"{base}/ui/prompts/customer-support")  # type: ignore[attr-defined]
        assert d.find_element(By.CSS_SELECTOR, "#chart svg")  # type: ignore[attr-defined]
        assert d.find_elements(By.CSS_SELECTOR, '#chart [id="error_rate-v2.0.0"] path')  # type: ignore[attr-defined]
        cells = d.execute_script(  # type: ignore[attr-defined]
            "return [...document.querySelectorAll('#chart-data tbody tr')]"
            ".map(r => [...r.cells].map(c => c.textContent))"
        )
        assert ["v2.0.0", str(stored), "8.00"] == [cells[0][0], cells[0][2], cells[0][3]]
        d.save_screenshot(str(SHOTS / "prompt.png"))  # type: ignore[attr-defined]

        # The incident page: its timeline.
        d.get(f"{base}/ui/incidents/1")  # type: ignore[attr-defined]
        steps = [li.text for li in d.find_elements(By.CSS_SELECTOR, "#timeline li")]  # type: ignore[attr-defined]
        assert any("detected" in s for s in steps) and any("rolled back" in s for s in steps)
        d.save_screenshot(str(SHOTS / "incident.png"))  # type: ignore[attr-defined]

        # A forged CSRF token is refused, and nothing changes.
        d.get(f"{base}/ui/prompts/billing")  # type: ignore[attr-defined]
        before = len(_rollbacks(engine))
        d.execute_script("document.querySelector('section.card input[name=csrf]').value = 'forged'")  # type: ignore[attr-defined]
        d.execute_script("document.querySelector('section.card form').submit()")  # type: ignore[attr-defined]
        _wait(d, lambda: "CSRF token is wrong" in d.page_source)  # type: ignore[attr-defined]
        assert len(_rollbacks(engine)) == before

        # A rollback from the dashboard (confirm dialog accepted) happens once.
        d.get(f"{base}/ui/prompts/billing")  # type: ignore[attr-defined]
        d.find_element(By.ID, "reason").send_keys("v8 answers in the wrong currency")  # type: ignore[attr-defined]
        d.find_element(By.CSS_SELECTOR, "button.danger").click()  # type: ignore[attr-defined]
        d.switch_to.alert.accept()  # type: ignore[attr-defined]
        _wait(d, lambda: "Rolled back v8 → v7." in d.page_source)  # type: ignore[attr-defined]
        assert [(r.from_version, r.to_version) for r in _rollbacks(engine)][-1] == ("v8", "v7")
        assert len([r for r in _rollbacks(engine) if r.trigger.value == "dashboard"]) == 1

        # Signed out: back to the sign-in page.
        d.get(f"{base}/ui")  # type: ignore[attr-defined]
        d.find_element(By.CSS_SELECTOR, "nav form button").click()  # type: ignore[attr-defined]
        _wait(d, lambda: "/ui/sign-in" in d.current_url)  # type: ignore[attr-defined]
        d.get(f"{base}/ui/prompts/billing")  # type: ignore[attr-defined]
        assert "/ui/sign-in" in d.current_url  # type: ignore[attr-defined]


def test_deploy_canary_and_rollout_buttons_go_through_the_lifecycle(
    client: TestClient, engine: Engine
) -> None:
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"), deploy=("v1.9.0",))
    csrf = _signed_in(client)
    base = "/ui/prompts/customer-support"
    page = client.get(base).text
    assert 'action="/ui/prompts/customer-support/deploy"' in page
    started = client.post(
        f"{base}/rollouts", data={"csrf": csrf, "kind": "canary", "version": "v2.0.0"}
    )
    assert "Started:" in started.text and 'id="rollout"' in started.text
    rollout_id = re.search(r"/rollouts/(\d+)/abort", started.text).group(1)  # type: ignore[union-attr]
    forged = client.post(f"{base}/rollouts/{rollout_id}/abort", data={"csrf": "x"})
    assert forged.status_code == 403
    aborted = client.post(f"{base}/rollouts/{rollout_id}/abort", data={"csrf": csrf})
    assert "Aborted:" in aborted.text
    again = client.post(f"{base}/rollouts/{rollout_id}/abort", data={"csrf": csrf})
    assert "Not done:" in again.text  # already ended: nothing changes twice
    refused = client.post(f"{base}/deploy", data={"csrf": csrf, "version": "v2.0.0"})
    assert "Not done: v2.0.0 is marked bad" in refused.text  # the aborted canary marked it
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    new = {"version": "v2.1.0", "template": "t"}
    assert client.post("/api/prompts/customer-support/versions", json=new, headers=auth).is_success
    deployed = client.post(
        f"{base}/deploy", data={"csrf": csrf, "version": "v2.1.0", "reason": "fixed wording"}
    )
    assert "Deployed v2.1.0 (was v1.9.0)." in deployed.text
    with read_session(engine) as session:
        history = registry.history(session=session, name="customer-support")
    assert (history[0].kind.value, history[0].operator, history[0].trigger.value) == (
        "deploy",
        "api",
        "dashboard",
    )


def test_split_from_the_dashboard_and_the_chart_marks_it_with_the_incident(
    client: TestClient, engine: Engine
) -> None:
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"), deploy=("v1.9.0",))
    csrf = _signed_in(client)
    base = "/ui/prompts/customer-support"
    revision = re.search(r'name="expected_revision" value="(\d+)"', client.get(base).text)
    assert revision is not None
    form = {"csrf": csrf, "version": "v2.0.0", "percent": "25", "expected_revision": revision[1]}
    done = client.post(f"{base}/split", data={**form, "reason": "try the new wording"})
    assert "Split: v1.9.0 75%, v2.0.0 25%." in done.text
    stale = client.post(f"{base}/split", data=form)  # the page was made before the split
    assert "Not done: customer-support&#39;s traffic changed since the page was shown" in stale.text
    refused = client.post(f"{base}/split", data={**form, "percent": "100"})
    assert refused.status_code == 422 and "<html" in refused.text  # a page, not JSON
    assert "<strong>percent</strong>: Input should be less than or equal to 99" in refused.text
    with read_session(engine) as session:
        history = registry.history(session=session, name="customer-support")
        assert (history[0].kind.value, history[0].split, history[0].trigger.value) == (
            "split",
            {"v1.9.0": 75, "v2.0.0": 25},
            "dashboard",
        )
    # Traffic on both versions (3:1, as split), then v2.0.0 breaches: an incident.
    clock = Clock(activated_at(engine))
    traffic(engine, version="v1.9.0", n=600, errors=3, at=clock.now)
    traffic(engine, version="v2.0.0", n=200, errors=40, at=clock.now)
    clock.advance(minutes=2)
    checker, _ = make_checker(engine, clock)
    checker.tick()
    page = client.get(base).text
    assert re.search(r'<g id="incident-1"', page), "the incident is shaded on the chart"
    assert page.count('<g id="change-') >= 4 * 2  # deploy and split, on each of 4 panels
    assert "split v1.9.0 75%, v2.0.0 25%" in page  # the marker says what the split was
    assert 'id="share-v1.9.0"' in page and 'id="share-v2.0.0"' in page
    shares = re.findall(
        r"<tr><td>(v[\d.]+)</td>(?:<td[^>]*>[^<]*</td>){5}<td class=\"num\">([\d.]+)</td></tr>",
        page,
    )
    assert sorted(shares) == [("v1.9.0", "75.0"), ("v2.0.0", "25.0")]
