"""The queryable shapes of the storage package: backup storages, their mons, and zones.

One module, because they name each other (``q=zone.name=...`` on storages,
``q=backupStorage.name=...`` on zones): zones come first, and their relation to the
storages, defined below them, is looked up when a query runs.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from imgstore.db import query as q
from imgstore.db.models import BackupStorage, BackupStorageZoneRef, CephBackupStorage, CephMon, Tag, Zone
from imgstore.services.catalog import tags
from imgstore.wire.query import Condition

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
        "sshHostKeyFingerprint": q.Field(CephMon.ssh_host_key_fingerprint),
        "status": q.Field(CephMon.status),
        "backupStorageUuid": q.Field(CephMon.backup_storage_uuid),
        "createDate": q.Field(CephMon.create_date, datetime),
        "lastOpDate": q.Field(CephMon.last_op_date, datetime),
    },
)

def _storage_links():  # type: ignore[no-untyped-def]
    return select(BackupStorageZoneRef.zone_uuid, BackupStorageZoneRef.backup_storage_uuid)


def _backup_storage(rest: str, cond: Condition):  # type: ignore[no-untyped-def]
    """``q=backupStorage.<field>...`` on zones; resolved when a query asks, since the
    backup-storage query names zones too (``q=zone.name=...``)."""
    return q.relation(Zone.uuid, _storage_links, BACKUP_STORAGE_QUERY)(rest, cond)


ZONE_QUERY = q.Queryable(
    entity=Zone,
    name="ZoneInventory",
    fields={
        "uuid": q.Field(Zone.uuid),
        "name": q.Field(Zone.name),
        "description": q.Field(Zone.description),
        "state": q.Field(Zone.state),
        "type": q.Field(Zone.type),
        "isDefault": q.Field(Zone.is_default, bool),
        "createDate": q.Field(Zone.create_date, datetime),
        "lastOpDate": q.Field(Zone.last_op_date, datetime),
    },
    relations={"backupStorage": _backup_storage},
    tags=q.tag_filter(Zone.uuid, tags.tag_rows),
    default_sort="createDate",
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
    relations: dict[str, q.Relation] = {
        "zone": q.relation(BackupStorage.uuid, ZONE_LINKS, ZONE_QUERY),
    }
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
