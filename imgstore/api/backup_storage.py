"""Backup-storage routes: ZStack paths and bodies in, service calls, ZStack replies out."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from imgstore.api.deps import ApiCall, api_call, query_spec, runtime
from imgstore.api.envelope import inventories_reply, inventory_reply
from imgstore.api.schemas import AddCephBackupStorageBody, DeleteMode, backup_storage_inventory
from imgstore.services import backup_storage, ceph_backup_storage
from imgstore.services.runtime import Runtime

router = APIRouter(tags=["backup-storage"])


async def _query(request: Request, rt: Runtime, uuid: str | None, ceph_only: bool) -> dict:
    spec = query_spec(request, uuid)
    rows, total = await backup_storage.query(rt, spec, ceph_only=ceph_only)
    if spec.count:
        return {"total": total}
    return inventories_reply([backup_storage_inventory(r) for r in rows], total, spec.fields)


@router.post("/backup-storage/ceph", summary="AddCephBackupStorage")
async def add_ceph_backup_storage(
    body: AddCephBackupStorageBody, call: ApiCall = Depends(api_call)
) -> JSONResponse:
    p = body.params
    system_tags, user_tags = body.tags(p)
    request = ceph_backup_storage.NewCephStorage(
        name=p.name,
        mon_urls=p.monUrls,
        pool_name=p.poolName,
        description=p.description,
        type=p.type,
        url=p.url,
        import_images=p.importImages,
        resource_uuid=p.resourceUuid,
        system_tags=system_tags,
        user_tags=user_tags,
    )

    async def work() -> dict:
        row = await ceph_backup_storage.add(call.rt, request)
        return inventory_reply(backup_storage_inventory(row), call.with_schema)

    return await call.run("AddCephBackupStorage", work)


@router.get("/backup-storage/ceph", summary="QueryCephBackupStorage")
async def query_ceph_backup_storage(request: Request, rt: Runtime = Depends(runtime)) -> dict:
    return await _query(request, rt, None, ceph_only=True)


@router.get("/backup-storage/ceph/{uuid}", summary="QueryCephBackupStorage by uuid")
async def get_ceph_backup_storage(uuid: str, request: Request, rt: Runtime = Depends(runtime)) -> dict:
    return await _query(request, rt, uuid, ceph_only=True)


@router.get("/backup-storage", summary="QueryBackupStorage")
async def query_backup_storage(request: Request, rt: Runtime = Depends(runtime)) -> dict:
    return await _query(request, rt, None, ceph_only=False)


@router.get("/backup-storage/{uuid}", summary="QueryBackupStorage by uuid")
async def get_backup_storage(uuid: str, request: Request, rt: Runtime = Depends(runtime)) -> dict:
    return await _query(request, rt, uuid, ceph_only=False)


@router.delete("/backup-storage/{uuid}", summary="DeleteBackupStorage")
async def delete_backup_storage(
    uuid: str, deleteMode: DeleteMode = "Permissive", call: ApiCall = Depends(api_call)
) -> JSONResponse:
    async def work() -> dict:
        await backup_storage.delete(call.rt, uuid, deleteMode)
        return {}

    return await call.run("DeleteBackupStorage", work)
