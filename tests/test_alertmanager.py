"""Alertmanager's webhook as a trigger: alerts about prompt versions go through the same
incident lifecycle as the checker's verdicts. The last test runs a real Prometheus rule and a
real Alertmanager (Debian's packages) delivering to the bot."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import select

from bot.api.app import create_app
from bot.config import Settings
from bot.db import read_session
from bot.models import AuditEntry, ChangeKind, Incident, IncidentStatus
from tests.conftest import API_TOKEN, make_prompt
from tests.live_kit import serving
from tests.prometheus_kit import (
    Exporter,
    PrometheusServer,
    Traffic,
    free_port,
    require_prometheus,
)


def _alert(status: str = "firing", severity: str = "critical", **labels: str) -> dict:
    return {
        "status": status,
        "labels": {
            "alertname": "PromptErrorRateCritical",
            "prompt": "customer-support",
            "version": "v2.0.0",
            "severity": severity,
            **labels,
        },
        "annotations": {"summary": "error rate above 5%"},
        "startsAt": "2026-12-03T06:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": "abc",
    }


def _payload(*alerts: dict) -> dict:
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "status": alerts[0]["status"] if alerts else "firing",
        "receiver": "bot",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": list(alerts),
    }


def _incidents(engine: Engine) -> list[Incident]:
    with read_session(engine) as session:
        return list(session.exec(select(Incident).order_by(Incident.id)).all())


def _rollbacks(engine: Engine) -> list[AuditEntry]:
    with read_session(engine) as session:
        return list(
            session.exec(select(AuditEntry).where(AuditEntry.kind == ChangeKind.ROLLBACK)).all()
        )


def test_a_critical_alert_rolls_back_once(client: TestClient, engine: Engine) -> None:
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    for _ in range(2):  # Alertmanager repeats a firing alert: one incident, one rollback
        answer = client.post("/api/alertmanager", json=_payload(_alert()))
        assert answer.status_code == 200, answer.text
    [incident] = _incidents(engine)
    assert (incident.severity, incident.status) == ("critical", IncidentStatus.ROLLED_BACK)
    assert incident.decision["fired"][0]["rule"] == "prompt_error_rate_critical"
    [rollback] = _rollbacks(engine)
    assert (rollback.from_version, rollback.to_version) == ("v2.0.0", "v1.9.0")
    assert rollback.operator == "system" and rollback.rule == "prompt_error_rate_critical"


def test_a_high_alert_pages_and_its_resolution_closes_the_incident(
    client: TestClient, engine: Engine
) -> None:
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    high = _alert(severity="warning", alertname="PromptErrorRateHigh", action="page")
    assert client.post("/api/alertmanager", json=_payload(high)).json()["acted"][0] == {
        "prompt": "customer-support",
        "version": "v2.0.0",
        "alert": "prompt_error_rate_high",
        "severity": "medium",
        "action": "page",
        "rolled_back": [],
    }
    [incident] = _incidents(engine)
    assert incident.status == IncidentStatus.OPEN and _rollbacks(engine) == []
    # Another alert's resolution does not close it; its own does.
    other = _alert(status="resolved", alertname="SomethingElse")
    client.post("/api/alertmanager", json=_payload(other))
    assert _incidents(engine)[0].status == IncidentStatus.OPEN
    client.post("/api/alertmanager", json=_payload({**high, "status": "resolved"}))
    assert _incidents(engine)[0].status == IncidentStatus.RESOLVED


def test_alerts_it_cannot_act_on_are_said_and_change_nothing(
    client: TestClient, engine: Engine, tmp_path: Path, settings: Settings
) -> None:
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    answer = client.post(
        "/api/alertmanager",
        json=_payload(
            _alert(prompt="customer-suport"),
            _alert(version="v1.0.0"),
            {**_alert(), "labels": {"alertname": "DiskFull", "severity": "critical"}},
        ),
    ).json()
    assert answer["acted"] == []
    assert answer["skipped"] == [
        "DiskFull: no 'prompt' and 'version' labels",
        "prompt_error_rate_critical: customer-suport v2.0.0 is not serving",
        "prompt_error_rate_critical: customer-support v1.0.0 is not serving",
    ]
    assert _incidents(engine) == [] and _rollbacks(engine) == []
    assert client.post("/api/alertmanager", json={"alerts": "x"}).status_code == 422
    assert (
        client.post("/api/alertmanager", json=_payload(), headers={"Authorization": ""}).status_code
        == 401
    )


def test_auto_rollback_off_turns_a_critical_alert_into_a_page(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(Path(__file__).resolve().parent.parent / "policies", policies)
    (policies / "cs.yaml").write_text("prompts:\n  customer-support:\n    auto_rollback: false\n")
    app = create_app(settings.model_copy(update={"rollback_policy_dir": str(policies)}), engine)
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    with TestClient(app, headers={"Authorization": f"Bearer {API_TOKEN}"}) as client:
        acted = client.post("/api/alertmanager", json=_payload(_alert())).json()["acted"][0]
    assert (acted["severity"], acted["action"], acted["rolled_back"]) == ("critical", "page", [])
    assert _rollbacks(engine) == []


ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
RULES = """groups:
  - name: prompts
    interval: 1s
    rules:
      - alert: PromptErrorRateCritical
        expr: >
          sum by (prompt, version) (rate(llm_errors_total[5s]))
          / sum by (prompt, version) (rate(llm_requests_total[5s])) > 0.05
        labels: {severity: critical}
        annotations: {summary: "error rate above 5%"}
      - alert: PromptErrorRateHigh
        expr: >
          sum by (prompt, version) (rate(llm_errors_total[5s]))
          / sum by (prompt, version) (rate(llm_requests_total[5s])) > 0.02
          and sum by (prompt, version) (rate(llm_errors_total[5s]))
          / sum by (prompt, version) (rate(llm_requests_total[5s])) <= 0.05
        labels: {severity: high}
        annotations: {summary: "error rate 2-5%"}
