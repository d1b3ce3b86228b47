"""Job polling: ``GET /zstack/v1/api-jobs/{uuid}``, unauthenticated as in ZStack (the Java
SDK polls with ``OAuth null`` when it uses access keys).

A job's answer may carry a bearer URL (an upload or export ``?token=``). It is given in
full only to a poll carrying a valid session (the Java SDK sends its session on polls);
any other poll gets the same reply with the tokens masked (services/jobs.mask_tokens).
"""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from imgstore.api.deps import runtime
from imgstore.api.openapi import EmptyReply, ErrorReply
from imgstore.errors import RESOURCE_NOT_FOUND, ApiError
from imgstore.services.node import sessions
from imgstore.services.node.jobs import PROCESSING, SUCCEEDED, mask_tokens
from imgstore.services.node.runtime import Runtime

router = APIRouter(tags=["jobs"])


@router.get(
    "/api-jobs/{uuid}",
    summary="Poll an async API job",
    responses={
        200: {"description": "the job succeeded: the API's own reply"},
        202: {"model": EmptyReply, "description": "the job is still running"},
        503: {"model": ErrorReply, "description": "the job failed: the API's ErrorCode"},
    },
)
async def poll_job(uuid: str, request: Request, rt: Runtime = Depends(runtime)) -> JSONResponse:
    """202 ``{}`` while it runs, 200 with its result, 503 with its error, 404 unknown."""
    job = await rt.jobs.get(uuid)
    if job is None:
        raise ApiError(RESOURCE_NOT_FOUND, f"the job[uuid:{uuid}] has been expired or never existed")
    if job.state == PROCESSING:
        return JSONResponse({}, status_code=202)
    body = rt.jobs.answer(job)
    if not await _has_session(rt, request):
        body = mask_tokens(body)
    return JSONResponse(body, status_code=200 if job.state == SUCCEEDED else 503)


async def _has_session(rt: Runtime, request: Request) -> bool:
    try:
        await sessions.authenticate(rt.db, request.headers.get("authorization"))
    except ApiError:
        return False
    return True
