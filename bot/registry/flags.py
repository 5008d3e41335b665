"""Prompt routing as OpenFeature flags (the OFREP wire format): pure, no HTTP.

A flag key is a prompt name; its value is the version to serve (a string), or with the key
suffix `:template` an object `{version, template}`. `variant` is the version; `reason` is
STATIC (one version serves) or SPLIT (a traffic split, chosen sticky by the evaluation
context's `targetingKey` with the same hash as `/resolve` and the Python client).
"""

from __future__ import annotations

from typing import Any

from bot.models import RoutingState
from bot.splits import choose

TEMPLATE_SUFFIX = ":template"


class FlagError(Exception):
    """An evaluation OFREP answers with an error code (and the HTTP status it goes with)."""

    def __init__(self, key: str, code: str, details: str, status: int) -> None:
        super().__init__(details)
        self.key, self.code, self.details, self.status = key, code, details, status

    def body(self) -> dict[str, str]:
        """OFREP's evaluation failure body."""
        return {"key": self.key, "errorCode": self.code, "errorDetails": self.details}


def prompt_of(key: str) -> tuple[str, bool]:
    """The prompt a flag key names, and whether the object form was asked for."""
    if key.endswith(TEMPLATE_SUFFIX):
        return key.removesuffix(TEMPLATE_SUFFIX), True
    return key, False


def evaluate(key: str, state: RoutingState | None, targeting_key: str | None) -> dict[str, Any]:
    """OFREP's evaluation success body for `key`, or FlagError."""
    prompt, as_object = prompt_of(key)
    if state is None:
        raise FlagError(key, "FLAG_NOT_FOUND", f"no prompt named {prompt!r}", 404)
    if state.active_version is None:
        raise FlagError(
            key, "FLAG_NOT_FOUND", f"{prompt} has no version serving yet; deploy one", 404
        )
    if state.split:
        if not targeting_key:
            raise FlagError(
                key,
                "TARGETING_KEY_MISSING",
                f"{prompt} is split across versions: send a targetingKey (a user or session "
                "id) so each user keeps one version",
                400,
            )
        version, reason = choose(prompt, state.split, state.order, targeting_key), "SPLIT"
    else:
        version, reason = state.active_version, "STATIC"
    value: Any = (
        {"version": version, "template": state.templates[version]} if as_object else version
    )
    metadata: dict[str, Any] = {"prompt": prompt, "revision": state.revision}
    if state.split:
        metadata["split"] = ",".join(f"{v}={p}" for v, p in state.split.items())
    return {
        "key": key,
        "value": value,
        "reason": reason,
        "variant": version,
        "metadata": metadata,
    }
