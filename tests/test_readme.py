"""The README's "Using it" and "Detection" lines, pasted in order by a newcomer against a fresh
`init` + `serve` in an empty folder, all work (the test runs them with bash, as written)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.prometheus_kit import free_port

ROOT = Path(__file__).resolve().parent.parent


def _blocks(section: str) -> str:
    """The bash blocks of a README section, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```bash\n(.*?)```", body, flags=re.S))


@pytest.fixture
def newcomer(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], int]]:
    """An empty folder with the project's venv and policies, `init` run, `serve` running."""
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "policies").symlink_to(ROOT / "policies")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "ROLLBACK_", "SLACK_", "TEST_DATABASE", "PAGERDUTY"))
    }
    subprocess.run(
        [".venv/bin/rollback-bot", "init"], cwd=tmp_path, env=env, check=True, capture_output=True
    )
    port = free_port()
    server = subprocess.Popen(
        [".venv/bin/rollback-bot", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        yield tmp_path, env, port
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_the_readme_sequence_works_pasted_in_order(
    newcomer: tuple[Path, dict[str, str], int],
) -> None:
    folder, env, port = newcomer
    script = (_blocks("Using it") + "\n" + _blocks("Detection")).replace(":8000", f":{port}")
    assert script.count("curl") >= 6 and ".venv/bin/rollback-bot rollback" in script
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert '"kind":"rollback","from_version":"v2.0.0","to_version":"v1.9.0"' in out, out
    assert '"error"' not in out, out  # no curl call was refused
    assert "registered v2.1.0" in out
    assert "v2.1.0 → v1.9.0" in out or "v2.1.0 -> v1.9.0" in out, out
    assert '"accepted":1' in out, out
    assert "OK (1 file(s), 5 rules" in out
    assert "insufficient_data" in out, out  # one event is not enough to judge
    assert "Traceback" not in done.stderr
