"""Block Kit as plain text, for the demo's transcript and the docs' gallery."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def render(blocks: Sequence[dict[str, Any]], text: str = "") -> str:
    """Block Kit as plain text: headers, sections, fields, context, inputs and buttons (with
    the confirm dialog each destructive button opens)."""
    parts: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind in ("header", "section") and block.get("text"):
            parts.append(block["text"]["text"])
        for item in block.get("fields", []):
            parts.append(item["text"].replace("\n", ": "))
        if kind == "context":
            parts.append(" · ".join(e.get("text", "") for e in block["elements"]))
        if kind == "input":
            element = block["element"]
            optional = " (optional)" if block.get("optional") else ""
            shown = element.get("initial_option", {}).get("text", {}).get("text", "")
            choices = ", ".join(o["text"]["text"] for o in element.get("options", []))
            parts.append(
                f"{block['label']['text']}{optional}: "
                + (f"[{shown} ▾] (choices: {choices})" if choices else "[text box]")
            )
        if kind == "actions":
            parts.append("  ".join(f"[{e['text']['text']}]" for e in block["elements"]))
            for e in block["elements"]:
                if "confirm" in e:
                    c = e["confirm"]
                    parts.append(
                        f"  {e['text']['text']} asks first: {c['title']['text']} "
                        f'"{c["text"]["text"]}" [{c["deny"]["text"]}] [{c["confirm"]["text"]}]'
                    )
    return "\n".join(parts) or text
