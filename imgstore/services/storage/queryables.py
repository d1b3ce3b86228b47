"""The queryable shapes of the storage package: backup storages, their mons, and zones.

One module, because they name each other (``q=zone.name=...`` on storages,
``q=backupStorage.name=...`` on zones): zones come first, and their relation to the
storages, defined below them, is looked up when a query runs.
"""
from __future__ import annotations

from sqlalchemy import Select, select

from imgstore.db import query as q
from imgstore.db.models import BackupStorage, BackupStorageZoneRef, CephBackupStorage, CephMon, Zone
from imgstore.services.catalog import tags

ZONE_LINKS = lambda: select(BackupStorageZoneRef.backup_storage_uuid, BackupStorageZoneRef.zone_uuid)  # noqa: E731

MON_QUERY = q.Queryable(
    entity=CephMon,
    name="CephBackupStorageMonInventory",
    fields={
        "monUuid": q.Field(CephMon.uuid),
        **q.columns(CephMon, "hostname", "mon_addr", "mon_port", "ssh_port", "ssh_username",
                    "ssh_host_key_fingerprint", "status", "backup_storage_uuid", "create_date", "last_op_date"),
    },
)

def _storage_links() -> Select[str, str]:
    return select(BackupStorageZoneRef.zone_uuid, BackupStorageZoneRef.backup_storage_uuid)


ZONE_QUERY = q.Queryable(
    entity=Zone,
    name="ZoneInventory",
    fields=q.columns(
        Zone, "uuid", "name", "description", "state", "type", "is_default", "create_date", "last_op_date"
    ),
    # the backup-storage query names zones too (q=zone.name=...): asked for when needed
    relations={"backupStorage": q.relation(Zone.uuid, _storage_links, lambda: BACKUP_STORAGE_QUERY)},
    tags=q.tag_filter(Zone.uuid, tags.tag_rows),
    default_sort="createDate",
)

_BASE_FIELDS: dict[str, q.Field | q.ListField] = {
    **q.columns(BackupStorage, "uuid", "name", "url", "description", "total_capacity", "available_capacity",
                "type", "state", "status", "create_date", "last_op_date"),
    "attachedZoneUuids": q.ListField(ZONE_LINKS),
}

_CEPH_FIELDS = q.columns(
    CephBackupStorage, "fsid", "pool_name", "pool_available_capacity", "pool_used_capacity",
    "pool_replicated_size", "pool_disk_utilization", "pool_security_policy",
)


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
        tags=q.tag_filter(BackupStorage.uuid, tags.tag_rows),
        default_sort="createDate",
    )


BACKUP_STORAGE_QUERY = _queryable(BackupStorage, "BackupStorageInventory", _BASE_FIELDS)
CEPH_BACKUP_STORAGE_QUERY = _queryable(
    CephBackupStorage, "CephBackupStorageInventory", {**_BASE_FIELDS, **_CEPH_FIELDS}
)
