"""Changes to the registry: new versions, deploys, traffic splits, rollbacks and health marks.

Each routing change is a compare-and-set on the routing row's `revision`, made in the same
transaction as its audit entry, so a change and its record exist together or not at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, or_, update
from sqlmodel import Session, col, select

from bot.db import upsert_insert
from bot.errors import (
    AlreadyActive,
    AlreadyRolledBack,
    ConcurrentChange,
    InvalidRequest,
    VersionExists,
    VersionMarkedBad,
)
from bot.models import (
    PROMPT_NAME_MAX,
    PROMPT_NAME_PATTERN,
    VERSION_LABEL_MAX,
    VERSION_LABEL_PATTERN,
    AuditEntry,
    ChangeKind,
    ChangeResult,
    Health,
    Prompt,
    PromptVersion,
    Routing,
    RoutingState,
    Trigger,
    Verification,
    VersionPublic,
    metric_bucket,
)
from bot.people import mention
from bot.registry import events
from bot.registry.lookup import (
    get_prompt,
    hold,
    last_routing_change,
    lock_prompt,
    previous_known_good,
    versions_by_label,
)


@dataclass(frozen=True)
class Actor:
    """Who asked for a change, and through what."""

    operator: str
    trigger: Trigger
    rule: str | None = None


def create_version(
    *,
    session: Session,
    prompt: str,
    version: str,
    template: str,
    created_by: str,
    now: datetime,
    baseline: dict[str, float] | None = None,
) -> VersionPublic:
    """Register a version of `prompt`, creating the prompt (and its empty routing) if new."""
    _check_name(prompt, PROMPT_NAME_PATTERN, PROMPT_NAME_MAX, "prompt name")
    _check_name(version, VERSION_LABEL_PATTERN, VERSION_LABEL_MAX, "version label")
    insert = upsert_insert(session)
    session.execute(insert(Prompt).values(name=prompt, created_at=now).on_conflict_do_nothing())
    row = get_prompt(session, prompt)
    session.execute(
        insert(Routing)
        .values(prompt_id=row.id, revision=0, updated_at=now)
        .on_conflict_do_nothing()
    )
    exists = session.exec(
        select(PromptVersion.id).where(
            PromptVersion.prompt_id == row.id, PromptVersion.label == version
        )
    ).first()
    if exists is not None:
        raise VersionExists(f"{prompt} already has a version {version!r}; versions are immutable")
    record = PromptVersion(
        prompt_id=_id(row),
        label=version,
        template=template,
        created_by=created_by,
        created_at=now,
        baseline=baseline,
    )
    session.add(record)
    session.flush()
    return to_public(record)


def deploy(
    *,
    session: Session,
    prompt: str,
    version: str,
    actor: Actor,
    now: datetime,
    reason: str = "",
    force: bool = False,
) -> ChangeResult:
    """Make `version` serve all of the prompt's traffic."""
    row, routing = lock_prompt(session, prompt)
    loaded = _Loaded(session, row, routing, [version])
    target, previous = loaded.one(version), loaded.active
    serving = _serving(routing, previous)
    if set(serving) == {target.label}:
        raise AlreadyActive(f"{version} is already serving all of {prompt}'s traffic")
    _refuse_bad(target, force, "deploy")
    if previous is not None and previous.health == Health.UNKNOWN:
        _set_health(previous, Health.GOOD, f"served until {version} was deployed", now)
    return _switch(
        loaded,
        routing,
        serving,
        active=target,
        split=None,
        kind=ChangeKind.DEPLOY,
        from_label=previous.label if previous else None,
        actor=actor,
        reason=reason,
        now=now,
    )


def set_split(
    *,
    session: Session,
    prompt: str,
    split: dict[str, int],
    actor: Actor,
    now: datetime,
    reason: str = "",
    force: bool = False,
) -> ChangeResult:
    """Share the prompt's traffic across versions (percentages summing to 100)."""
    if sum(split.values()) != 100:
        raise InvalidRequest(f"split percentages must sum to 100, not {sum(split.values())}")
    row, routing = lock_prompt(session, prompt)
    shares = {label: pct for label, pct in split.items() if pct > 0}
    loaded = _Loaded(session, row, routing, list(shares))
    versions, previous = loaded.get(list(shares)), loaded.active
    for version in versions.values():
        _refuse_bad(version, force, "route traffic to")
    serving = _serving(routing, previous)
    # The active version stays the stable one while it keeps a share; otherwise the largest share.
    if previous is not None and previous.label in shares:
        active = previous
    else:
        active = max(versions.values(), key=lambda v: (shares[v.label], -_id(v)))
    new_split = shares if len(shares) > 1 else None
    if serving == (new_split or {active.label: 100}):
        raise AlreadyActive(f"{prompt} already routes traffic that way")
    return _switch(
        loaded,
        routing,
        serving,
        active=active,
        split=new_split,
        kind=ChangeKind.SPLIT,
        from_label=previous.label if previous else None,
        actor=actor,
        reason=reason,
        now=now,
    )


