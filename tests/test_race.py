"""Racing rollbacks of one prompt: exactly one routing change and one audit row."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import Engine, func
from sqlmodel import select

from bot.db import read_session
from bot.models import AuditEntry, ChangeKind, Routing
from tests.conftest import PG_ONLY, make_prompt
from tests.race_worker import race

WORKER = Path(__file__).with_name("race_worker.py")


def _rollback_rows(engine: Engine) -> tuple[int, int]:
    with read_session(engine) as session:
        rows = session.exec(
            select(func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.kind == ChangeKind.ROLLBACK)
        ).one()
        revision = session.exec(select(Routing.revision)).one()
    return rows, revision


@pytest.mark.parametrize("target", [None, "v1.9.0"], ids=["default-target", "explicit-target"])
def test_twenty_threads_one_rollback(engine: Engine, db_url: str, target: str | None) -> None:
    make_prompt(engine)
    outcomes = race(db_url, 20, time.time() + 0.3, target, tag="t")
    assert outcomes["success"] == 1, outcomes
    assert outcomes["already_rolled_back"] == 19, outcomes
    assert _rollback_rows(engine) == (1, 4)  # three deploys, then exactly one more revision


@pytest.mark.postgresql
@pytest.mark.parametrize("db_url", PG_ONLY, indirect=True)
def test_two_processes_twenty_threads_one_rollback(engine: Engine, db_url: str) -> None:
    make_prompt(engine)
    start = time.time() + 2.0  # both interpreters are up and connected by then
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), db_url, "10", str(start), "-", str(n)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=WORKER.parent.parent,
        )
        for n in range(2)
    ]
    total: Counter[str] = Counter()
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        total.update(json.loads(out))
    assert total == Counter({"success": 1, "already_rolled_back": 19})
    assert _rollback_rows(engine) == (1, 4)
