"""Which version a serving app should use now, sticky per key under a traffic split."""

from __future__ import annotations

import hashlib
import random

from sqlmodel import Session, select

from bot.errors import InvalidRequest
from bot.models import Prompt, PromptVersion, Resolved, Routing
from bot.registry.lookup import get_prompt

BUCKETS = 10_000


def bucket_for(prompt: str, key: str) -> int:
    """A stable bucket in [0, 10000) for this prompt and key (SHA-256; same on every host)."""
    digest = hashlib.sha256(f"{prompt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def choose(prompt: str, split: dict[str, int], order: list[str], key: str | None) -> str:
    """Pick a label from the split; `order` lists labels oldest first.

    Older versions take the low buckets and the newest the top ones, so raising a canary's
    share only moves more keys onto it and no key that was on it leaves.
    """
    point = bucket_for(prompt, key) if key is not None else random.randrange(BUCKETS)
    edge = 0
    for label in order:
        edge += split.get(label, 0) * (BUCKETS // 100)
        if point < edge:
            return label
    return order[-1]


def resolve(*, session: Session, name: str, key: str | None = None) -> Resolved:
    """The version and template to serve for `key` now."""
    prompt: Prompt = get_prompt(session, name)
    routing = session.exec(select(Routing).where(Routing.prompt_id == prompt.id)).one()
    if routing.active_version_id is None:
        raise InvalidRequest(f"{name} has no active version yet; deploy one first")
    if routing.split:
        versions = session.exec(
            select(PromptVersion).where(
                PromptVersion.prompt_id == prompt.id,
                PromptVersion.label.in_(list(routing.split)),  # type: ignore[attr-defined]
            )
        ).all()
        by_label = {v.label: v for v in versions}
        order = [v.label for v in sorted(versions, key=lambda v: v.id or 0)]
        chosen = by_label[choose(name, routing.split, order, key)]
    else:
        active = session.get(PromptVersion, routing.active_version_id)
        assert active is not None
        chosen = active
    return Resolved(
        prompt=name, version=chosen.label, template=chosen.template, revision=routing.revision
    )