def rollback(
    *,
    session: Session,
    prompt: str,
    target: str | None,
    actor: Actor,
    now: datetime,
    reason: str = "",
    force: bool = False,
    expected_version: str | None = None,
    dedup_window: timedelta = timedelta(minutes=5),
) -> ChangeResult:
    """Put the prompt back on `target`, or on the most recent known-good version when None.

    The version rolled back away from is marked bad. If someone else rolled the prompt back
    first, AlreadyRolledBack says who, from what and to what; nothing is changed twice.
    """
    row, routing = lock_prompt(session, prompt)
    loaded = _Loaded(session, row, routing, [target] if target is not None else [])
    serving = _serving(routing, loaded.active)
    if not serving:
        raise InvalidRequest(f"{prompt} has no active version yet; deploy one first")
    # In a split the caller may say which version is the suspect (a canary's new version);
    # otherwise it is the newest of those serving.
    named = expected_version is not None and expected_version in serving
    suspect = _newest(loaded, [str(expected_version)] if named else list(serving))
    last = last_routing_change(session, row)
    if expected_version is not None and expected_version != suspect.label:
        raise _changed_since(prompt, expected_version, suspect.label, last)
    if target is not None:
        wanted = loaded.one(target)
        if set(serving) == {wanted.label}:
            if last is not None and last.kind == ChangeKind.ROLLBACK:
                raise _already_rolled_back(prompt, last)
            raise AlreadyActive(f"{target} is already the active version of {prompt}")
        _refuse_bad(wanted, force, "roll back to")
    else:
        recent_rollback = (
            last is not None
            and last.kind == ChangeKind.ROLLBACK
            and now - last.created_at < dedup_window
        )
        if recent_rollback and last is not None:
            raise _already_rolled_back(prompt, last, hint=True)
        wanted = _default_target(loaded, serving, suspect)
    _set_health(suspect, Health.BAD, f"rolled back to {wanted.label}: {reason}".rstrip(": "), now)
    return _switch(
        loaded,
        routing,
        serving,
        active=wanted,
        split=None,
        kind=ChangeKind.ROLLBACK,
        from_label=suspect.label,
        actor=actor,
        reason=reason,
        now=now,
    )


def preview_target(*, session: Session, prompt: str) -> str | None:
    """The version a rollback without a target would choose now (None if there is none)."""
    row = get_prompt(session, prompt)
    routing = session.exec(select(Routing).where(Routing.prompt_id == row.id)).one()
    loaded = _Loaded(session, row, routing, [])
    serving = _serving(routing, loaded.active)
    if not serving:
        return None
    try:
        return _default_target(loaded, serving, _newest(loaded, list(serving))).label
    except InvalidRequest:
        return None


def mark_health(
    *,
    session: Session,
    prompt: str,
    version: str,
    health: Health,
    actor: Actor,
    now: datetime,
    reason: str = "",
) -> VersionPublic:
    """Mark a version good, bad or unknown by hand, with an audit entry; marking it with the
    health it already has changes nothing and records nothing (a retry, a double click)."""
    row, routing = lock_prompt(session, prompt)
    record = _Loaded(session, row, routing, [version]).one(version)
    if record.health == health:
        return to_public(record)
    _set_health(record, health, reason or None, now)
    session.add(
        AuditEntry(
            prompt_id=_id(row),
            kind=ChangeKind.HEALTH,
            from_version=version,
            to_version=version,
            reason=f"marked {health.value}" + (f": {reason}" if reason else ""),
            operator=actor.operator,
            trigger=actor.trigger,
            rule=actor.rule,
            revision=routing.revision,
            created_at=now,
        )
    )
    session.flush()
    return to_public(record)


# --- internals -------------------------------------------------------------------------------


def _check_name(value: str, pattern: str, limit: int, what: str) -> None:
    if not re.fullmatch(pattern, value) or len(value) > limit:
        raise InvalidRequest(
            f"{what} {value[:limit]!r} must be 1-{limit} characters: letters, digits, '.', '_', "
            "'-' (versions also '+'), starting with a letter or digit"
        )


