"""What every route needs: the runtime, the caller's session, and sync-or-async answering."""
from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, Header, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader

from imgstore.crypto import new_uuid
from imgstore.db.models import Session
from imgstore.errors import INVALID_ARGUMENT, ApiError
from imgstore.services.node import sessions
from imgstore.services.node.jobs import check_job_uuid
from imgstore.services.node.runtime import Runtime
from imgstore.wire.query import Condition, QueryError, QuerySpec, parse_query

JOBS_PATH = "zstack/v1/api-jobs"
API_TIMEOUT_MS = 3 * 3600 * 1000


# Dependencies are ``async def`` even when they do not await: FastAPI runs a plain
# ``def`` dependency in its thread pool, a thread hop on every request.


async def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def refuse_nul(request: Request) -> None:
    """No API takes U+0000 in its path or query string: PostgreSQL cannot store it in text
    (a 500 there, found by the fuzz run), and no name, uuid or tag of ZStack's holds one.
    A body's named fields are checked by their model (``schemas.RequestModel``)."""
    if "\x00" in request.scope["path"] or any("\x00" in k + v for k, v in request.query_params.multi_items()):
        raise ApiError(INVALID_ARGUMENT, "the URL contains the character U+0000, which no API accepts")


# auto_error=False: a missing header is sessions.authenticate's ID.1001, not FastAPI's 403
_SESSION_HEADER = APIKeyHeader(
    name="Authorization", scheme_name="OAuth", auto_error=False,
    description="`OAuth <session uuid>`, the uuid from LogInByAccount",
)


async def require_session(request: Request, authorization: str | None = Security(_SESSION_HEADER)) -> Session:
    """``Authorization: OAuth <session uuid>`` naming a live session, or ID.1001; and,
    before that, :func:`refuse_nul`. One dependency for both: FastAPI's solving of each
    dependency is a good part of what a request that needs no database costs."""
    await refuse_nul(request)
    if len(request.headers.getlist("authorization")) > 1:
        # which one would count? the reply cache and this check must never disagree
        raise ApiError(INVALID_ARGUMENT, "the request carries more than one Authorization header")
    session = await sessions.authenticate((await runtime(request)).db, authorization)
    request.state.session = session  # api/reply_cache.py keeps a reply only as long as it lives
    request.state.session_header = authorization  # ... and only under the header that proved it
    return session


def wants_schema(request: Request) -> bool:
    return _is_true(request.headers.get("x-json-schema"))


def _is_true(header: str | None) -> bool:
    return (header or "").strip().lower() == "true"


@dataclasses.dataclass
class ApiCall:
    """One call of an API that ZStack runs as a job (creates, actions, deletes).

    It answers at once (200 + result) unless the client asked for a job with
    ``Prefer: respond-async`` or an ``X-Job-UUID`` header (the Java SDK always sends
    one): then 202 + the job's location, which is always under ``/zstack/v1/api-jobs/``
    because the SDK rewrites poll URLs around that marker.
    """

    rt: Runtime
    with_schema: bool
    job_uuid: str | None
    asynchronous: bool
    base_url: str

    async def run(self, api_name: str, work: Callable[[], Awaitable[dict[str, Any]]]) -> JSONResponse:
        if not self.asynchronous:
            return JSONResponse(await work())
        job_uuid = self.job_uuid or new_uuid()
        await self.rt.jobs.submit(job_uuid, api_name, work)
        return job_accepted(self.base_url, job_uuid)


def job_accepted(base: str, job_uuid: str) -> JSONResponse:
    """202 and where to poll the job."""
    location = f"{base.rstrip('/')}/{JOBS_PATH}/{job_uuid}"
    return JSONResponse({"location": location, "apiTimeout": API_TIMEOUT_MS}, status_code=202)


def asks_for_job(job_header: str | None, prefer: str | None) -> bool:
    """Whether a request asks to run as a job: ``X-Job-UUID`` or ``Prefer: respond-async``."""
    return bool(job_header) or "respond-async" in (prefer or "").lower()


async def api_call(
    request: Request,
    rt: Runtime = Depends(runtime),
    job: str | None = Header(
        None, alias="X-Job-UUID", description="run as a job with this uuid (32 hex digits, no dashes)",
        json_schema_extra={"pattern": "^[0-9a-fA-F]{32}$"},
    ),
    prefer: str | None = Header(None, alias="Prefer", description="`respond-async`: run as a job"),
    json_schema: str | None = Header(
        None, alias="X-JSON-Schema", description="`true`: add the `schema` map to the reply"
    ),
) -> ApiCall:
    return ApiCall(
        rt=rt,
        with_schema=_is_true(json_schema),
        job_uuid=check_job_uuid(job) if job is not None else None,  # an empty one is 400, as in ZStack
        asynchronous=asks_for_job(job, prefer),
        base_url=base_url(rt, request),
    )


def base_url(rt: Runtime, request: Request) -> str:
    """Where stored URLs (job locations, upload and export URLs) point: the configured
    ``public_url``, else the address ``imgstore serve`` listens on, else the address this
    connection reached. Never the request's ``Host`` header: any client could otherwise
    plant its own host in an export or upload URL that others are later handed."""
    if rt.settings.public_url:
        return rt.settings.public_url
    if rt.settings.listen_url:
        return rt.settings.listen_url
    host, port = request.scope.get("server") or ("127.0.0.1", 80)
    return f"{request.scope.get('scheme', 'http')}://{_url_host(host)}:{port}/"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def query_spec(request: Request, uuid: str | None = None) -> QuerySpec:
    """The ZStack query of a GET; ``/{uuid}`` is the condition ``uuid=<uuid>``."""
    try:
        spec = parse_query(request.query_params.multi_items())
    except QueryError as e:
        raise ApiError(INVALID_ARGUMENT, str(e)) from None
    if uuid is not None:
        spec = dataclasses.replace(spec, conditions=(*spec.conditions, Condition("uuid", "=", uuid)))
    return spec
