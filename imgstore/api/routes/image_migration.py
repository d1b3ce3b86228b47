"""BackupStorageMigrateImage and GetBackupStorageCandidatesForImageMigration (issue 16
point 2; the copy itself is services/images/migrate.py)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from imgstore.api.actions import Action, ActionTable
from imgstore.api.deps import ApiCall, runtime
from imgstore.api.envelope import inventories_reply, inventory_reply
from imgstore.api.openapi import InventoryReply, QueryReply, sync_api
from imgstore.api.routes.images import image_inventories
from imgstore.api.schemas import (
    BackupStorageInventory,
    BackupStorageMigrateImageParams,
    CephBackupStorageInventory,
    backup_storage_inventory,
)
from imgstore.services.images import migrate
from imgstore.services.node.runtime import Runtime
from imgstore.wire.inventories import ImageInventory

router = APIRouter(tags=["images"])


@router.get("/backup-storage/{srcBackupStorageUuid}/migration-candidates",
            summary="GetBackupStorageCandidatesForImageMigration",
            **sync_api(QueryReply[CephBackupStorageInventory | BackupStorageInventory]))
async def get_candidates(srcBackupStorageUuid: str, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    rows = await migrate.candidates(rt, srcBackupStorageUuid)
    return inventories_reply([backup_storage_inventory(r) for r in rows])


async def _migrate(call: ApiCall, image_uuid: str, p: BackupStorageMigrateImageParams) -> dict[str, Any]:
    image = await migrate.migrate(call.rt, image_uuid, p.srcBackupStorageUuid, p.dstBackupStorageUuid,
                                  call.job_uuid or "")
    [inventory] = await image_inventories(call.rt, [image])  # export URLs unsealed, as everywhere
    return inventory_reply(inventory, call.with_schema)


#: always under a job id: GetTaskProgress follows the copy under it, as for AddImage
MIGRATE_ACTIONS = ActionTable(
    Action("BackupStorageMigrateImage", BackupStorageMigrateImageParams, _migrate, run_as="tracked"))
MIGRATE_ACTIONS.route(router, "/backup-storage/images/{imageUuid}/actions", InventoryReply[ImageInventory],
                      name="migrate_actions")