def _id(obj: Prompt | PromptVersion) -> int:
    assert obj.id is not None
    return obj.id


def to_public(version: PromptVersion) -> VersionPublic:
    """The API shape of a version."""
    return VersionPublic(
        version=version.label,
        created_by=version.created_by,
        created_at=version.created_at,
        health=version.health,
        health_reason=version.health_reason,
        baseline=version.baseline,
        last_active_at=version.last_active_at,
    )


_ACTIVE_AND_WANTED = select(PromptVersion).where(
    PromptVersion.prompt_id == bindparam("prompt_id"),
    or_(
        col(PromptVersion.id) == bindparam("active"),
        col(PromptVersion.label).in_(bindparam("wanted", expanding=True)),
    ),
)


class _Loaded:
    """The versions of one prompt a change has read, by label: each is read once a change.

    The first read takes the active version and the `wanted` ones in one statement."""

    def __init__(
        self, session: Session, prompt: Prompt, routing: Routing, wanted: list[str]
    ) -> None:
        self.session, self.prompt = session, prompt
        params = {"prompt_id": prompt.id, "active": routing.active_version_id, "wanted": wanted}
        rows = list(session.exec(_ACTIVE_AND_WANTED, params=params))
        hold(session, *rows)
        self.by_label = {v.label: v for v in rows}
        self.active = next((v for v in rows if v.id == routing.active_version_id), None)

    def get(self, labels: list[str]) -> dict[str, PromptVersion]:
        """The versions `labels`; VersionNotFound (listing recent ones) for a missing one."""
        missing = [label for label in labels if label not in self.by_label]
        if missing:
            found = versions_by_label(self.session, self.prompt, missing)
            hold(self.session, *found.values())
            self.by_label |= found
        return {label: self.by_label[label] for label in labels}

    def one(self, label: str) -> PromptVersion:
        return self.get([label])[label]

    def add(self, version: PromptVersion) -> None:
        """A version of the prompt read another way (previous_known_good)."""
        hold(self.session, version)
        self.by_label[version.label] = version


def _serving(routing: Routing, active: PromptVersion | None) -> dict[str, int]:
    """The labels that receive traffic now, with their percentages."""
    if routing.split:
        return dict(routing.split)
    return {active.label: 100} if active else {}


def _newest(loaded: _Loaded, labels: list[str]) -> PromptVersion:
    return max(loaded.get(labels).values(), key=_id)


def _refuse_bad(version: PromptVersion, force: bool, verb: str) -> None:
    if version.health == Health.BAD and not force:
        why = f" ({version.health_reason})" if version.health_reason else ""
        raise VersionMarkedBad(
            f"{version.label} is marked bad{why}; refusing to {verb} it without force"
        )


def _set_health(version: PromptVersion, health: Health, reason: str | None, now: datetime) -> None:
    version.health = health
    version.health_reason = reason
    version.health_changed_at = now


def _default_target(
    loaded: _Loaded, serving: dict[str, int], suspect: PromptVersion
) -> PromptVersion:
    """The version to roll back to: another serving one, else the last one active before."""
    prompt = loaded.prompt
    others = [label for label in serving if label != suspect.label]
    if others:
        candidates = loaded.get(others)
        healthy = [v for v in candidates.values() if v.health != Health.BAD]
        if healthy:
            return max(healthy, key=lambda v: serving[v.label])
    previous = previous_known_good(loaded.session, prompt, exclude=list(serving))
    if previous is None:
        raise InvalidRequest(
            f"{prompt.name} has no previously active version that is not marked bad; "
            "name the version to roll back to"
        )
    loaded.add(previous)
    return previous


