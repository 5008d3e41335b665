"""Which version a serving app should use now, sticky per key under a traffic split."""

from __future__ import annotations

from sqlmodel import Session, select

from bot.errors import InvalidRequest
from bot.models import Prompt, PromptVersion, Resolved, Routing
from bot.registry.lookup import get_prompt
from bot.splits import bucket_for, choose

__all__ = ["bucket_for", "choose", "resolve"]


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
