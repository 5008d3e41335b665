"""Start `rollback-bot serve` on a free port for a benchmark, and stop it afterwards."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "benchmark-token-0123456789abcdef"
PIDS: dict[str, int] = {}  # base URL -> the server's process id, while it runs


def header() -> str:
    """The date and machine line every benchmark prints first."""
    return (
        f"# {time.strftime('%Y-%m-%d')} {platform.node()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(database_url: str, **env: str) -> Iterator[str]:
    """A running server; yields its base URL."""
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "ROLLBACK_API_TOKEN": TOKEN,
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        **env,
    }
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve"], env=environment, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    PIDS[base] = proc.pid
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("server did not start")
            time.sleep(0.1)
        yield base
    finally:
        PIDS.pop(base, None)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def api(base: str) -> httpx.Client:
    """An authenticated client for the server."""
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)


@contextmanager
def scratch_schema(url: str, schema: str) -> Iterator[str]:
    """A fresh PostgreSQL schema for a benchmark; yields a URL whose search_path is it."""
    admin = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"))
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()
