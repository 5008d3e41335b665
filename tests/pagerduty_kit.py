"""A local stand-in for PagerDuty's Events API v2 that checks requests as PagerDuty documents."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SEVERITIES = {"critical", "error", "warning", "info"}
ACTIONS = {"trigger", "acknowledge", "resolve"}


def problems(event: dict[str, Any]) -> list[str]:
    """Why PagerDuty would refuse this event (empty when it is valid)."""
    found = []
    if not isinstance(event.get("routing_key"), str) or len(event["routing_key"]) != 32:
        found.append("routing_key must be the 32-character integration key")
    if event.get("event_action") not in ACTIONS:
        found.append("event_action must be trigger, acknowledge or resolve")
    if len(str(event.get("dedup_key", ""))) > 255:
        found.append("dedup_key longer than 255")
    if event.get("event_action") == "trigger":
        payload = event.get("payload") or {}
        for field in ("summary", "source", "severity"):
            if not payload.get(field):
                found.append(f"payload.{field} is required")
        if payload.get("severity") not in SEVERITIES:
            found.append("payload.severity must be critical, error, warning or info")
        if len(str(payload.get("summary", ""))) > 1024:
            found.append("payload.summary longer than 1024")
    return found


class FakePagerDuty:
    """Records accepted events; answers 202 like PagerDuty, 400 with errors otherwise."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.refused: list[list[str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    event = json.loads(raw)
                except ValueError:
                    event = {}
                errors = problems(event) if self.path == "/v2/enqueue" else ["unknown path"]
                if self.headers.get("Content-Type", "").split(";")[0] != "application/json":
                    errors.append("Content-Type must be application/json")
                if errors:
                    fake.refused.append(errors)
                    body = {
                        "status": "invalid event",
                        "message": "Event object is invalid",
                        "errors": errors,
                    }
                    status = 400
                else:
                    fake.events.append(event)
                    body = {
                        "status": "success",
                        "message": "Event processed",
                        "dedup_key": event.get("dedup_key"),
                    }
                    status = 202
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v2/enqueue"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
