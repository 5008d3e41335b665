"""The single place where errors become HTTP answers."""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bot.db import describe, is_transient
from bot.errors import (
    BotError,
    Conflict,
    DatabaseUnavailable,
    InvalidEvents,
    InvalidRequest,
    NotFound,
    SchemaOutOfDate,
    VersionNotFound,
)

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"

_STATUS: list[tuple[type[BotError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (InvalidRequest, 422),
    (DatabaseUnavailable, 503),
    (SchemaOutOfDate, 503),
]


def status_for(exc: BotError) -> int:
    """The HTTP status of a domain error."""
    return next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)


async def _bot_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BotError)
    body: dict[str, object] = {"error": exc.code, "detail": exc.message}
    if isinstance(exc, VersionNotFound):
        body["recent_versions"] = exc.recent_versions
    if isinstance(exc, InvalidEvents):
        body["problems"] = exc.problems
    code = status_for(exc)
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if code == 503 else None
    return JSONResponse(body, status_code=code, headers=headers)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """A database fault that reached a route untranslated: 503 when it is the database's
    state (down, read-only, full, busy), a bug (500) otherwise."""
    assert isinstance(exc, DBAPIError)
    if not is_transient(exc):
        return await _unexpected(request, exc)
    return await _bot_error(request, DatabaseUnavailable(describe(exc)))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if any(err.get("type") == "json_invalid" for err in exc.errors()):
        try:
            (await request.body()).decode("utf-8")
        except UnicodeDecodeError:  # json.loads would guess UTF-16/32 from the first bytes
            return JSONResponse(
                {"error": "bad_request", "detail": "the body is not UTF-8; send UTF-8 JSON"},
                status_code=400,
            )
    problems = [
        {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
        for err in exc.errors()
    ]
    if request.url.path.startswith("/ui/"):  # a dashboard form: a page, not JSON
        from bot.api.routes.dashboard import problem_page

        return problem_page(request, exc.errors())
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return JSONResponse(
        {"error": "invalid_request", "detail": summary, "problems": problems}, status_code=422
    )


OFREP_FLAGS = "/ofrep/v1/evaluate/flags/"


def _ofrep_miss(path: str, exc: StarletteHTTPException) -> JSONResponse:
    """No OFREP route matched (a key holding "/", a wrong method): OFREP's error format, which
    OpenFeature's providers read; a key that cannot be a prompt's name is FLAG_NOT_FOUND."""
    body: dict[str, str] = {"errorCode": "GENERAL", "errorDetails": str(exc.detail)}
    if exc.status_code == 404 and path.startswith(OFREP_FLAGS):
        key = path.removeprefix(OFREP_FLAGS)
        body = {
            "key": key,
            "errorCode": "FLAG_NOT_FOUND",
            "errorDetails": f"no prompt named {key!r}",
        }
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (404, 405) and request.url.path.startswith("/ofrep/"):
        return _ofrep_miss(request.url.path, exc)
    code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    return JSONResponse(
        {"error": code, "detail": exc.detail},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    error_id = uuid.uuid4().hex[:12]
    log.error("unexpected error %s", error_id, exc_info=exc)
    return JSONResponse(
        {"error": "internal", "detail": f"unexpected error; quote id {error_id} when reporting"},
        status_code=500,
    )


def install(app: FastAPI) -> None:
    """Register every exception handler on the app."""
    app.add_exception_handler(BotError, _bot_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
