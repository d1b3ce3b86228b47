"""Zone routes: CreateZone, QueryZone, UpdateZone, ChangeZoneState, DeleteZone, and
AttachBackupStorageToZone / DetachBackupStorageFromZone."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse

from imgstore.api.actions import ActionTable, dispatch, parse_params
from imgstore.api.deps import ApiCall, api_call, query_spec, runtime
from imgstore.api.envelope import JsonReply, inventories_reply, inventory_reply, rows_reply
from imgstore.api.openapi import (
    ChangeStateDoc,
    EmptyReply,
    InventoryReply,
    QueryReply,
    action_api,
    job_api,
    query_api,
    sync_api,
)
from imgstore.api.reply_cache import cacheable
from imgstore.api.schemas import (
    AttachBackupStorageToZoneBody,
    BackupStorageInventory,
    CephBackupStorageInventory,
    ChangeStateParams,
    CreateZoneBody,
    DeleteMode,
    UpdateZoneParams,
    ZoneInventory,
    backup_storage_inventory,
)
from imgstore.services.node.runtime import Runtime
from imgstore.services.storage import queryables, zones

router = APIRouter(tags=["zones"])

_Reply = InventoryReply[ZoneInventory]
_StorageReply = InventoryReply[CephBackupStorageInventory | BackupStorageInventory]


def _reply(row: Any, call: ApiCall) -> dict[str, Any]:
    return inventory_reply(ZoneInventory.model_validate(row), call.with_schema)


@router.post("/zones", summary="CreateZone", **job_api(_Reply))
async def create_zone(body: CreateZoneBody, call: ApiCall = Depends(api_call)) -> JSONResponse:
    p = body.params
    system_tags, user_tags = body.tags(p)
    request = zones.NewZone(
        name=p.name,
        description=p.description,
        resource_uuid=p.resourceUuid,
        is_default=bool(p.isDefault),
        system_tags=system_tags,
        user_tags=user_tags,
    )

    async def work() -> dict[str, Any]:
        return _reply(await zones.create(call.rt, request), call)

    return await call.run("CreateZone", work)


async def _query(request: Request, rt: Runtime, uuid: str | None) -> JsonReply:
    spec = query_spec(request, uuid)
    rows, total = await zones.query(rt, spec)
    if spec.count:
        return JsonReply({"total": total})
    return JsonReply(rows_reply(rows, lambda _: ZoneInventory, total, spec.fields))


@cacheable
@router.get("/zones", summary="QueryZone", **query_api(queryables.ZONE_QUERY, ZoneInventory))
async def query_zone(request: Request, rt: Runtime = Depends(runtime)) -> JsonReply:
    return await _query(request, rt, None)


@cacheable
@router.get("/zones/{uuid}", summary="QueryZone by uuid", **query_api(queryables.ZONE_QUERY, ZoneInventory))
async def get_zone(uuid: str, request: Request, rt: Runtime = Depends(runtime)) -> JsonReply:
    return await _query(request, rt, uuid)


@router.get("/zones/{uuid}/info", summary="GetZone", **sync_api(QueryReply[ZoneInventory]))
async def get_zone_info(uuid: str, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    """GetZone: ``{"inventories": [zone]}`` (APIGetZoneReply), 404 for an unknown uuid."""
    return inventories_reply([ZoneInventory.model_validate(await zones.load(rt, uuid))])


async def _update_zone(call: ApiCall, uuid: str, params: dict[str, Any]) -> JSONResponse:
    p = parse_params(UpdateZoneParams, "updateZone", params)

    async def work() -> dict[str, Any]:
        return _reply(await zones.update(call.rt, uuid, p.name, p.description, p.isDefault), call)

    return await call.run("UpdateZone", work)


async def _change_zone_state(call: ApiCall, uuid: str, params: dict[str, Any]) -> JSONResponse:
    p = parse_params(ChangeStateParams, "changeZoneState", params)

    async def work() -> dict[str, Any]:
        return _reply(await zones.change_state(call.rt, uuid, p.stateEvent), call)

    return await call.run("ChangeZoneState", work)


#: ``PUT /zones/{uuid}/actions``: body key → handler ``(call, uuid, params)``.
ZONE_ACTIONS: ActionTable = {
    "updateZone": _update_zone,
    "changeZoneState": _change_zone_state,
}


@router.put(
    "/zones/{uuid}/actions", summary="UpdateZone, ChangeZoneState",
    **action_api(ZONE_ACTIONS, {"updateZone": UpdateZoneParams, "changeZoneState": ChangeStateDoc}, _Reply),
)
async def zone_actions(
    uuid: str, request: Request, body: dict[str, Any] = Body(), call: ApiCall = Depends(api_call)
) -> JSONResponse:
    return await dispatch(ZONE_ACTIONS, call, uuid, body, request.url.path)


@router.delete("/zones/{uuid}", summary="DeleteZone", **job_api(EmptyReply))
async def delete_zone(
    uuid: str, deleteMode: DeleteMode = "Permissive", call: ApiCall = Depends(api_call)
) -> JSONResponse:
    async def work() -> dict[str, Any]:
        await zones.delete_zone(call.rt, uuid)
        return {}

    return await call.run("DeleteZone", work)


@router.post(
    "/zones/{zoneUuid}/backup-storage/{backupStorageUuid}", summary="AttachBackupStorageToZone",
    **job_api(_StorageReply),
)
async def attach_backup_storage_to_zone(
    zoneUuid: str,
    backupStorageUuid: str,
    body: AttachBackupStorageToZoneBody | None = None,
    call: ApiCall = Depends(api_call),
) -> JSONResponse:
    async def work() -> dict[str, Any]:
        row = await zones.attach_backup_storage(call.rt, zoneUuid, backupStorageUuid)
        return inventory_reply(backup_storage_inventory(row), call.with_schema)

    return await call.run("AttachBackupStorageToZone", work)


@router.delete(
    "/zones/{zoneUuid}/backup-storage/{backupStorageUuid}", summary="DetachBackupStorageFromZone",
    **job_api(_StorageReply),
)
async def detach_backup_storage_from_zone(
    zoneUuid: str, backupStorageUuid: str, call: ApiCall = Depends(api_call)
) -> JSONResponse:
    async def work() -> dict[str, Any]:
        row = await zones.detach_backup_storage(call.rt, zoneUuid, backupStorageUuid)
        return inventory_reply(backup_storage_inventory(row), call.with_schema)

    return await call.run("DetachBackupStorageFromZone", work)
