"""Read-only views of the registry: listings, one prompt's detail, and its history."""

from __future__ import annotations

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from bot.models import (
    AuditEntry,
    AuditPublic,
    Prompt,
    PromptDetail,
    PromptSummary,
    PromptVersion,
    Routing,
    RoutingState,
    WebhookDelivery,
    WebhookOutcome,
)
from bot.registry.changes import to_public
from bot.registry.lookup import get_prompt

HISTORY_MAX = 500


def list_prompts(*, session: Session) -> list[PromptSummary]:
    """Every prompt with its active version, split and version count, by name."""
    counts = (
        select(PromptVersion.prompt_id, func.count().label("n"))
        .group_by(col(PromptVersion.prompt_id))
        .subquery()
    )
    rows = session.execute(
        sa_select(
            col(Prompt.name),
            col(PromptVersion.label),
            col(Routing.split),
            col(Routing.updated_at),
            counts.c.n,
        )
        .join(Routing, col(Routing.prompt_id) == Prompt.id)
        .join(PromptVersion, col(PromptVersion.id) == Routing.active_version_id, isouter=True)
        .join(counts, counts.c.prompt_id == Prompt.id, isouter=True)
        .order_by(Prompt.name)
    ).all()
    return [
        PromptSummary(
            name=name, active_version=label, split=split, version_count=n or 0, updated_at=updated
        )
        for name, label, split, updated, n in rows
    ]


def prompt_detail(*, session: Session, name: str) -> PromptDetail:
    """The prompt's routing and all its versions, newest first."""
    prompt = get_prompt(session, name)
    routing = session.exec(select(Routing).where(Routing.prompt_id == prompt.id)).one()
    versions = session.exec(
        select(PromptVersion)
        .where(PromptVersion.prompt_id == prompt.id)
        .order_by(col(PromptVersion.id).desc())
    ).all()
    active = next((v.label for v in versions if v.id == routing.active_version_id), None)
    return PromptDetail(
        name=prompt.name,
        active_version=active,
        split=routing.split,
        revision=routing.revision,
        updated_at=routing.updated_at,
        versions=[to_public(v) for v in versions],
    )


def history(
    *, session: Session, name: str, limit: int = 50, before_id: int | None = None
) -> list[AuditPublic]:
    """The prompt's audit log, newest first; page with `before_id`."""
    prompt = get_prompt(session, name)
    query = select(AuditEntry).where(AuditEntry.prompt_id == prompt.id)
    if before_id is not None:
        query = query.where(col(AuditEntry.id) < before_id)
    entries = session.exec(
        query.order_by(col(AuditEntry.id).desc()).limit(min(max(limit, 1), HISTORY_MAX))
    ).all()
    deliveries: dict[int, list[WebhookOutcome]] = {}
    ids = [e.id for e in entries if e.id is not None]
    if ids:
        for d in session.exec(
            select(WebhookDelivery).where(col(WebhookDelivery.audit_id).in_(ids))
        ):
            deliveries.setdefault(d.audit_id, []).append(
                WebhookOutcome(
                    url=d.url, status=d.status.value, attempts=d.attempts, last_result=d.last_result
                )
            )
    return [
        AuditPublic(
            id=e.id or 0,
            kind=e.kind,
            from_version=e.from_version,
            to_version=e.to_version,
            split=e.split,
            reason=e.reason,
            operator=e.operator,
            trigger=e.trigger,
            rule=e.rule,
            revision=e.revision,
            timestamp=e.created_at,
            webhooks=deliveries.get(e.id or 0, []),
        )
        for e in entries
    ]


def routing_states(*, session: Session, names: list[str] | None = None) -> list[RoutingState]:
    """The routing of the named prompts (all when None) with the serving versions' templates."""
    query = select(Prompt, Routing).join(Routing, col(Routing.prompt_id) == Prompt.id)
    if names is not None:
        query = query.where(col(Prompt.name).in_(names))
    rows = session.exec(query).all()
    routing_of = {prompt.id: routing for prompt, routing in rows}
    versions: dict[int, list[PromptVersion]] = {}
    if rows:
        candidates = session.exec(
            select(PromptVersion).where(col(PromptVersion.prompt_id).in_(list(routing_of)))
        )
        for version in candidates:
            routing = routing_of[version.prompt_id]
            if version.id == routing.active_version_id or version.label in (routing.split or {}):
                versions.setdefault(version.prompt_id, []).append(version)
    states = []
    for prompt, routing in rows:
        serving = sorted(versions.get(prompt.id or 0, []), key=lambda v: v.id or 0)
        active = next((v.label for v in serving if v.id == routing.active_version_id), None)
        states.append(
            RoutingState(
                prompt=prompt.name,
                revision=routing.revision,
                active_version=active,
                split=routing.split,
                order=[v.label for v in serving],
                templates={v.label: v.template for v in serving},
            )
        )
    return states


def revisions(*, session: Session) -> dict[str, int]:
    """Every prompt's routing revision: a cheap query to notice changes."""
    rows = session.execute(
        sa_select(col(Prompt.name), col(Routing.revision)).join(
            Routing, col(Routing.prompt_id) == Prompt.id
        )
    ).all()
    return {name: int(revision) for name, revision in rows}


def routing_fingerprint(*, session: Session) -> tuple[int, int]:
    """One cheap value that changes whenever any prompt's routing does: the number of routing
    rows and the sum of their revisions. Every change adds one to one revision, and PostgreSQL
    may commit changes out of id order, so neither the highest revision (it is per prompt) nor
    the highest audit id would do: a later snapshot sees a strictly larger sum."""
    count, total = session.execute(
        sa_select(func.count(), func.coalesce(func.sum(col(Routing.revision)), 0))
    ).one()
    return int(count), int(total)