"""


@pytest.fixture
def alerting(tmp_path: Path) -> tuple[Path, int]:
    if ALERTMANAGER is None:
        if os.environ.get("CI") == "true":
            pytest.fail("install the Debian package prometheus-alertmanager: CI runs this test")
        pytest.skip("prometheus-alertmanager is not installed")
    return tmp_path, free_port()


def _wait(probe, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_real_alertmanager_fed_by_a_real_prometheus_rule(
    settings: Settings, engine: Engine, alerting: tuple[Path, int]
) -> None:
    workdir, am_port = alerting
    make_prompt(engine, versions=("v1.9.0", "v2.0.0"))
    make_prompt(engine, name="billing", versions=("v1", "v2"))
    exporter = Exporter(
        {
            ("customer-support", "v2.0.0"): Traffic(
                requests=100, errors=8, slow=0, scored=0, score=0
            ),
            ("billing", "v2"): Traffic(requests=100, errors=3, slow=0, scored=0, score=0),
        }
    )
    with serving(create_app(settings, engine)) as bot:
        (workdir / "am.yml").write_text(
            "route:\n  receiver: bot\n  group_by: [alertname, prompt, version]\n"
            "  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n"
            "receivers:\n  - name: bot\n    webhook_configs:\n"
            f"      - url: {bot}/api/alertmanager\n        send_resolved: true\n"
            f"        http_config:\n          authorization:\n            credentials: {API_TOKEN}\n"
        )
        am = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={workdir / 'am.yml'}",
                f"--storage.path={workdir / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "am.log").open("wb"),
        )
        prometheus = PrometheusServer(require_prometheus(), workdir, exporter.port)
        prometheus.rules, prometheus.alertmanager = RULES, f"127.0.0.1:{am_port}"
        try:
            prometheus.start()
            _wait(lambda: _rollbacks(engine), 60, "no rollback from the critical alert")
            _wait(
                lambda: any(i.prompt == "billing" for i in _incidents(engine)),
                60,
                "no incident from the high alert",
            )
            exporter.traffic[("billing", "v2")] = Traffic(
                requests=100, errors=0, slow=0, scored=0, score=0
            )
            _wait(
                lambda: any(
                    i.prompt == "billing" and i.status == IncidentStatus.RESOLVED
                    for i in _incidents(engine)
                ),
                60,
                "the resolved alert closed nothing",
            )
        finally:
            prometheus.stop()
            am.terminate()
            am.wait(timeout=10)
            exporter.close()
    [rollback] = _rollbacks(engine)
    assert (rollback.from_version, rollback.to_version) == ("v2.0.0", "v1.9.0")
    by_prompt = {i.prompt: i for i in _incidents(engine)}
    assert len(_incidents(engine)) == 2
    assert by_prompt["customer-support"].status == IncidentStatus.ROLLED_BACK
    assert by_prompt["billing"].severity == "high"
