"""The web dashboard's pages (server-rendered; reading needs no JavaScript) and its one
action, a rollback, through the same lifecycle as every other surface."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import Engine
from sqlmodel import Session

from bot import registry
from bot.api.deps import EngineDep, NotifierDep, SettingsDep
from bot.api.routes.rollouts import policies_of
from bot.config import Settings
from bot.dashboard import charts, data, slack_sign_in
from bot.dashboard.live import OverviewFeed
from bot.dashboard.session import (
    COOKIE,
    SESSION_HOURS,
    DashboardSession,
    csrf_ok,
    issue,
    operator_for,
    read,
)
from bot.db import read_session, write_session
from bot.errors import BotError
from bot.incidents import lifecycle
from bot.incidents.queries import incident_detail
from bot.models import AuditEntry, RolloutKind, Trigger, utcnow
from bot.notify import Notifier
from bot.policy import PolicySet
from bot.policy.schema import rollback_limits
from bot.registry.changes import Actor
from bot.registry.lookup import (
    get_prompt,
    lock_routing,
    previous_known_good,
    rollback_choices,
)
from bot.rollouts import stages as rollouts

if TYPE_CHECKING:
    from fastapi.templating import Jinja2Templates

router = APIRouter(prefix="/ui", include_in_schema=False)
HERE = Path(__file__).resolve().parent.parent.parent / "dashboard"
STEPS = {"1h": timedelta(minutes=1), "24h": timedelta(minutes=15), "7d": timedelta(hours=2)}


@cache
def templates() -> Jinja2Templates:
    """The pages' templates (Jinja2 is loaded with the first page, not with the server)."""
    from fastapi.templating import Jinja2Templates

    return Jinja2Templates(directory=str(HERE / "templates"))


def _session(request: Request, settings: Settings) -> DashboardSession | None:
    return read(settings, request.cookies.get(COOKIE))


