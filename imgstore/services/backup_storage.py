"""Backup storages of any type: finding, querying and deleting them."""
from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from imgstore.query import QuerySpec
from imgstore.db import query as q
from imgstore.db.models import BackupStorage, BackupStorageZoneRef, CephBackupStorage, CephMon, Tag
from imgstore.errors import INVALID_ARGUMENT, ApiError, not_found
from imgstore.services import ceph_backup_storage, tags
from imgstore.services.runtime import Runtime

log = logging.getLogger(__name__)

_TAG_KINDS = {"systemTag": tags.SYSTEM, "userTag": tags.USER}


def _tag_rows(kind: str):  # type: ignore[no-untyped-def]
    return select(Tag.resource_uuid, Tag.tag).where(Tag.kind == _TAG_KINDS[kind])


ZONE_LINKS = lambda: select(BackupStorageZoneRef.backup_storage_uuid, BackupStorageZoneRef.zone_uuid)  # noqa: E731

MON_QUERY = q.Queryable(
    entity=CephMon,
    name="CephBackupStorageMonInventory",
    fields={
        "monUuid": q.Field(CephMon.uuid),
        "hostname": q.Field(CephMon.hostname),
        "monAddr": q.Field(CephMon.mon_addr),
        "monPort": q.Field(CephMon.mon_port, int),
        "sshPort": q.Field(CephMon.ssh_port, int),
        "sshUsername": q.Field(CephMon.ssh_username),
        "status": q.Field(CephMon.status),
        "backupStorageUuid": q.Field(CephMon.backup_storage_uuid),
        "createDate": q.Field(CephMon.create_date, datetime),
        "lastOpDate": q.Field(CephMon.last_op_date, datetime),
    },
)

_BASE_FIELDS: dict[str, q.Field | q.ListField] = {
    "uuid": q.Field(BackupStorage.uuid),
    "name": q.Field(BackupStorage.name),
    "url": q.Field(BackupStorage.url),
    "description": q.Field(BackupStorage.description),
    "totalCapacity": q.Field(BackupStorage.total_capacity, int),
    "availableCapacity": q.Field(BackupStorage.available_capacity, int),
    "type": q.Field(BackupStorage.type),
    "state": q.Field(BackupStorage.state),
    "status": q.Field(BackupStorage.status),
    "createDate": q.Field(BackupStorage.create_date, datetime),
    "lastOpDate": q.Field(BackupStorage.last_op_date, datetime),
    "attachedZoneUuids": q.ListField(ZONE_LINKS),
}

_CEPH_FIELDS: dict[str, q.Field | q.ListField] = {
    "fsid": q.Field(CephBackupStorage.fsid),
    "poolName": q.Field(CephBackupStorage.pool_name),
    "poolAvailableCapacity": q.Field(CephBackupStorage.pool_available_capacity, int),
    "poolUsedCapacity": q.Field(CephBackupStorage.pool_used_capacity, int),
    "poolReplicatedSize": q.Field(CephBackupStorage.pool_replicated_size, int),
    "poolDiskUtilization": q.Field(CephBackupStorage.pool_disk_utilization, float),
    "poolSecurityPolicy": q.Field(CephBackupStorage.pool_security_policy),
}


def _queryable(entity: type, name: str, fields: dict[str, q.Field | q.ListField]) -> q.Queryable:
    relations: dict[str, q.Relation] = {}
    if entity is CephBackupStorage:
        relations["mons"] = q.relation(
            BackupStorage.uuid, lambda: select(CephMon.backup_storage_uuid, CephMon.uuid), MON_QUERY
        )
    return q.Queryable(
        entity=entity,
        name=name,
        fields=fields,
        relations=relations,
        tags=q.tag_filter(BackupStorage.uuid, _tag_rows),
        default_sort="createDate",
    )


BACKUP_STORAGE_QUERY = _queryable(BackupStorage, "BackupStorageInventory", _BASE_FIELDS)
CEPH_BACKUP_STORAGE_QUERY = _queryable(
    CephBackupStorage, "CephBackupStorageInventory", {**_BASE_FIELDS, **_CEPH_FIELDS}
)


async def query(rt: Runtime, spec: QuerySpec, ceph_only: bool = False) -> tuple[list[BackupStorage], int | None]:
    """QueryBackupStorage / QueryCephBackupStorage: the page and, when asked, the total."""
    queryable = CEPH_BACKUP_STORAGE_QUERY if ceph_only else BACKUP_STORAGE_QUERY
    try:
        page, count = q.build_select(queryable, spec)
    except q.QueryFieldError as e:
        raise ApiError(INVALID_ARGUMENT, str(e)) from None
    async with rt.db() as db:
        total = await db.scalar(count) if count is not None else None
        rows = [] if spec.count else list(await db.scalars(page))
    return rows, total


async def get(db: AsyncSession, uuid: str) -> BackupStorage:
    row = await db.get(BackupStorage, uuid)
    if row is None:
        raise not_found("BackupStorageVO", uuid)
    return row


async def delete(rt: Runtime, uuid: str, delete_mode: str = "Permissive") -> None:
    """DeleteBackupStorage: the row, its mons, refs and tags, and the cephx key imgstore
    made. Images stay in the pool (ZStack's DeleteReference). An unknown uuid is a success,
    as in ZStack."""
    await rt.clusters.forget(uuid)
    async with rt.db() as db:
        row = await db.get(BackupStorage, uuid)
        if row is None:
            return
        if isinstance(row, CephBackupStorage):
            await ceph_backup_storage.release_cluster_resources(rt, row, drop_pool=False)
        await tags.delete_tags_of(db, uuid)
        await db.delete(row)
        await db.commit()
