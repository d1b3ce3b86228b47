"""GetTrashOnBackupStorage and CleanUpTrashOnBackupStorage (issue 16 point 4).

``GET /backup-storage/trash`` is a fixed path: this router is included before the
backup-storage one, whose ``/backup-storage/{uuid}`` would take it otherwise.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse

from imgstore.api.actions import ActionTable, dispatch, parse_params
from imgstore.api.deps import ApiCall, api_call, runtime
from imgstore.api.envelope import inventories_reply
from imgstore.api.openapi import QueryReply, action_api, sync_api
from imgstore.api.schemas import CleanUpTrashParams, InstallPathRecycleInventory
from imgstore.db.models import BackupStorageTrash
from imgstore.services.node.runtime import Runtime
from imgstore.services.storage import trash

router = APIRouter(tags=["backup-storage"])


def _inventory(row: BackupStorageTrash) -> InstallPathRecycleInventory:
    return InstallPathRecycleInventory(
        trash_id=row.id, resource_uuid=row.resource_uuid, storage_uuid=row.backup_storage_uuid,
        resource_type=row.resource_type, install_path=row.install_path, size=row.size,
        trash_type=row.trash_type, create_date=row.create_date,
    )


#: resourceUuid and resourceType, both or neither: JSON Schema states that of an object's
#: properties only, so the document gives them as one object parameter, exploded
#: (``?resourceUuid=..&resourceType=..``, the same query string); the route reads them
#: one by one, left out of the generated parameters
_RESOURCE_PARAMETER = {
    "name": "resource", "in": "query", "required": False, "style": "form", "explode": True,
    "description": "resourceUuid and resourceType of one resource, both or neither",
    "schema": {
        "type": "object", "additionalProperties": False,
        "properties": {"resourceUuid": {"type": "string"}, "resourceType": {"type": "string"}},
        "dependentRequired": {"resourceUuid": ["resourceType"], "resourceType": ["resourceUuid"]},
    },
}


@router.get("/backup-storage/trash", summary="GetTrashOnBackupStorage",
            **sync_api(QueryReply[InstallPathRecycleInventory], [_RESOURCE_PARAMETER]))
async def get_trash_on_backup_storage(
    uuid: str,
    resourceUuid: str | None = Query(None, include_in_schema=False),
    resourceType: str | None = Query(None, include_in_schema=False),
    trashType: str | None = Query(None, description="MigrateImage (ZStack's) or AddImage (imgstore's)",
                                  json_schema_extra={"enum": list(trash.TRASH_TYPES)}),
    rt: Runtime = Depends(runtime),
) -> dict[str, Any]:
    rows = await trash.query(rt, uuid, resourceUuid, resourceType, trashType)
    return inventories_reply([_inventory(r) for r in rows])


async def _clean_up(call: ApiCall, uuid: str, params: dict[str, Any]) -> JSONResponse:
    p = parse_params(CleanUpTrashParams, "cleanUpTrashOnBackupStorage", params)

    async def work() -> dict[str, Any]:
        done = await trash.clean_up(call.rt, uuid, p.trashId)
        result = {"resourceUuids": done.resource_uuids, "details": done.details, "size": done.size}
        return {"result": result, "results": done.results, "success": True}

    return await call.run("CleanUpTrashOnBackupStorage", work)


TRASH_ACTIONS: ActionTable = {"cleanUpTrashOnBackupStorage": _clean_up}


@router.put("/backup-storage/{uuid}/trash/actions", summary="CleanUpTrashOnBackupStorage",
            **action_api(TRASH_ACTIONS, {"cleanUpTrashOnBackupStorage": CleanUpTrashParams}, dict[str, Any]))
async def trash_actions(
    uuid: str, request: Request, body: dict[str, Any] = Body(), call: ApiCall = Depends(api_call)
) -> JSONResponse:
    return await dispatch(TRASH_ACTIONS, call, uuid, body, request.url.path)