def _page(
    request: Request,
    settings: Settings,
    session: DashboardSession,
    template: str,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    return templates().TemplateResponse(
        request,
        template,
        {"session": session, "csrf": session.csrf(settings), **context},
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


def problem_page(request: Request, errors: Sequence[Any]) -> HTMLResponse:
    """A form the bot refused (a value out of range, a wrong type): what was wrong, in a
    page, with nothing changed (answered 422)."""
    problems = [
        {"field": str(err["loc"][-1]) if err.get("loc") else "form", "message": err["msg"]}
        for err in errors
    ]
    parts = request.url.path.split("/")
    back = "/".join(parts[:4]) if len(parts) > 3 and parts[2] == "prompts" else None
    return templates().TemplateResponse(
        request,
        "problem.html",
        {"session": None, "problems": problems, "back": back},
        status_code=422,
        headers={"Cache-Control": "no-store"},
    )


def _to_sign_in() -> RedirectResponse:
    return RedirectResponse("/ui/sign-in", status_code=303)


@router.get("/sign-in")
def sign_in_form(request: Request, settings: SettingsDep) -> HTMLResponse:
    """The sign-in form."""
    return _sign_in_page(request, settings)


def _sign_in_page(
    request: Request, settings: Settings, refused: str | None = None, status_code: int = 200
) -> HTMLResponse:
    context: dict[str, Any] = {"session": None, "slack": slack_sign_in.enabled(settings)}
    if refused:
        context |= {"message": refused, "message_kind": "error"}
    return templates().TemplateResponse(request, "sign_in.html", context, status_code=status_code)


@router.post("/sign-in")
def sign_in(
    request: Request, settings: SettingsDep, token: Annotated[str, Form(max_length=512)] = ""
) -> Response:
    """Exchange an API token for a session cookie."""
    operator = operator_for(settings, token.strip())
    if operator is None:
        return _sign_in_page(request, settings, "That token is not accepted.", 401)
    return _signed_in(request, settings, operator)


@router.get("/sign-in/slack")
def slack_sign_in_start(request: Request, settings: SettingsDep) -> Response:
    """Off to Slack's authorize page (Sign in with Slack)."""
    if not slack_sign_in.enabled(settings):
        return _sign_in_page(request, settings, "Sign in with Slack is not set up here.", 404)
    pending = slack_sign_in.begin(settings, _callback_url(request))
    answer = RedirectResponse(pending.url, status_code=303)
    answer.set_cookie(
        slack_sign_in.STATE_COOKIE,
        pending.cookie,
        max_age=slack_sign_in.STATE_SECONDS,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/ui/sign-in/slack",
    )
    return answer


@router.get("/sign-in/slack/callback")
def slack_sign_in_callback(
    request: Request,
    settings: SettingsDep,
    code: str = "",
    state: str = "",
    error: str = "",
) -> Response:
    """Back from Slack: check the round trip and the ID token, then a session."""
    if not slack_sign_in.enabled(settings):
        return _sign_in_page(request, settings, "Sign in with Slack is not set up here.", 404)
    if error or not code:
        return _sign_in_page(request, settings, f"Slack did not sign you in ({error}).", 401)
    slack = request.app.state.slack
    try:
        operator = slack_sign_in.finish(
            settings,
            cookie=request.cookies.get(slack_sign_in.STATE_COOKIE),
            state=state,
            code=code,
            redirect_uri=_callback_url(request),
            team_id=slack.status.team_id if slack is not None else None,
            allowed=(lambda user: slack.oncall.allowed(user)) if slack else (lambda _u: False),
        )
    except slack_sign_in.SignInRefused as exc:
        return _sign_in_page(request, settings, str(exc), 401)
    answer = _signed_in(request, settings, operator)
    answer.delete_cookie(slack_sign_in.STATE_COOKIE, path="/ui/sign-in/slack")
    return answer


def _callback_url(request: Request) -> str:
    return str(request.url_for("slack_sign_in_callback"))


def _signed_in(request: Request, settings: Settings, operator: str) -> Response:
    session = issue(settings, operator)
    answer = RedirectResponse("/ui", status_code=303)
    answer.set_cookie(
        COOKIE,
        session.cookie,
        max_age=SESSION_HOURS * 3600,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return answer


@router.post("/sign-out")
def sign_out(
    request: Request, settings: SettingsDep, csrf: Annotated[str, Form()] = ""
) -> Response:
    """End the session (a forged form cannot sign anyone out)."""
    session = _session(request, settings)
    if session is not None and not csrf_ok(settings, session, csrf):
        return HTMLResponse("Refused: the form's CSRF token is wrong.", status_code=403)
    answer = _to_sign_in()
    answer.delete_cookie(COOKIE, path="/")
    return answer


@router.get("")
def overview(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """Every prompt at a glance."""
    session = _session(request, settings)
    if session is None:
        return _to_sign_in()
    policies = policies_of(request)
    with read_session(engine) as db:
        rows = data.overview(db, policies, utcnow())
    return _page(request, settings, session, "overview.html", rows=rows)


@router.get("/prompts/{name}")
def prompt_page(
    name: str,
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    range: str = "1h",
    message: str | None = None,
    seal: str | None = None,
) -> Response:
    """A prompt: routing, a rollback form, charts, versions and history."""
    session = _session(request, settings)
    if session is None:
        return _to_sign_in()
    if range not in data.RANGES:
        range = "1h"
    policies = policies_of(request)
    context = _prompt_context(engine, policies, name, range)
    said = session.said(settings, message, seal)
    return _page(request, settings, session, "prompt.html", message=said, **context)


def _prompt_context(engine: Engine, policies: PolicySet, name: str, span: str) -> dict[str, Any]:
    now = utcnow()
    since = now - data.RANGES[span]
    with read_session(engine) as db:
        detail = registry.prompt_detail(session=db, name=name)
        prompt = get_prompt(db, name)
        chart = data.chart_data(db, prompt.id or 0, since, STEPS[span])
        history = registry.history(session=db, name=name, limit=30)
        exclude = [detail.active_version] if detail.active_version else []
        choices = rollback_choices(db, prompt, exclude)
        default = previous_known_good(db, prompt, exclude)
        rollout = rollouts.active_rollout(db, prompt.id or 0)
        rollout_text = rollouts.describe(rollout) if rollout else None
    return {
        "name": name,
        "active": detail.active_version,
        "split": detail.split,
        "revision": detail.revision,
        "versions": detail.versions,
        "history": history,
        "series": chart.lines,
        "choices": choices,
        "rollout": rollout,
        "rollout_text": rollout_text,
        "deployable": [
            v.version
            for v in detail.versions
            if v.version != detail.active_version and v.health.value != "bad"
        ],
        "default": default.label if default else None,
        "ranges": list(data.RANGES),
        "span": span,
        "chart": _chart(f"{name}, last {span}", chart, policies, name),
    }


def _chart(title: str, chart: data.ChartData, policies: PolicySet, name: str) -> str | None:
    if not chart.lines:
        return None
    limits = rollback_limits(policies.for_prompt(name))
    return charts.svg(charts.figure(title, chart, limits))


Change = Callable[[Session, Actor, Notifier], str]


def _act(
    request: Request,
    settings: Settings,
    engine: Engine,
    notifier: Notifier,
    name: str,
    csrf: str,
    change: Change,
) -> Response:
    """Run one change as the signed-in operator (trigger `dashboard`), in one transaction,
    then show the prompt's page saying what happened; a refused change changes nothing."""
    session = _session(request, settings)
    if session is None:
        return _to_sign_in()
    if not csrf_ok(settings, session, csrf):
        return HTMLResponse("Refused: the form's CSRF token is wrong; reload the page.", 403)
    actor = Actor(operator=session.operator, trigger=Trigger.DASHBOARD)
    try:
        with write_session(engine) as db:
            message = change(db, actor, notifier)
    except BotError as exc:
        message = f"Not done: {exc.message}"
    seal = session.seal(settings, message)
    return RedirectResponse(
        f"/ui/prompts/{_quote(name)}?message={_quote(message)}&seal={seal}", status_code=303
    )


@router.post("/prompts/{name}/rollback")
def roll_back(
    name: str,
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    notifier: NotifierDep,
    csrf: Annotated[str, Form()] = "",
    target: Annotated[str, Form(max_length=64)] = "",
    expected_version: Annotated[str, Form(max_length=64)] = "",
    reason: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """Roll back through the lifecycle, only if the version the person saw still serves."""

    def change(db: Session, actor: Actor, notifier: Notifier) -> str:
        result = lifecycle.rollback(
            db,
            prompt=name,
            target=target or None,
            actor=actor,
            notifier=notifier,
            now=utcnow(),
            reason=reason.strip(),
            expected_version=expected_version or None,
        )
        return f"Rolled back {result.from_version} → {result.to_version}."

    return _act(request, settings, engine, notifier, name, csrf, change)


@router.post("/prompts/{name}/deploy")
def deploy(
    name: str,
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    notifier: NotifierDep,
    csrf: Annotated[str, Form()] = "",
    version: Annotated[str, Form(max_length=64)] = "",
    reason: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """Put a registered version live, all traffic at once."""

    def change(db: Session, actor: Actor, notifier: Notifier) -> str:
        result = lifecycle.deploy(
            db,
            prompt=name,
            version=version,
            actor=actor,
            notifier=notifier,
            now=utcnow(),
            reason=reason.strip(),
        )
        return f"Deployed {result.to_version} (was {result.from_version or 'nothing'})."

    return _act(request, settings, engine, notifier, name, csrf, change)


@router.post("/prompts/{name}/split")
def split(
    name: str,
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    notifier: NotifierDep,
    csrf: Annotated[str, Form()] = "",
    version: Annotated[str, Form(max_length=64)] = "",
    percent: Annotated[int, Form(ge=1, le=99)] = 10,
    expected_revision: Annotated[int, Form()] = 0,
    reason: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """Send `percent` of the traffic to `version`, the rest staying on the live version."""

    def change(db: Session, actor: Actor, notifier: Notifier) -> str:
        lock_routing(db, get_prompt(db, name))  # nobody changes it between this check and ours
        seen = registry.prompt_detail(session=db, name=name)
        live = seen.active_version
        if seen.revision != expected_revision or not live or seen.split:
            raise BotError(
                f"{name}'s traffic changed since the page was shown (it is at revision "
                f"{seen.revision}); reload the page and choose again"
            )
        if version == live:
            raise BotError(f"{version} already serves all traffic; choose another version")
        shares = {live: 100 - percent, version: percent}
        lifecycle.split(
            db,
            prompt=name,
            shares=shares,
            actor=actor,
            notifier=notifier,
            now=utcnow(),
            reason=reason.strip(),
        )
        return f"Split: {live} {100 - percent}%, {version} {percent}%."

    return _act(request, settings, engine, notifier, name, csrf, change)


@router.post("/prompts/{name}/rollouts")
def start_rollout(
    name: str,
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    notifier: NotifierDep,
    csrf: Annotated[str, Form()] = "",
    kind: Annotated[RolloutKind, Form()] = RolloutKind.CANARY,
    version: Annotated[str, Form(max_length=64)] = "",
    reason: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """A canary of a new version, or a gradual rollback, its first stage at once."""
    stage = policies_of(request).for_prompt(name).settings.rollout_stage(kind.value)

    def change(db: Session, actor: Actor, notifier: Notifier) -> str:
        rollout = lifecycle.start_rollout(
            db,
            prompt=name,
            kind=kind,
            version=version or None,
            actor=actor,
            stage_seconds=stage.total_seconds(),
            notifier=notifier,
            now=utcnow(),
            reason=reason.strip(),
        )
        return f"Started: {rollouts.describe(rollout)}."

    return _act(request, settings, engine, notifier, name, csrf, change)


@router.post("/prompts/{name}/rollouts/{rollout_id}/{verb}")
def end_rollout(
    name: str,
    rollout_id: int,
    verb: Literal["finish", "abort"],
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    notifier: NotifierDep,
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """Finish a rollout now, or abort it."""

    def change(db: Session, actor: Actor, notifier: Notifier) -> str:
        rollout = lifecycle.end_rollout(
            db,
            rollout_id=rollout_id,
            finishing=verb == "finish",
            actor=actor,
            notifier=notifier,
            now=utcnow(),
        )
        return f"{'Finished' if verb == 'finish' else 'Aborted'}: {rollouts.describe(rollout)}."

    return _act(request, settings, engine, notifier, name, csrf, change)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


@router.get("/incidents/{incident_id}")
def incident_page(
    incident_id: int, request: Request, engine: EngineDep, settings: SettingsDep
) -> Response:
    """An incident: its timeline, what fired, the chart around it, the post-mortem draft."""
    from bot.slack.blocks import in_words  # Slack's wording of a rule (loads slack_sdk)

    session = _session(request, settings)
    if session is None:
        return _to_sign_in()
    policies = policies_of(request)
    with read_session(engine) as db:
        incident = incident_detail(db, incident_id)
        since = incident.opened_at - timedelta(hours=1)
        prompt = get_prompt(db, incident.prompt)
        shown = (incident.version, _restored(db, incident.rollback_audit_id))
        found = data.chart_data(db, prompt.id or 0, since, timedelta(minutes=1), shown)
    chart = _chart(
        f"{incident.prompt} around incident #{incident_id}", found, policies, incident.prompt
    )
    return _page(
        request, settings, session, "incident.html", incident=incident, chart=chart, words=in_words
    )


def _restored(db: Session, audit_id: int | None) -> str | None:
    """The version the incident's rollback put back, if it was rolled back."""
    entry = db.get(AuditEntry, audit_id) if audit_id is not None else None
    return entry.to_version if entry is not None else None


@router.get("/stream")
async def stream(request: Request, settings: SettingsDep, overview: bool = False) -> Response:
    """Server-Sent Events for the open pages (the session cookie): every routing change, and
    with `overview=1` the overview rows whose figures, verdict, incident or rollout changed."""
    if _session(request, settings) is None:
        return Response(status_code=401)
    feed = request.app.state.feed
    routing = feed.subscribe()
    rows_feed = _overview_feed(request) if overview else None
    rows = rows_feed.subscribe() if rows_feed is not None else None

    async def events() -> AsyncIterator[str]:
        waiting: dict[asyncio.Task[Any], str] = {}
        try:
            yield ": connected\n\n"
            while not await request.is_disconnected():
                if "routing" not in waiting.values():
                    waiting[asyncio.ensure_future(routing.get())] = "routing"
                if rows is not None and "rows" not in waiting.values():
                    waiting[asyncio.ensure_future(rows.get())] = "rows"
                done, _ = await asyncio.wait(
                    waiting, timeout=15, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    yield ": keep-alive\n\n"
                    continue
                for task in done:
                    kind, item = waiting.pop(task), task.result()
                    if item is None:
                        return
                    if kind == "routing":
                        yield f"event: routing\ndata: {item.model_dump_json()}\n\n"
                    else:
                        yield f"event: rows\ndata: {json.dumps(item)}\n\n"
        finally:
            for task in waiting:
                task.cancel()
            feed.unsubscribe(routing)
            if rows_feed is not None and rows is not None:
                rows_feed.unsubscribe(rows)

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )


def _overview_feed(request: Request) -> OverviewFeed:
    """The process's one live overview (made when the first overview page opens)."""
    state = request.app.state
    found: OverviewFeed | None = getattr(state, "overview_feed", None)
    if found is None:
        engine = state.engine
        found = OverviewFeed(engine, lambda: policies_of(request))
        state.overview_feed = found
    return found


root = APIRouter(include_in_schema=False)


@root.get("/")
def home() -> RedirectResponse:
    """The dashboard is the server's home page."""
    return RedirectResponse("/ui", status_code=307)
