"""Zone routes: CreateZone, QueryZone, UpdateZone, ChangeZoneState, DeleteZone, and
AttachBackupStorageToZone / DetachBackupStorageFromZone."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from imgstore.api.actions import Action, ActionTable
from imgstore.api.deps import ApiCall, api_call, runtime
from imgstore.api.envelope import inventories_reply, inventory_reply
from imgstore.api.openapi import (
    ChangeStateDoc,
    InventoryReply,
    QueryReply,
    job_api,
    sync_api,
)
from imgstore.api.route_shapes import QueryRoutes, delete_route
from imgstore.api.schemas import (
    AttachBackupStorageToZoneBody,
    BackupStorageInventory,
    CephBackupStorageInventory,
    ChangeStateParams,
    CreateZoneBody,
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
        name=p.name, description=p.description, resource_uuid=p.resourceUuid, is_default=bool(p.isDefault),
        system_tags=system_tags, user_tags=user_tags,
    )

    async def work() -> dict[str, Any]:
        return _reply(await zones.create(call.rt, request), call)

    return await call.run("CreateZone", work)


QueryRoutes("QueryZone", "/zones", queryables.ZONE_QUERY, (ZoneInventory,), zones.query,
            lambda _: ZoneInventory).route(router, name="query_zone", by_uuid_name="get_zone")


@router.get("/zones/{uuid}/info", summary="GetZone", **sync_api(QueryReply[ZoneInventory]))
async def get_zone_info(uuid: str, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    """GetZone: ``{"inventories": [zone]}`` (APIGetZoneReply), 404 for an unknown uuid."""
    return inventories_reply([ZoneInventory.model_validate(await zones.load(rt, uuid))])


async def _update_zone(call: ApiCall, uuid: str, p: UpdateZoneParams) -> dict[str, Any]:
    return _reply(await zones.update(call.rt, uuid, p.name, p.description, p.isDefault), call)


async def _change_zone_state(call: ApiCall, uuid: str, p: ChangeStateParams) -> dict[str, Any]:
    return _reply(await zones.change_state(call.rt, uuid, p.stateEvent), call)


#: ``PUT /zones/{uuid}/actions``
ZONE_ACTIONS = ActionTable(
    Action("UpdateZone", UpdateZoneParams, _update_zone),
    Action("ChangeZoneState", ChangeStateParams, _change_zone_state, doc=ChangeStateDoc),
)
ZONE_ACTIONS.route(router, "/zones/{uuid}/actions", _Reply, name="zone_actions")


delete_route(router, "/zones/{uuid}", "DeleteZone", lambda rt, uuid, mode: zones.delete_zone(rt, uuid),
             name="delete_zone")


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
