"""A minimal local stand-in for Slack's Web API, for the demo: it keeps what the bot posts."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from bot.demo.render import render


class SlackStandIn:
    """Answers the Web API methods the bot calls, like Slack, and records the messages."""

    def __init__(self) -> None:
        self.messages: dict[str, dict[str, Any]] = {}  # ts -> message (edits applied)
        self.files: dict[str, dict[str, Any]] = {}  # file id -> title and bytes received
        self._seq = 0
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.startswith("/upload/"):  # the bytes of a file being uploaded
                    with standin._lock:
                        standin.files.get(self.path.rsplit("/", 1)[-1], {})["size"] = len(data)
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"OK")
                    return
                raw = data.decode()
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    args = json.loads(raw or "{}")
                else:
                    args = {k: v[0] for k, v in parse_qs(raw).items()}
                body = json.dumps(standin.call(self.path.rsplit("/", 1)[-1], args)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/api/"
        self.upload_url = f"http://127.0.0.1:{self._server.server_address[1]}/upload/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def call(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        """One Web API call, answered as Slack would."""
        with self._lock:
            if method == "auth.test":
                return {
                    "ok": True,
                    "team": "Demo",
                    "user": "rollback-bot",
                    "team_id": "T0DEMO",
                    "user_id": "U0BOT",
                    "bot_id": "B0BOT",
                    "url": "https://demo.slack.com/",
                }
            if method == "conversations.open":
                return {"ok": True, "channel": {"id": f"D{args.get('users', 'X')}"}}
            if method == "usergroups.users.list":
                return {"ok": True, "users": []}
            if method == "chat.postMessage":
                self._seq += 1
                ts = f"{int(time.time())}.{self._seq:06d}"
                blocks = args.get("blocks")
                message = {
                    "ts": ts,
                    "channel": args.get("channel"),
                    "text": args.get("text", ""),
                    "blocks": json.loads(blocks) if isinstance(blocks, str) else blocks,
                    "thread_ts": args.get("thread_ts"),
                }
                self.messages[ts] = message
                return {"ok": True, "channel": args.get("channel"), "ts": ts}
            if method == "chat.update":
                found = self.messages.get(str(args.get("ts")))
                if found is None:
                    return {"ok": False, "error": "message_not_found"}
                blocks = args.get("blocks")
                found.update(
                    text=args.get("text", ""),
                    blocks=json.loads(blocks) if isinstance(blocks, str) else blocks,
                    edited=True,
                )
                return {"ok": True, "channel": found["channel"], "ts": found["ts"]}
            if method == "files.getUploadURLExternal":
                self._seq += 1
                file_id = f"F{self._seq:06d}"
                self.files[file_id] = {"title": args.get("filename"), "size": 0}
                return {"ok": True, "file_id": file_id, "upload_url": self.upload_url + file_id}
            if method == "files.completeUploadExternal":
                files = args.get("files")
                files = json.loads(files) if isinstance(files, str) else files or []
                self._seq += 1
                ts = f"{int(time.time())}.{self._seq:06d}"
                shown = ", ".join(
                    f"{f.get('title')} ({self.files.get(f['id'], {}).get('size', 0):,} bytes)"
                    for f in files
                )
                self.messages[ts] = {
                    "ts": ts,
                    "channel": args.get("channel_id"),
                    "text": f"[chart: {shown}]",
                    "blocks": None,
                    "thread_ts": args.get("thread_ts"),
                }
                return {"ok": True, "files": [{"id": f["id"]} for f in files]}
            return {"ok": False, "error": "unknown_method"}

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def transcript(self) -> str:
        """Every conversation as readable text: channel posts with their threads, then DMs."""
        with self._lock:
            messages = sorted(self.messages.values(), key=lambda m: m["ts"])
        lines: list[str] = []
        for message in (m for m in messages if not m["thread_ts"]):
            where = (
                "DM to " + message["channel"][1:]
                if str(message["channel"]).startswith("D")
                else str(message["channel"])
            )
            lines.append(f"── {where}" + (" (edited)" if message.get("edited") else ""))
            lines.extend(
                "   " + line
                for line in render(
                    message.get("blocks") or [], message.get("text", "")
                ).splitlines()
            )
            for reply in (m for m in messages if m["thread_ts"] == message["ts"]):
                lines.append(
                    "   ↳ "
                    + render(reply.get("blocks") or [], reply.get("text", "")).replace(
                        "\n", "\n     "
                    )
                )
            lines.append("")
        return "\n".join(lines)
