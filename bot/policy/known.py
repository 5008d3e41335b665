"""Policy overrides compared with the registry: an override for a prompt that does not exist
is most likely a typo, and leaves the real prompt on the defaults."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import select

from bot.db import read_session
from bot.models import Prompt
from bot.policy.schema import PolicySet


def unknown_prompt_warnings(policies: PolicySet, engine: Engine) -> list[str]:
    """One line per override naming an unregistered prompt (none when there are none)."""
    if not policies.prompts:
        return []
    with read_session(engine) as session:
        known = set(session.exec(select(Prompt.name)).all())
    return policies.unknown_prompts(known)
