"""Job polling: ``GET /zstack/v1/api-jobs/{uuid}``, unauthenticated as in ZStack (the Java
SDK polls with ``OAuth null`` when it uses access keys)."""
from __future__ import annotations

import json

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from imgstore.api.deps import runtime
from imgstore.api.openapi import EmptyReply, ErrorReply
from imgstore.errors import RESOURCE_NOT_FOUND, ApiError
from imgstore.services.jobs import PROCESSING, SUCCEEDED
from imgstore.services.runtime import Runtime

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
async def poll_job(uuid: str, rt: Runtime = Depends(runtime)) -> JSONResponse:
    """202 ``{}`` while it runs, 200 with its result, 503 with its error, 404 unknown."""
    job = await rt.jobs.get(uuid)
    if job is None:
        raise ApiError(RESOURCE_NOT_FOUND, f"the job[uuid:{uuid}] has been expired or never existed")
    if job.state == PROCESSING:
        return JSONResponse({}, status_code=202)
    body = json.loads(job.result or "{}")
    return JSONResponse(body, status_code=200 if job.state == SUCCEEDED else 503)
