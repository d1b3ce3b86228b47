"""GetTrashOnBackupStorage and CleanUpTrashOnBackupStorage (issue 16 point 4).

``GET /backup-storage/trash`` is a fixed path: this router is included before the
backup-storage one, whose ``/backup-storage/{uuid}`` would take it otherwise.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from imgstore.api.actions import Action, ActionTable
from imgstore.api.deps import ApiCall, runtime
from imgstore.api.envelope import inventories_reply
from imgstore.api.openapi import QueryReply, sync_api
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


async def _clean_up(call: ApiCall, uuid: str, p: CleanUpTrashParams) -> dict[str, Any]:
    done = await trash.clean_up(call.rt, uuid, p.trashId)
    result = {"resourceUuids": done.resource_uuids, "details": done.details, "size": done.size}
    return {"result": result, "results": done.results, "success": True}


TRASH_ACTIONS = ActionTable(Action("CleanUpTrashOnBackupStorage", CleanUpTrashParams, _clean_up))
TRASH_ACTIONS.route(router, "/backup-storage/{uuid}/trash/actions", dict[str, Any], name="trash_actions")
