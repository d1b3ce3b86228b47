"""BackupStorageMigrateImage and GetBackupStorageCandidatesForImageMigration (issue 16
point 2; the copy itself is services/images/migrate.py)."""
from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse

from imgstore.api.actions import ActionTable, dispatch, parse_params
from imgstore.api.deps import ApiCall, api_call, runtime
from imgstore.api.envelope import inventories_reply, inventory_reply
from imgstore.api.openapi import InventoryReply, QueryReply, action_api, sync_api
from imgstore.api.routes.images import image_inventories
from imgstore.api.schemas import (
    BackupStorageInventory,
    BackupStorageMigrateImageParams,
    CephBackupStorageInventory,
    ImageInventory,
    backup_storage_inventory,
)
from imgstore.crypto import new_uuid
from imgstore.services.images import migrate
from imgstore.services.node.runtime import Runtime

router = APIRouter(tags=["images"])


@router.get("/backup-storage/{srcBackupStorageUuid}/migration-candidates",
            summary="GetBackupStorageCandidatesForImageMigration",
            **sync_api(QueryReply[CephBackupStorageInventory | BackupStorageInventory]))
async def get_candidates(srcBackupStorageUuid: str, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    rows = await migrate.candidates(rt, srcBackupStorageUuid)
    return inventories_reply([backup_storage_inventory(r) for r in rows])


async def _migrate(call: ApiCall, image_uuid: str, params: dict[str, Any]) -> JSONResponse:
    p = parse_params(BackupStorageMigrateImageParams, "backupStorageMigrateImage", params)
    # always a job id: GetTaskProgress follows the copy under it, as for AddImage
    job = dataclasses.replace(call, job_uuid=call.job_uuid or new_uuid())
    api_id = job.job_uuid or ""

    async def work() -> dict[str, Any]:
        image = await migrate.migrate(call.rt, image_uuid, p.srcBackupStorageUuid, p.dstBackupStorageUuid, api_id)
        [inventory] = await image_inventories(call.rt, [image])  # export URLs unsealed, as everywhere
        return inventory_reply(inventory, call.with_schema)

    return await job.run("BackupStorageMigrateImage", work)


MIGRATE_ACTIONS: ActionTable = {"backupStorageMigrateImage": _migrate}


@router.put("/backup-storage/images/{imageUuid}/actions", summary="BackupStorageMigrateImage",
            **action_api(MIGRATE_ACTIONS, {"backupStorageMigrateImage": BackupStorageMigrateImageParams},
                         InventoryReply[ImageInventory]))
async def migrate_actions(
    imageUuid: str, request: Request, body: dict[str, Any] = Body(), call: ApiCall = Depends(api_call)
) -> JSONResponse:
    return await dispatch(MIGRATE_ACTIONS, call, imageUuid, body, request.url.path)
