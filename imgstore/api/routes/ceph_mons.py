"""Routes for the mons of a Ceph backup storage (ZStack's Ceph mon APIs)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from imgstore.api.actions import Action, ActionTable
from imgstore.api.deps import ApiCall, api_call
from imgstore.api.envelope import inventory_reply
from imgstore.api.openapi import InventoryReply, job_api
from imgstore.api.schemas import (
    AcceptCephBackupStorageMonHostKeyParams,
    AddMonToCephBackupStorageBody,
    CephBackupStorageInventory,
    UpdateCephBackupStorageMonParams,
    backup_storage_inventory,
)
from imgstore.db.models import CephBackupStorage
from imgstore.services.storage import mons as ceph_mons

router = APIRouter(tags=["backup-storage"])

_Reply = InventoryReply[CephBackupStorageInventory]


def _reply(call: ApiCall, row: CephBackupStorage) -> dict[str, Any]:
    return inventory_reply(backup_storage_inventory(row), call.with_schema)


@router.post("/backup-storage/ceph/{uuid}/mons", summary="AddMonToCephBackupStorage", **job_api(_Reply))
async def add_mon_to_ceph_backup_storage(
    uuid: str, body: AddMonToCephBackupStorageBody, call: ApiCall = Depends(api_call)
) -> JSONResponse:
    async def work() -> dict[str, Any]:
        return _reply(call, await ceph_mons.add_mons(call.rt, uuid, body.params.monUrls))

    return await call.run("AddMonToCephBackupStorage", work)


@router.delete("/backup-storage/ceph/{uuid}/mons", summary="RemoveMonFromCephBackupStorage", **job_api(_Reply))
async def remove_mon_from_ceph_backup_storage(
    uuid: str, monHostnames: list[str] = Query(json_schema_extra={"minItems": 1}),
    call: ApiCall = Depends(api_call),
) -> JSONResponse:
    async def work() -> dict[str, Any]:
        return _reply(call, await ceph_mons.remove_mons(call.rt, uuid, monHostnames))

    return await call.run("RemoveMonFromCephBackupStorage", work)


async def _update_mon(call: ApiCall, mon_uuid: str, p: UpdateCephBackupStorageMonParams) -> dict[str, Any]:
    row = await ceph_mons.update_mon(
        call.rt, mon_uuid, hostname=p.hostname, ssh_username=p.sshUsername,
        ssh_password=p.sshPassword, ssh_port=p.sshPort, mon_port=p.monPort,
    )
    return _reply(call, row)


async def _accept_host_key(call: ApiCall, mon_uuid: str, p: AcceptCephBackupStorageMonHostKeyParams) -> dict[str, Any]:
    return _reply(call, await ceph_mons.accept_host_key(call.rt, mon_uuid, p.sshHostKeyFingerprint))


#: ``PUT /backup-storage/ceph/mons/{monUuid}/actions``: ZStack's update, and imgstore's
#: explicit accept of a mon's new ssh host key (issue Trust, point 1).
MON_ACTIONS = ActionTable(
    Action("UpdateCephBackupStorageMon", UpdateCephBackupStorageMonParams, _update_mon),
    Action("AcceptCephBackupStorageMonHostKey", AcceptCephBackupStorageMonHostKeyParams, _accept_host_key),
)
MON_ACTIONS.route(router, "/backup-storage/ceph/mons/{monUuid}/actions", _Reply,
                  name="ceph_backup_storage_mon_actions")
