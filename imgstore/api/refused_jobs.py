"""A job API refused before its job starts answers 202 and a failed job (issue 16 point 1).

ZStack's RestServer accepts a job API (202 + location) once the request names a usable
job uuid; the session and the message are checked by the job, so an expired session is
``ID.1001`` on the poll (503), not a 401. The Java SDK depends on that: a 4xx on the first
request becomes its opaque ``sdk.1000`` (re-login code keyed on ID.1001 never fires), and
``call(Completion)`` never calls back. So when a request that
asked for a job (``X-Job-UUID`` or ``Prefer: respond-async``) to a route that runs as one
(it depends on :func:`deps.api_call`) is refused before the job exists, the refusal is
recorded as a finished job instead. Not turned into jobs, as in ZStack: a malformed or
reused X-Job-UUID (immediate 400), anything but POST/PUT/DELETE, and refusals beyond the
node's :class:`RefusalBudget` (answered at once, so one source cannot fill the table).
"""
from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from imgstore.api.deps import api_call, asks_for_job, base_url, job_accepted
from imgstore.crypto import new_uuid
from imgstore.errors import ApiError
from imgstore.services.node.jobs import check_job_uuid
from imgstore.services.node.runtime import Runtime

_JOB_METHODS = ("POST", "PUT", "DELETE")


async def as_refused_job(request: Request, error: ApiError) -> JSONResponse | None:
    """202 and a job failed with ``error``, when the request asked for a job; else None
    (the caller answers ``error`` itself). A malformed or reused job uuid answers its own 400."""
    route = request.scope.get("route")
    if request.method not in _JOB_METHODS or not _runs_as_job(route):
        return None
    header = request.headers.get("x-job-uuid")
    if not asks_for_job(header, request.headers.get("prefer")):
        return None
    try:
        job_uuid = check_job_uuid(header) if header else new_uuid()
    except ApiError as malformed:  # ZStack's 400 at once, whatever else is wrong
        return JSONResponse(malformed.body(), status_code=malformed.status)
    rt: Runtime = request.app.state.runtime
    if not rt.refusals.take(request.client.host if request.client else ""):
        return None
    try:
        await rt.jobs.refuse(job_uuid, _api_name(route), error)
    except ApiError as duplicate:
        return JSONResponse(duplicate.body(), status_code=duplicate.status)
    return job_accepted(base_url(rt, request), job_uuid)


def _runs_as_job(route: object) -> bool:
    return isinstance(route, APIRoute) and any(d.call is api_call for d in route.dependant.dependencies)


def _api_name(route: APIRoute) -> str:
    return (route.summary or route.name)[:128]
