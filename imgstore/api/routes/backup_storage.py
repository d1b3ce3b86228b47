"""Backup-storage routes: ZStack paths and bodies in, service calls, ZStack replies out."""
from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.convertors import StringConvertor, register_url_convertor

from imgstore.api.actions import Action, ActionTable
from imgstore.api.deps import ApiCall, api_call, runtime
from imgstore.api.envelope import inventory_reply
from imgstore.api.openapi import (
    ChangeStateDoc,
    EmptyReply,
    ExportImageFromBackupStorageReply,
    GetBackupStorageCapacityReply,
    GetBackupStorageTypesReply,
    InventoryReply,
    job_api,
    sync_api,
)
from imgstore.api.params import bool_param, list_param
from imgstore.api.reply_cache import cacheable
from imgstore.api.route_shapes import QueryRoutes, delete_route
from imgstore.api.schemas import (
    AddCephBackupStorageBody,
    BackupStorageInventory,
    CephBackupStorageInventory,
    ChangeStateParams,
    ExportImageFromBackupStorageParams,
    Params,
    UpdateBackupStorageParams,
    backup_storage_inventory,
    backup_storage_inventory_class,
)
from imgstore.services.health import connection as ceph_connection
from imgstore.services.images import export as image_export
from imgstore.services.node.runtime import Runtime
from imgstore.services.storage import add_ceph as ceph_backup_storage
from imgstore.services.storage import manage as backup_storage
from imgstore.services.storage import queryables

router = APIRouter(tags=["backup-storage"])


class _StorageUuid(StringConvertor):
    """A storage uuid in a path, never one of the fixed paths beside it: as in ZStack, an
    exact path wins, so ``DELETE /backup-storage/types`` is 405, not a DeleteBackupStorage
    of the storage "types" (``app.allowed_methods`` then lists GET only)."""

    regex = "(?!(?:ceph|types|capacities|trash)$)[^/]+"


register_url_convertor("storage_uuid", _StorageUuid())  # before the routes below compile their paths

_Reply = InventoryReply[CephBackupStorageInventory | BackupStorageInventory]


@router.post("/backup-storage/ceph", summary="AddCephBackupStorage", **job_api(_Reply))
async def add_ceph_backup_storage(
    body: AddCephBackupStorageBody, call: ApiCall = Depends(api_call)
) -> JSONResponse:
    p = body.params
    system_tags, user_tags = body.tags(p)
    request = ceph_backup_storage.NewCephStorage(
        name=p.name, mon_urls=p.monUrls, pool_name=p.poolName, description=p.description, type=p.type, url=p.url,
        import_images=p.importImages, resource_uuid=p.resourceUuid, system_tags=system_tags, user_tags=user_tags,
    )

    async def work() -> dict[str, Any]:
        row = await ceph_backup_storage.add(call.rt, request)
        return inventory_reply(backup_storage_inventory(row), call.with_schema)

    return await call.run("AddCephBackupStorage", work)


QueryRoutes("QueryCephBackupStorage", "/backup-storage/ceph", queryables.CEPH_BACKUP_STORAGE_QUERY,
            (CephBackupStorageInventory,), functools.partial(backup_storage.query, ceph_only=True),
            backup_storage_inventory_class,
            ).route(router, name="query_ceph_backup_storage", by_uuid_name="get_ceph_backup_storage")


# ---------------------------------------------------------------- lifecycle: types, capacity, actions
# Fixed paths (/types, /capacities) must stay above /backup-storage/{uuid}.


@cacheable
@router.get("/backup-storage/types", summary="GetBackupStorageTypes", **sync_api(GetBackupStorageTypesReply))
async def get_backup_storage_types() -> dict[str, Any]:
    return {"types": backup_storage.types()}


