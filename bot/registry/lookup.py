"""Finding prompts and versions, with errors that tell the user what does exist."""

from __future__ import annotations

import difflib

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from bot.errors import PromptNotFound, VersionNotFound
from bot.models import AuditEntry, ChangeKind, Health, Prompt, PromptVersion, Routing

RECENT_VERSIONS_SHOWN = 5


def get_prompt(session: Session, name: str) -> Prompt:
    """Return the prompt named `name` or raise PromptNotFound suggesting close names."""
    prompt = session.exec(select(Prompt).where(Prompt.name == name)).first()
    if prompt is None:
        names = list(session.exec(select(Prompt.name)).all())
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise PromptNotFound(f"no prompt named {name!r}{hint}")
    return prompt


def lock_prompt(session: Session, name: str) -> tuple[Prompt, Routing]:
    """The prompt named `name` and its routing row, locked for the rest of the transaction on
    PostgreSQL, in one statement (PromptNotFound as `get_prompt`). Both are held for the rest of
    the session (`hold`), so the change's later steps find them without reading them again.

    Only the routing row is joined: waiting for another change's lock, PostgreSQL re-checks the
    join against the row that change left, and a join on the active version would then match
    nothing."""
    found = session.exec(_LOCK_PROMPT, params={"name": name}).first()
    if found is None:
        prompt = get_prompt(session, name)  # raises, naming close matches
        return prompt, lock_routing(session, prompt)
    hold(session, *found)
    return found


# The statements of every routing change, built once: building a statement's expression and
# its cache key costs more CPU than SQLite's part of running it.
_LOCK_PROMPT = (
    select(Prompt, Routing)
    .join(Routing, col(Routing.prompt_id) == Prompt.id)
    .where(Prompt.name == bindparam("name"))
    .with_for_update(of=Routing)
)
_LAST_ROUTING_CHANGE = (
    select(AuditEntry)
    .where(
        AuditEntry.prompt_id == bindparam("prompt_id"),
        col(AuditEntry.kind).in_([ChangeKind.DEPLOY, ChangeKind.ROLLBACK, ChangeKind.SPLIT]),
    )
    .order_by(col(AuditEntry.id).desc())
    .limit(1)
)


def hold(session: Session, *rows: object) -> None:
    """Keep `rows` in the session until it closes. The session holds the objects it loaded
    weakly: once a function that read one returns, a later `session.get` reads it again."""
    session.info.setdefault("rollback_bot_held", []).extend(r for r in rows if r is not None)


def lock_routing(session: Session, prompt: Prompt) -> Routing:
    """Return the prompt's routing row, locked for the rest of the transaction on PostgreSQL."""
    # On SQLite the whole write transaction already holds the lock (BEGIN IMMEDIATE).
    routing = session.exec(
        select(Routing).where(Routing.prompt_id == prompt.id).with_for_update()
    ).one()
    return routing


def recent_labels(
    session: Session, prompt: Prompt, limit: int = RECENT_VERSIONS_SHOWN
) -> list[str]:
    """The labels of the prompt's newest versions, newest first."""
    rows = session.exec(
        select(PromptVersion.label)
        .where(PromptVersion.prompt_id == prompt.id)
        .order_by(col(PromptVersion.id).desc())
        .limit(limit)
    ).all()
    return list(rows)


def get_version(session: Session, prompt: Prompt, label: str) -> PromptVersion:
    """Return the prompt's version `label` or raise VersionNotFound listing recent versions."""
    version = session.exec(
        select(PromptVersion).where(
            PromptVersion.prompt_id == prompt.id, PromptVersion.label == label
        )
    ).first()
    if version is None:
        recent = recent_labels(session, prompt)
        listing = ", ".join(recent) if recent else "none yet"
        raise VersionNotFound(
            f"{prompt.name} has no version {label!r}; recent versions: {listing}", recent
        )
    return version


def versions_by_label(
    session: Session, prompt: Prompt, labels: list[str]
) -> dict[str, PromptVersion]:
    """Load several versions at once, raising VersionNotFound for the first missing label."""
    found = {
        v.label: v
        for v in session.exec(
            select(PromptVersion).where(
                PromptVersion.prompt_id == prompt.id, col(PromptVersion.label).in_(labels)
            )
        ).all()
    }
    for label in labels:
        if label not in found:
            get_version(session, prompt, label)  # raises with the recent versions listed
    return found


def last_routing_change(session: Session, prompt: Prompt) -> AuditEntry | None:
    """The newest audit entry that changed the prompt's routing."""
    return session.exec(_LAST_ROUTING_CHANGE, params={"prompt_id": prompt.id}).first()


# Versions of a prompt that served before and are not marked bad, other than those in
# `exclude`, most recently active first.
_KNOWN_GOOD = (
    select(PromptVersion)
    .where(
        PromptVersion.prompt_id == bindparam("prompt_id"),
        col(PromptVersion.last_active_at).is_not(None),
        PromptVersion.health != Health.BAD,
        col(PromptVersion.label).not_in(bindparam("exclude", expanding=True)),
    )
    .order_by(col(PromptVersion.last_active_at).desc(), col(PromptVersion.id).desc())
)
_PREVIOUS_KNOWN_GOOD = _KNOWN_GOOD.limit(1)
_ROLLBACK_CHOICES = _KNOWN_GOOD.limit(100)


def previous_known_good(
    session: Session, prompt: Prompt, exclude: list[str]
) -> PromptVersion | None:
    """The most recently active version not marked bad, other than those in `exclude`."""
    params = {"prompt_id": prompt.id, "exclude": exclude}
    found: PromptVersion | None = session.exec(_PREVIOUS_KNOWN_GOOD, params=params).first()
    return found


def rollback_choices(session: Session, prompt: Prompt, exclude: list[str]) -> list[str]:
    """Versions a person may roll back to: every one that served before and is not marked
    bad, most recently active first (at most 100, Slack's limit for a menu)."""
    params = {"prompt_id": prompt.id, "exclude": exclude}
    return [v.label for v in session.exec(_ROLLBACK_CHOICES, params=params)]
