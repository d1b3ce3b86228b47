"""LogInByAccount, LogOut, ValidateSession: ZStack's session APIs (synchronous), and
RenewSession (a job API that needs a session, as in ZStack)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from imgstore.api.deps import ApiCall, api_call, require_session, runtime, wants_schema
from imgstore.api.envelope import inventory_reply
from imgstore.api.openapi import (
    EmptyReply,
    ErrorReply,
    InventoryReply,
    ValidateSessionReply,
    job_api,
    sync_api,
)
from imgstore.api.schemas import LogInByAccountBody, RenewSessionBody, SessionInventory
from imgstore.services.node import sessions
from imgstore.services.node.login_guard import LoginThrottled
from imgstore.services.node.runtime import Runtime

router = APIRouter(tags=["sessions"])


@router.put(
    "/accounts/login", summary="LogInByAccount",
    response_model=None,
    responses={
        200: {"model": InventoryReply[SessionInventory]},
        401: {"model": ErrorReply, "description": "ID.1000: wrong account name or password"},
        429: {"model": ErrorReply, "description": "ID.1000: too many failed logins; retry after `Retry-After` seconds"},
    },
)
async def log_in_by_account(
    body: LogInByAccountBody, request: Request, rt: Runtime = Depends(runtime)
) -> dict[str, Any] | JSONResponse:
    p = body.logInByAccount
    address = request.client.host if request.client else ""
    try:
        async with rt.db() as db:
            session, uuid = await sessions.log_in(db, rt.settings, rt.login_guard, address,
                                                  p.accountName, p.password)
    except LoginThrottled as e:
        return JSONResponse(e.body(), status_code=e.status, headers={"Retry-After": str(e.retry_after)})
    inventory = SessionInventory.model_validate(session).model_copy(update={"uuid": uuid})
    return inventory_reply(inventory, wants_schema(request))


@router.delete("/accounts/sessions/{sessionUuid}", summary="LogOut", **sync_api(EmptyReply))
async def log_out(sessionUuid: str, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    async with rt.db() as db:
        await sessions.log_out(db, sessionUuid)
    return {}


@router.put(
    "/accounts/sessions/{sessionUuid}/renew", summary="RenewSession",
    dependencies=[Depends(require_session)], **job_api(InventoryReply[SessionInventory]),
)
async def renew_session(sessionUuid: str, body: RenewSessionBody, call: ApiCall = Depends(api_call)) -> JSONResponse:
    """Needs a session, runs as a job when asked (the SDK's needPoll), like ZStack's."""
    duration = body.renewSession.duration

    async def work() -> dict[str, Any]:
        async with call.rt.db() as db:
            session = await sessions.renew(db, call.rt.settings, sessionUuid, duration)
            inventory = SessionInventory.model_validate(session).model_copy(update={"uuid": sessionUuid})
        return inventory_reply(inventory, call.with_schema)

    return await call.run("RenewSession", work)


@router.get("/accounts/sessions/{sessionUuid}/valid", summary="ValidateSession", **sync_api(ValidateSessionReply))
async def validate_session(sessionUuid: str, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    async with rt.db() as db:
        return {"valid": await sessions.find_valid(db, sessionUuid) is not None}
