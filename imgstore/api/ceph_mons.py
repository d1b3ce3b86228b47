"""Routes for the mons of a Ceph backup storage (ZStack's Ceph mon APIs)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from imgstore.api.deps import ApiCall, api_call
from imgstore.api.envelope import inventory_reply
from imgstore.api.openapi import InventoryReply, job_api
from imgstore.api.schemas import (
    AddMonToCephBackupStorageBody,
    CephBackupStorageInventory,
    UpdateCephBackupStorageMonBody,
    backup_storage_inventory,
)
from imgstore.db.models import CephBackupStorage
from imgstore.services import ceph_mons

router = APIRouter(tags=["backup-storage"])

_Reply = InventoryReply[CephBackupStorageInventory]


def _reply(call: ApiCall, row: CephBackupStorage) -> dict:
    return inventory_reply(backup_storage_inventory(row), call.with_schema)


@router.post("/backup-storage/ceph/{uuid}/mons", summary="AddMonToCephBackupStorage", **job_api(_Reply))
async def add_mon_to_ceph_backup_storage(
    uuid: str, body: AddMonToCephBackupStorageBody, call: ApiCall = Depends(api_call)
) -> JSONResponse:
    async def work() -> dict:
        return _reply(call, await ceph_mons.add_mons(call.rt, uuid, body.params.monUrls))

    return await call.run("AddMonToCephBackupStorage", work)


@router.delete("/backup-storage/ceph/{uuid}/mons", summary="RemoveMonFromCephBackupStorage", **job_api(_Reply))
async def remove_mon_from_ceph_backup_storage(
    uuid: str, monHostnames: list[str] = Query(default=[]), call: ApiCall = Depends(api_call)
) -> JSONResponse:
    async def work() -> dict:
        return _reply(call, await ceph_mons.remove_mons(call.rt, uuid, monHostnames))

    return await call.run("RemoveMonFromCephBackupStorage", work)


@router.put("/backup-storage/ceph/mons/{monUuid}/actions", summary="UpdateCephBackupStorageMon", **job_api(_Reply))
async def update_ceph_backup_storage_mon(
    monUuid: str, body: UpdateCephBackupStorageMonBody, call: ApiCall = Depends(api_call)
) -> JSONResponse:
    p = body.updateCephBackupStorageMon

    async def work() -> dict:
        row = await ceph_mons.update_mon(
            call.rt, monUuid, hostname=p.hostname, ssh_username=p.sshUsername,
            ssh_password=p.sshPassword, ssh_port=p.sshPort, mon_port=p.monPort,
        )
        return _reply(call, row)

    return await call.run("UpdateCephBackupStorageMon", work)
