"""LogInByAccount, LogOut, ValidateSession: ZStack's session APIs (always synchronous)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from imgstore.api.deps import runtime, wants_schema
from imgstore.api.envelope import inventory_reply
from imgstore.api.openapi import EmptyReply, ErrorReply, InventoryReply, ValidateSessionReply, sync_api
from imgstore.api.schemas import LogInByAccountBody, SessionInventory
from imgstore.services import sessions
from imgstore.services.runtime import Runtime

router = APIRouter(tags=["sessions"])


@router.put(
    "/accounts/login", summary="LogInByAccount",
    response_model=None,
    responses={
        200: {"model": InventoryReply[SessionInventory]},
        401: {"model": ErrorReply, "description": "ID.1000: wrong account name or password"},
    },
)
async def log_in_by_account(
    body: LogInByAccountBody, request: Request, rt: Runtime = Depends(runtime)
) -> dict:
    p = body.logInByAccount
    async with rt.db() as db:
        session = await sessions.log_in(db, rt.settings, p.accountName, p.password)
    return inventory_reply(SessionInventory.model_validate(session), wants_schema(request))


@router.delete("/accounts/sessions/{sessionUuid}", summary="LogOut", **sync_api(EmptyReply))
async def log_out(sessionUuid: str, rt: Runtime = Depends(runtime)) -> dict:
    async with rt.db() as db:
        await sessions.log_out(db, sessionUuid)
    return {}


@router.get("/accounts/sessions/{sessionUuid}/valid", summary="ValidateSession", **sync_api(ValidateSessionReply))
async def validate_session(sessionUuid: str, rt: Runtime = Depends(runtime)) -> dict:
    async with rt.db() as db:
        return {"valid": await sessions.find_valid(db, sessionUuid) is not None}