def _switch(
    loaded: _Loaded,
    routing: Routing,
    serving: dict[str, int],
    *,
    active: PromptVersion,
    split: dict[str, int] | None,
    kind: ChangeKind,
    from_label: str | None,
    actor: Actor,
    reason: str,
    now: datetime,
) -> ChangeResult:
    """Compare-and-set the routing row and write the audit entry in the same transaction."""
    session, prompt = loaded.session, loaded.prompt
    new_serving = loaded.get(list(split) if split else [active.label])
    dropped = [label for label in serving if label not in new_serving]
    if dropped:
        for version in loaded.get(dropped).values():
            version.last_active_at = now
    revision = routing.revision
    values: dict[str, object] = {
        "active_version_id": active.id,
        "split": split,
        "revision": revision + 1,
        "updated_at": now,
    }
    if routing.active_version_id != active.id:
        values |= {"previous_version_id": routing.active_version_id, "activated_at": now}
    result = session.execute(
        update(Routing)
        .where(col(Routing.prompt_id) == prompt.id, col(Routing.revision) == revision)
        .values(values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise ConcurrentChange(f"{prompt.name} changed while this request ran; look and retry")
    session.expire(routing)
    # NOTIFY, and the new state handed to this process's change feeds at commit.
    events.routing_changed(
        session, _state(prompt, revision + 1, active, split, list(new_serving.values()))
    )
    entry = AuditEntry(
        prompt_id=_id(prompt),
        kind=kind,
        from_version=from_label,
        to_version=active.label,
        split=split,
        reason=reason,
        operator=actor.operator,
        trigger=actor.trigger,
        rule=actor.rule,
        revision=revision + 1,
        created_at=now,
    )
    session.add(entry)
    session.flush()
    hold(session, entry)  # lifecycle.after reads it next
    assert entry.id is not None
    if kind == ChangeKind.ROLLBACK:
        # Every rollback, whatever started it, is verified; scheduled in the same transaction.
        session.add(
            Verification(
                audit_id=entry.id,
                prompt_id=_id(prompt),
                prompt=prompt.name,
                version=active.label,
                from_version=from_label,
                started_at=now,
                next_check_at=now,
                pre_switch=_counts_before(session, active, now),
            )
        )
    return ChangeResult(
        prompt=prompt.name,
        kind=kind,
        from_version=from_label,
        to_version=active.label,
        split=split,
        revision=revision + 1,
        audit_id=entry.id,
        timestamp=now,
    )


def _state(
    prompt: Prompt,
    revision: int,
    active: PromptVersion,
    split: dict[str, int] | None,
    serving: list[PromptVersion],
) -> RoutingState:
    """The routing this change commits, as `registry.routing_states` would read it back."""
    ordered = sorted(serving, key=_id)
    return RoutingState(
        prompt=prompt.name,
        revision=revision,
        active_version=active.label,
        split=split,
        order=[v.label for v in ordered],
        templates={v.label: v.template for v in ordered},
    )


_BUCKET = metric_bucket.select().where(
    metric_bucket.c.version_id == bindparam("version_id"),
    metric_bucket.c.minute == bindparam("minute"),
)


def _counts_before(session: Session, version: PromptVersion, now: datetime) -> dict[str, float]:
    """The restored version's counts in this minute's bucket so far: traffic from before the
    switch, which verification must not count as the restored version's recovery."""
    minute = now.replace(second=0, microsecond=0)
    params = {"version_id": version.id, "minute": minute}
    row = session.execute(_BUCKET, params).mappings().first()
    if row is None:
        return {}
    return {k: float(v) for k, v in row.items() if k not in ("version_id", "minute") and v}


def describe_change(entry: AuditEntry, *, slack: bool = False) -> str:
    """One line saying who changed what: 'rolled back v2.0.0 → v1.9.0 by alice (cli) at
    10:02:11Z'; with `slack`, a Slack user as a mention."""
    verb = {"rollback": "rolled back", "deploy": "deployed", "split": "re-split"}.get(
        entry.kind.value, entry.kind.value
    )
    change = (
        f"{entry.from_version} → {entry.to_version}" if entry.from_version else entry.to_version
    )
    when = entry.created_at.strftime("%Y-%m-%d %H:%M:%SZ")
    name = mention(entry.operator, entry.trigger) if slack else entry.operator
    return f"{verb} {change} by {name} ({entry.trigger.value}) at {when}"


def _already_rolled_back(prompt: str, entry: AuditEntry, hint: bool = False) -> AlreadyRolledBack:
    more = "; name a version to roll back further" if hint else ""
    return AlreadyRolledBack(
        f"{prompt} was already {describe_change(entry)}{more}",
        slack_text=f"{prompt} was already {describe_change(entry, slack=True)}{more}",
    )


def _changed_since(
    prompt: str, expected: str, current: str, last: AuditEntry | None
) -> ConcurrentChange:
    if last is not None and last.kind == ChangeKind.ROLLBACK and last.from_version == expected:
        return _already_rolled_back(prompt, last)
    detail = f" ({describe_change(last)})" if last else ""
    slack = f" ({describe_change(last, slack=True)})" if last else ""
    return ConcurrentChange(
        f"{prompt} is no longer on {expected}: now on {current}{detail}",
        slack_text=f"{prompt} is no longer on {expected}: now on {current}{slack}",
    )
