"""`policy check` and `check --once`: detection from the command line."""

from __future__ import annotations

import json
from datetime import timedelta

import click

from bot.cli.context import CliState, emit_table, json_option, pass_state
from bot.errors import BotError
from bot.models import IncidentStatus

# Each command imports what it uses: `policy check` and `incidents list` need neither the
# checker nor the metric sources, and nothing here needs the scheduler (APScheduler).


@click.group()
def policy() -> None:
    """Detection policy commands."""


@policy.command("check")
@click.argument("directory", required=False)
@json_option
@pass_state
def policy_check(state: CliState, directory: str | None, as_json: bool) -> None:
    """Validate DIRECTORY (default ROLLBACK_POLICY_DIR): each problem with file, line and field
    (exit 2). Overrides for prompts the registry does not have are warned about."""
    from bot.policy import load_policies
    from bot.policy.known import unknown_prompt_warnings

    folder = directory or state.settings.rollback_policy_dir
    policies = load_policies(folder)
    warnings: list[str] = []
    if policies.prompts:
        try:
            warnings = unknown_prompt_warnings(policies, state.engine())
        except BotError as exc:  # no database here: the files are still valid
            warnings = [f"prompt overrides not compared with the registry: {exc.message}"]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": True,
                    "directory": str(folder),
                    "files": list(policies.files),
                    "rules": [rule.name for rule in policies.rules],
                    "prompt_overrides": sorted(policies.prompts),
                    "warnings": warnings,
                },
                indent=2,
            )
        )
        return
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(
        f"{folder}: OK ({len(policies.files)} file(s), {len(policies.rules)} rules, "
        f"{len(policies.prompts)} prompt override(s))"
    )


@click.command("check")
@click.option("--once", is_flag=True, required=True, help="Run one pass and exit.")
@click.option("--dry-run", is_flag=True, help="Judge only: open no incident, roll nothing back.")
@json_option
@pass_state
def check(state: CliState, once: bool, dry_run: bool, as_json: bool) -> None:
    """Run one checker pass now and print every verdict."""
    from bot.incidents.queries import finite
    from bot.judging.checker import Checker
    from bot.models import utcnow
    from bot.notify import LogNotifier
    from bot.policy import load_policies
    from bot.runtime import lease
    from bot.runtime.sources import LEASE, build_sources

    settings = state.settings
    engine = state.engine()
    policies = load_policies(settings.rollback_policy_dir)
    checker = Checker(
        engine=engine,
        policies=policies,
        sources=build_sources(engine, policies),
        notifier=LogNotifier(),
        source_down_after=settings.metrics_source_down_after,
        dedup_window=timedelta(seconds=settings.rollback_dedup_seconds),
    )
    now = utcnow()
    if dry_run:
        decisions = [decision for _, decision in checker.judge(now)]
        rollbacks: list[str] = []
    else:
        holder = f"cli:{now.timestamp()}"
        ttl = timedelta(seconds=settings.lease_ttl_seconds())
        if not lease.hold(engine=engine, name=LEASE, holder=holder, ttl=ttl, now=now):
            raise BotError("a running server holds the checker lease; use --dry-run to only judge")
        try:
            report = checker.tick()
        finally:
            lease.release(engine=engine, name=LEASE, holder=holder)
        decisions = report.decisions
        rollbacks = [f"{r.prompt}: {r.from_version} → {r.to_version}" for r in report.rollbacks]
    if as_json:
        click.echo(
            json.dumps(
                finite({"decisions": [d.as_dict() for d in decisions], "rollbacks": rollbacks}),
                indent=2,
                default=str,
                allow_nan=False,  # strict JSON: a non-finite figure is printed as null
            )
        )
        return
    emit_table(
        ["prompt", "version", "severity", "action", "n", "error %", "95% CI", "p99 ms", "reason"],
        [
            (
                d.prompt,
                d.version,
                d.severity,
                d.action,
                d.figures.get("requests"),
                _num(d.figures.get("error_rate_pct")),
                _ci(d.figures.get("error_rate_ci_pct")),
                _num(d.figures.get("latency_p99_ms"), 0),
                d.reason,
            )
            for d in decisions
        ],
    )
    for line in rollbacks:
        click.echo(f"rolled back {line}")


def _num(value: float | None, digits: int = 2) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _ci(value: list[float] | None) -> str | None:
    return None if not value else f"{value[0]:.2f}-{value[1]:.2f}"


@click.group()
def incidents() -> None:
    """Incidents the checker recorded."""


@incidents.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500))
@click.option("--prompt", default=None, help="Only this prompt's incidents.")
@click.option(
    "--status",
    default=None,
    type=click.Choice([s.value for s in IncidentStatus]),
    help="Only incidents in this state.",
)
@json_option
@pass_state
def incidents_list(
    state: CliState, limit: int, prompt: str | None, status: str | None, as_json: bool
) -> None:
    """The most recent incidents, newest first."""
    from bot.db import read_session
    from bot.incidents.queries import list_incidents

    with read_session(state.engine()) as session:
        rows = list_incidents(
            session, prompt=prompt, status=IncidentStatus(status) if status else None, limit=limit
        )
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    emit_table(
        ["#", "prompt", "version", "severity", "status", "opened", "summary"],
        [
            (r.id, r.prompt, r.version, r.severity, r.status, r.opened_at, r.summary[:80])
            for r in rows
        ],
    )


@incidents.command("show")
@click.argument("incident_id", type=int)
@click.option("--markdown", is_flag=True, help="Print the post-mortem draft as Markdown.")
@json_option
@pass_state
def incidents_show(state: CliState, incident_id: int, markdown: bool, as_json: bool) -> None:
    """One incident: its record, or its post-mortem draft with --markdown."""
    from bot.db import read_session
    from bot.incidents.postmortem import postmortem
    from bot.incidents.queries import finite
    from bot.incidents.records import get_incident

    with read_session(state.engine()) as session:
        incident = get_incident(session, incident_id)
        draft = postmortem(session=session, incident_id=incident_id)
    if as_json:
        click.echo(json.dumps(finite(incident.model_dump(mode="json")), indent=2, default=str))
    elif markdown:
        click.echo(draft)
    else:
        click.echo(
            f"#{incident.id} {incident.prompt} {incident.version}: "
            f"{incident.severity.value}, {incident.status.value}\n{incident.summary}"
        )
