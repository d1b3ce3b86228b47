"""Tag routes: QuerySystemTag, QueryUserTag, CreateSystemTag, CreateUserTag,
UpdateSystemTag and DeleteTag."""
from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from imgstore.api.actions import Action, ActionTable
from imgstore.api.deps import ApiCall, api_call
from imgstore.api.envelope import inventory_reply
from imgstore.api.openapi import InventoryReply, job_api
from imgstore.api.route_shapes import QueryRoutes, delete_route
from imgstore.api.schemas import (
    CreateTagBody,
    SystemTagInventory,
    UpdateSystemTagParams,
    UserTagInventory,
    tag_inventory,
    tag_inventory_class,
)
from imgstore.services.catalog import tags

router = APIRouter(tags=["tags"])


QueryRoutes("QuerySystemTag", "/system-tags", tags.SYSTEM_TAG_QUERY, (SystemTagInventory,),
            functools.partial(tags.query, kind=tags.SYSTEM), tag_inventory_class,
            ).route(router, name="query_system_tag", by_uuid_name="get_system_tag")
QueryRoutes("QueryUserTag", "/user-tags", tags.USER_TAG_QUERY, (UserTagInventory,),
            functools.partial(tags.query, kind=tags.USER), tag_inventory_class,
            ).route(router, name="query_user_tag", by_uuid_name="get_user_tag")


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


async def _update_system_tag(call: ApiCall, uuid: str, p: UpdateSystemTagParams) -> dict[str, Any]:
    row = await tags.update_system_tag(call.rt, uuid, p.tag)
    return inventory_reply(tag_inventory(row), call.with_schema)


SYSTEM_TAG_ACTIONS = ActionTable(Action("UpdateSystemTag", UpdateSystemTagParams, _update_system_tag))
SYSTEM_TAG_ACTIONS.route(router, "/system-tags/{uuid}/actions", InventoryReply[SystemTagInventory],
                         name="system_tag_actions")


delete_route(router, "/tags/{uuid}", "DeleteTag", lambda rt, uuid, mode: tags.delete_tag(rt, uuid),
             name="delete_tag")
