"""The ASGI application: routers under ``/zstack/v1`` (and ``/v1``), ZStack error bodies."""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from imgstore import lifecycle as node
from imgstore import logs, metrics
from imgstore.api import openapi
from imgstore.api.body_limit import BodyLimit
from imgstore.api.deps import refuse_nul, require_session
from imgstore.api.export_slots import ExportSlots
from imgstore.api.refused_jobs import as_refused_job
from imgstore.api.reply_cache import ReplyCache
from imgstore.api.routes import (
    backup_storage,
    ceph_mons,
    exports,
    image_migration,
    images,
    jobs,
    sessions,
    tags,
    trash,
    web,
    zones,
)
from imgstore.api.schemas import NUL_CHARACTER, NUL_MESSAGE
from imgstore.config import Settings
from imgstore.errors import INTERNAL, INVALID_ARGUMENT, UNKNOWN_MESSAGE, ApiError, ErrorKind

log = logging.getLogger(__name__)

PREFIXES = ("/zstack/v1", "/v1")  # the Java SDK's default context path is empty


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app_metrics = metrics.Metrics()  # this app's own registry: apps in one process never share one

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if threading.current_thread() is threading.main_thread():  # signals reach it only
            # kill -USR1: where a server that does not answer or does not stop is waiting
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, logs.dump_waits)
        app.state.runtime = await node.start(settings)
        app.state.runtime.metrics = app_metrics
        try:
            yield
        finally:
            await node.stop(app.state.runtime)

    app = FastAPI(
        title="imgstore",
        summary="Distributed VM image storage on Ceph behind a ZStack-compatible API",
        version="0.1.0",
        lifespan=lifespan,
    )
    for prefix in PREFIXES:
        _include_api(app, prefix, in_schema=prefix == PREFIXES[0])
    app.include_router(web.router)  # the operator console at /, outside the API prefixes
    app.include_router(metrics.router)  # no session: Prometheus scrapes it (see imgstore.metrics)
    _install_error_handlers(app)
    app.state.export_slots = ExportSlots(settings.export_max_per_link, settings.export_max_total)
    openapi.install(app)  # what no decorator can say (the 202 of every job API)
    # the last added runs first: request id, then the body's bound, then JSON bodies, then
    # metrics, which must see the scope dict the router writes its route into (JsonBodyByDefault copies it),
    # then kept replies, which the three outer ones see like any other
    if settings.reply_cache_entries > 0:
        app.add_middleware(ReplyCache, max_entries=settings.reply_cache_entries, prefixes=PREFIXES,
                           kept_list_rows=settings.kept_list_rows)
    app.add_middleware(metrics.MetricsMiddleware, metrics=app_metrics, prefixes=PREFIXES)
    app.add_middleware(JsonBodyByDefault)
    # bodies are bounded before anything (the session check included) reads them
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(logs.RequestContext)
    return app


def _include_api(app: FastAPI, prefix: str, in_schema: bool) -> None:
    """Every API router straight under the app, each with the dependencies it needs.

    Flat on purpose: FastAPI matches a request by walking its included routers, again
    at every level it nests, and with the routers nested two deep that walk was half
    the CPU of a request that needs no database (measured with cProfile)."""
    # every route documents the ErrorCode bodies (never 422) and refuses U+0000 before
    # anything reads the request (refuse_nul, which require_session runs first)
    public = [
        sessions.router,
        jobs.router,
        exports.router,  # no session: the export URL's token is the credential
        images.upload_router,  # no session: the upload URL's token is the credential
    ]
    # trash and image_migration hold fixed paths under /backup-storage/: before its {uuid}
    authed = [trash.router, image_migration.router, backup_storage.router, ceph_mons.router, zones.router,
              tags.router, images.router]
    for router in public:
        app.include_router(router, prefix=prefix, include_in_schema=in_schema,
                           dependencies=[Depends(refuse_nul)], responses=openapi.ERROR_RESPONSES)
    for router in authed:
        app.include_router(router, prefix=prefix, include_in_schema=in_schema,
                           dependencies=[Depends(require_session)],
                           responses={**openapi.ERROR_RESPONSES, **openapi.SESSION_ERRORS})


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return await as_refused_job(request, e) or JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError) -> JSONResponse:
        error = _validation_error(e)
        return await as_refused_job(request, error) or JSONResponse(error.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        headers = dict(e.headers or {})
        if e.status_code == 404:
            details = f"no api mapping to {request.method} {request.url.path}"
        elif e.status_code == 405:
            details = f"method {request.method} is not served on {request.url.path}"
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        else:
            details = str(e.detail)
        kind = ErrorKind(UNKNOWN_MESSAGE.code, UNKNOWN_MESSAGE.description, e.status_code)
        return JSONResponse(ApiError(kind, details).body(), status_code=e.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        err = ApiError(INTERNAL, f"{request.method} {request.url.path} failed unexpectedly; see the server log")
        return JSONResponse(err.body(), status_code=500)


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route serves at the scope's path: a 405's ``Allow`` (RFC 9110).
    Starlette's own 405 carries none here (FastAPI's included routers answer it), and
    one path (``/backup-storage/{uuid}``) is served by several routes. Asked only on a 405."""
    allowed = []
    for method in _METHODS:
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in app.router.routes):
            allowed.append(method)
    return allowed


_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
_SECRET_WORDS = ("password", "monurl", "key", "secret", "token")


def _validation_error(e: RequestValidationError) -> ApiError:
    """Pydantic's first complaints in ZStack's words, naming the field.

    The bad value is echoed only when it is a plain scalar of a field that cannot hold
    a secret: a password or a monUrl must never come back in an error.
    """
    messages = []
    for err in e.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        name = ".".join(loc) or "body"
        kind = err.get("type", "")
        if kind == "missing":
            messages.append(f"field[{name}] is mandatory, can not be null")
        elif kind == "json_invalid":
            messages.append("the body is not valid JSON")
        elif kind == NUL_CHARACTER:  # the model's own words, the field named from the body's top
            messages.append(NUL_MESSAGE.format(field=".".join([*loc, err["ctx"]["field"]])))
        elif name == "body":
            messages.append("the body must be a JSON object")
        else:
            messages.append(f"field[{name}]{_shown_value(name, err.get('input'))} is invalid: {err.get('msg')}")
    return ApiError(INVALID_ARGUMENT, "; ".join(messages[:5]) or "invalid request")


def _shown_value(name: str, value: object) -> str:
    if any(w in name.lower() for w in _SECRET_WORDS):
        return ""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return f" value[{json.dumps(value)[:200]}]"
    return ""


class JsonBodyByDefault:
    """Treat a body sent without a JSON content type as JSON.

    ``curl -d`` sends ``application/x-www-form-urlencoded``; ZStack's API only speaks
    JSON, so reading such a body as JSON is what the caller meant. Other types (image
    uploads) pass untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            ctype = dict(scope["headers"]).get(b"content-type", b"")
            if not ctype or ctype.startswith(b"application/x-www-form-urlencoded"):
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