#: ``zoneUuids``, ``backupStorageUuids``, ``all``: one object parameter (its properties are
#: the query keys), because at least one of them must be given, which only an object's
#: schema can say
_CAPACITY_OF = {
    "name": "capacityOf", "in": "query", "required": True, "style": "form", "explode": True,
    "description": "`zoneUuids` (the storages attached to these zones), `backupStorageUuids` "
                   "(these storages) or `all=true` (every storage); at least one",
    "schema": {
        "type": "object",
        "properties": {
            "zoneUuids": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "backupStorageUuids": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "all": {"type": "boolean"},
        },
        "anyOf": [
            {"properties": {"zoneUuids": {"minItems": 1}}, "required": ["zoneUuids"]},
            {"properties": {"backupStorageUuids": {"minItems": 1}}, "required": ["backupStorageUuids"]},
            {"properties": {"all": {"const": True}}, "required": ["all"]},
        ],
    },
}


@cacheable
@router.get(
    "/backup-storage/capacities", summary="GetBackupStorageCapacity",
    **sync_api(GetBackupStorageCapacityReply, [_CAPACITY_OF]),
)
async def get_backup_storage_capacity(request: Request, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    total, available = await backup_storage.capacity(
        rt,
        zone_uuids=list_param(request, "zoneUuids"),
        storage_uuids=list_param(request, "backupStorageUuids"),
        all_storages=bool_param(request, "all"),
    )
    return {"totalCapacity": total, "availableCapacity": available, "success": True}


async def _update_backup_storage(call: ApiCall, uuid: str, p: UpdateBackupStorageParams) -> dict[str, Any]:
    row = await backup_storage.update(call.rt, uuid, p.name, p.description)
    return inventory_reply(backup_storage_inventory(row), call.with_schema)


async def _change_backup_storage_state(call: ApiCall, uuid: str, p: ChangeStateParams) -> dict[str, Any]:
    row = await backup_storage.change_state(call.rt, uuid, p.stateEvent)
    return inventory_reply(backup_storage_inventory(row), call.with_schema)


async def _reconnect_backup_storage(call: ApiCall, uuid: str, p: Params) -> dict[str, Any]:
    row = await ceph_connection.reconnect(call.rt, uuid)
    return inventory_reply(backup_storage_inventory(row), call.with_schema)


async def _export_image(call: ApiCall, uuid: str, p: ExportImageFromBackupStorageParams) -> dict[str, Any]:
    exported = await image_export.export(call.rt, uuid, p.imageUuid, call.base_url, p.exportFormat)
    return {"imageUrl": exported.image_url, "exportMd5Sum": exported.md5, "success": True}


#: ``PUT /backup-storage/{uuid}/actions``
BACKUP_STORAGE_ACTIONS = ActionTable(
    Action("UpdateBackupStorage", UpdateBackupStorageParams, _update_backup_storage),
    Action("ChangeBackupStorageState", ChangeStateParams, _change_backup_storage_state, doc=ChangeStateDoc),
    Action("ReconnectBackupStorage", Params, _reconnect_backup_storage),
    Action("ExportImageFromBackupStorage", ExportImageFromBackupStorageParams, _export_image),
)
BACKUP_STORAGE_ACTIONS.route(router, "/backup-storage/{uuid}/actions", _Reply | ExportImageFromBackupStorageReply,
                             name="backup_storage_actions")


# ---------------------------------------------------------------- queries by uuid (after the fixed paths)


QueryRoutes("QueryBackupStorage", "/backup-storage", queryables.BACKUP_STORAGE_QUERY,
            (CephBackupStorageInventory, BackupStorageInventory), backup_storage.query,
            backup_storage_inventory_class,
            ).route(router, name="query_backup_storage", by_uuid_name="get_backup_storage")


delete_route(router, "/backup-storage/{uuid:storage_uuid}", "DeleteBackupStorage", backup_storage.delete,
             name="delete_backup_storage")


@router.delete(
    "/backup-storage/{backupStorageUuid}/exported-images/{imageUuid}",
    summary="DeleteExportedImageFromBackupStorage",
    **job_api(EmptyReply),
)
async def delete_exported_image(
    backupStorageUuid: str, imageUuid: str, call: ApiCall = Depends(api_call)
) -> JSONResponse:
    async def work() -> dict[str, Any]:
        await image_export.revoke(call.rt, backupStorageUuid, imageUuid)
        return {}

    return await call.run("DeleteExportedImageFromBackupStorage", work)
