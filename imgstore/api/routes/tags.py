"""Tag routes: QuerySystemTag, QueryUserTag, CreateSystemTag, CreateUserTag,
UpdateSystemTag and DeleteTag."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse

from imgstore.api.actions import ActionTable, dispatch, parse_params
from imgstore.api.deps import ApiCall, api_call, query_spec, runtime
from imgstore.api.envelope import JsonReply, inventory_reply, rows_reply
from imgstore.api.openapi import EmptyReply, InventoryReply, action_api, job_api, query_api
from imgstore.api.reply_cache import cacheable
from imgstore.api.schemas import (
    CreateTagBody,
    DeleteMode,
    SystemTagInventory,
    UpdateSystemTagParams,
    UserTagInventory,
    tag_inventory,
    tag_inventory_class,
)
from imgstore.services.catalog import tags
from imgstore.services.node.runtime import Runtime

router = APIRouter(tags=["tags"])


async def _query(request: Request, rt: Runtime, uuid: str | None, kind: str) -> JsonReply:
    spec = query_spec(request, uuid)
    rows, total = await tags.query(rt, spec, kind)
    if spec.count:
        return JsonReply({"total": total})
    return JsonReply(rows_reply(rows, tag_inventory_class, total, spec.fields))


@cacheable
@router.get("/system-tags", summary="QuerySystemTag", **query_api(tags.SYSTEM_TAG_QUERY, SystemTagInventory))
async def query_system_tag(request: Request, rt: Runtime = Depends(runtime)) -> JsonReply:
    return await _query(request, rt, None, tags.SYSTEM)


@cacheable
@router.get(
    "/system-tags/{uuid}", summary="QuerySystemTag by uuid", **query_api(tags.SYSTEM_TAG_QUERY, SystemTagInventory)
)
async def get_system_tag(uuid: str, request: Request, rt: Runtime = Depends(runtime)) -> JsonReply:
    return await _query(request, rt, uuid, tags.SYSTEM)


@cacheable
@router.get("/user-tags", summary="QueryUserTag", **query_api(tags.USER_TAG_QUERY, UserTagInventory))
async def query_user_tag(request: Request, rt: Runtime = Depends(runtime)) -> JsonReply:
    return await _query(request, rt, None, tags.USER)


@cacheable
@router.get("/user-tags/{uuid}", summary="QueryUserTag by uuid", **query_api(tags.USER_TAG_QUERY, UserTagInventory))
async def get_user_tag(uuid: str, request: Request, rt: Runtime = Depends(runtime)) -> JsonReply:
    return await _query(request, rt, uuid, tags.USER)


async def _create(kind: str, api_name: str, body: CreateTagBody, call: ApiCall) -> JSONResponse:
    p = body.params

    async def work() -> dict[str, Any]:
        row = await tags.create(call.rt, kind, p.resourceType, p.resourceUuid, p.tag)
        return inventory_reply(tag_inventory(row), call.with_schema)

    return await call.run(api_name, work)


@router.post("/system-tags", summary="CreateSystemTag", **job_api(InventoryReply[SystemTagInventory]))
async def create_system_tag(body: CreateTagBody, call: ApiCall = Depends(api_call)) -> JSONResponse:
    return await _create(tags.SYSTEM, "CreateSystemTag", body, call)


@router.post("/user-tags", summary="CreateUserTag", **job_api(InventoryReply[UserTagInventory]))
async def create_user_tag(body: CreateTagBody, call: ApiCall = Depends(api_call)) -> JSONResponse:
    return await _create(tags.USER, "CreateUserTag", body, call)


async def _update_system_tag(call: ApiCall, uuid: str, params: dict[str, Any]) -> JSONResponse:
    p = parse_params(UpdateSystemTagParams, "updateSystemTag", params)

    async def work() -> dict[str, Any]:
        row = await tags.update_system_tag(call.rt, uuid, p.tag)
        return inventory_reply(tag_inventory(row), call.with_schema)

    return await call.run("UpdateSystemTag", work)


SYSTEM_TAG_ACTIONS: ActionTable = {"updateSystemTag": _update_system_tag}


@router.put(
    "/system-tags/{uuid}/actions", summary="UpdateSystemTag",
    **action_api(
        SYSTEM_TAG_ACTIONS, {"updateSystemTag": UpdateSystemTagParams}, InventoryReply[SystemTagInventory]
    ),
)
async def system_tag_actions(
    uuid: str, request: Request, body: dict[str, Any] = Body(), call: ApiCall = Depends(api_call)
) -> JSONResponse:
    return await dispatch(SYSTEM_TAG_ACTIONS, call, uuid, body, request.url.path)


@router.delete("/tags/{uuid}", summary="DeleteTag", **job_api(EmptyReply))
async def delete_tag(
    uuid: str, deleteMode: DeleteMode = "Permissive", call: ApiCall = Depends(api_call)
) -> JSONResponse:
    async def work() -> dict[str, Any]:
        await tags.delete_tag(call.rt, uuid)
        return {}

    return await call.run("DeleteTag", work)
