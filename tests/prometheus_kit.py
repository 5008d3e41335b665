"""A real Prometheus (Debian's package) scraping a fake LLM application's /metrics.

`Exporter` serves counters that grow every tick for each (prompt, version) it is given, in
Prometheus's text format; its `mode` switches what it exposes ("ok", "nan": every value NaN,
"none": no series). `PrometheusServer` runs the real server scraping it every second, and can
be stopped, paused (SIGSTOP: it accepts connections and never answers) and restarted.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
)
BUCKETS = ("100", "250", "500", "1000", "2500", "+Inf")
TICK_S = 0.1


def require_prometheus() -> str:
    """The binary; fails under CI (which must run these tests) and skips elsewhere."""
    if PROMETHEUS is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "prometheus is not installed but CI must run the real-Prometheus tests: "
                "install the Debian package `prometheus` (apt-get install prometheus)"
            )
        pytest.skip("prometheus is not installed (apt-get install prometheus to run these tests)")
    return PROMETHEUS


@dataclass(frozen=True)
class Traffic:
    """What one version serves per tick of the fake application."""

    requests: int
    errors: int
    slow: int  # answered in 900 ms; the rest in 150 ms
    scored: int
    score: float


class Exporter:
    """A fake LLM app's /metrics: counters that grow every tick, in Prometheus's text format."""

    def __init__(self, traffic: Mapping[tuple[str, str], Traffic]) -> None:
        self.traffic = dict(traffic)
        self.mode = "ok"
        self.lock = threading.Lock()
        self.totals = {
            key: dict.fromkeys(("requests", "errors", "slow", "scored"), 0) for key in traffic
        }
        self.score_sums = dict.fromkeys(traffic, 0.0)
        self.stopping = threading.Event()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.threads = [
            threading.Thread(target=self.server.serve_forever, daemon=True),
            threading.Thread(target=self._grow, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _grow(self) -> None:
        while not self.stopping.wait(TICK_S):
            with self.lock:
                for key, t in self.traffic.items():
                    totals = self.totals[key]
                    totals["requests"] += t.requests
                    totals["errors"] += t.errors
                    totals["slow"] += t.slow
                    totals["scored"] += t.scored
                    self.score_sums[key] += t.scored * t.score

    def render(self) -> str:
        lines = [
            "# TYPE llm_requests_total counter",
            "# TYPE llm_errors_total counter",
            "# TYPE llm_latency_ms histogram",
            "# TYPE llm_quality summary",
        ]
        if self.mode == "none":
            return "\n".join(lines) + "\n"
        with self.lock:
            for (prompt, version), totals in self.totals.items():
                labels = f'prompt="{prompt}",version="{version}"'
                fast = totals["requests"] - totals["slow"]
                series = [
                    (f"llm_requests_total{{{labels}}}", totals["requests"]),
                    (f"llm_errors_total{{{labels}}}", totals["errors"]),
                    *(
                        (
                            f'llm_latency_ms_bucket{{{labels},le="{le}"}}',
                            (fast if float(le) >= 150 else 0)
                            + (totals["slow"] if float(le) >= 900 else 0),
                        )
                        for le in BUCKETS
                    ),
                    (f"llm_latency_ms_sum{{{labels}}}", fast * 150 + totals["slow"] * 900),
                    (f"llm_latency_ms_count{{{labels}}}", totals["requests"]),
                    (f"llm_quality_sum{{{labels}}}", self.score_sums[(prompt, version)]),
                    (f"llm_quality_count{{{labels}}}", totals["scored"]),
                ]
                lines += [
                    f"{name} {'NaN' if self.mode == 'nan' else repr(value)}"
                    for name, value in series
                ]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrometheusServer:
    """A real Prometheus scraping the exporter every second; can be stopped and restarted."""

    binary: str
    workdir: Path
    exporter_port: int
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    rules: str | None = None  # a rule file's text (alerting and recording rules)
    alertmanager: str | None = None  # host:port of an Alertmanager to send alerts to

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready: Callable[[], bool] | None = None) -> None:
        """Start (or restart, on the same data) and wait until it answers and `ready()`."""
        config = self.workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: llm-app\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{self.exporter_port}']\n"
            + (f"rule_files: ['{self.workdir / 'rules.yml'}']\n" if self.rules else "")
            + (
                "alerting:\n  alertmanagers:\n    - static_configs:\n"
                f"        - targets: ['{self.alertmanager}']\n"
                if self.alertmanager
                else ""
            )
        )
        if self.rules:
            (self.workdir / "rules.yml").write_text(self.rules)
        log = (self.workdir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait(lambda: httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200, "ready")
        if ready is not None:
            self._wait(ready, "scraped enough traffic")

    def _wait(self, ready: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"prometheus not {what} after {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        path = self.workdir / "prometheus.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-20:]) if path.exists() else ""
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted (by the kernel) and never answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
