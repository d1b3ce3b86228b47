"""Backup storages of any type: finding, querying, updating, enabling/disabling,
measuring and deleting them."""
from __future__ import annotations

import logging

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from imgstore.db.models import BackupStorage, BackupStorageZoneRef, CephBackupStorage, Zone
from imgstore.errors import (
    CHANGE_RESOURCE_STATE_ERROR,
    DELETE_RESOURCE_ERROR,
    ApiError,
    invalid_argument,
    not_found,
)
from imgstore.services.catalog import queries, state_changes, tags
from imgstore.services.node.locking import commit_row, locked_row
from imgstore.services.node.runtime import Runtime
from imgstore.services.storage.add_ceph import CEPH
from imgstore.services.storage.cephx import release_cluster_resources
from imgstore.services.storage.queryables import BACKUP_STORAGE_QUERY, CEPH_BACKUP_STORAGE_QUERY
from imgstore.wire.enums import DeleteMode
from imgstore.wire.query import QuerySpec

log = logging.getLogger(__name__)

async def query(rt: Runtime, spec: QuerySpec, ceph_only: bool = False) -> tuple[list[BackupStorage], int | None]:
    """QueryBackupStorage / QueryCephBackupStorage: the page and, when asked, the total."""
    queryable = CEPH_BACKUP_STORAGE_QUERY if ceph_only else BACKUP_STORAGE_QUERY
    return await queries.run(rt, queryable, spec)


async def get(db: AsyncSession, uuid: str) -> BackupStorage:
    row = await db.get(BackupStorage, uuid)
    if row is None:
        raise not_found("BackupStorageVO", uuid)
    return row


async def delete(rt: Runtime, uuid: str, delete_mode: str = "Permissive") -> None:
    """DeleteBackupStorage: the row, its mons, refs and tags, and the cephx key imgstore
    made. Images stay in the pool (ZStack's DeleteReference). An unknown uuid is a success,
    as in ZStack.

    ``deleteMode``: ``Permissive`` (the default) deletes only when the cluster side is
    cleaned up too; if the key cannot be removed (no mon answers) it answers SYS.1004 and
    keeps the storage, so nothing is left behind unknown. ``Enforcing`` deletes the
    storage whatever the cluster says, and logs the key it could not remove.
    (``release_cluster_resources`` answers why when it could not clean up.)
    """
    if delete_mode not in DELETE_MODES:
        raise invalid_argument(
            f"valid value for field[deleteMode] are [{', '.join(DELETE_MODES)}], but {delete_mode} found"
        )
    await rt.clusters.forget(uuid)
    async with rt.db() as db:
        row = await db.get(BackupStorage, uuid)
        if row is None:
            return
        if isinstance(row, CephBackupStorage):
            problem = await release_cluster_resources(rt, row, drop_pool=False)
            if problem is not None and delete_mode != ENFORCING:
                raise ApiError(
                    DELETE_RESOURCE_ERROR,
                    f"cannot delete backup storage[uuid:{uuid}]: its cephx key[{row.ceph_client}] could "
                    f"not be removed from the cluster (no mon answered: {problem}), so the "
                    "storage is kept. Delete it with deleteMode=Enforcing to delete it anyway",
                )
        await tags.delete_tags_of(db, uuid)
        await db.delete(row)
        await db.commit()
    await rt.clusters.forget(uuid)  # one a call made meanwhile; streams finish on theirs (leases)
    await rt.events.tell_deleted(uuid)  # the pinger child's handle goes too, now (issue 13 point 9)


# ---------------------------------------------------------------- lifecycle


PERMISSIVE, ENFORCING = DeleteMode.PERMISSIVE, DeleteMode.ENFORCING
DELETE_MODES = tuple(DeleteMode)


def types() -> list[str]:
    """GetBackupStorageTypes: every type imgstore can add."""
    return [CEPH]


async def load(rt: Runtime, uuid: str) -> BackupStorage:
    """The storage as it is now (the most specific class, mons and zones loaded)."""
    async with rt.db() as db:
        return await get(db, uuid)


async def update(rt: Runtime, uuid: str, name: str | None, description: str | None) -> BackupStorage:
    """UpdateBackupStorage: name and description, each only when given; nothing else."""
    if name is not None and not name.strip():
        raise invalid_argument("field[name] cannot be an empty string")
    async with locked_row(rt, BackupStorage, uuid) as (db, row):
        if row is None:
            raise not_found("BackupStorageVO", uuid)
        if name is not None:
            row.name = name
        if description is not None:
            row.description = description
        return await commit_row(db, row)


async def change_state(rt: Runtime, uuid: str, state_event: str) -> BackupStorage:
    """ChangeBackupStorageState: ``enable``/``disable`` (services/catalog/state_machine.py).

    Changes of one storage are serialised (services/node/locking.py): each reads the state the
    previous one wrote, on this node or another. A storage whose add is still running is
    refused with SYS.1005: the add may yet fail and take the row away.
    """

    def refuse_while_adding(row: BackupStorage) -> None:
        if getattr(row, "adding_node", None) is not None:
            raise ApiError(
                CHANGE_RESOURCE_STATE_ERROR,
                f"cannot change the state of backup storage[uuid:{uuid}]: it is still being added "
                f"(status {row.status}); try again when the add has finished",
            )

    return await state_changes.change_state(
        rt, BackupStorage, uuid, state_event, "BackupStorageVO", refuse=refuse_while_adding
    )


async def capacity(
    rt: Runtime, zone_uuids: list[str], storage_uuids: list[str], all_storages: bool
) -> tuple[int, int]:
    """GetBackupStorageCapacity: (total, available) summed over the storages named, else
    over all of them when ``all``, else over those attached to the zones named (each
    storage counted once, however many of the zones it is in). 0 when none match."""
    if not zone_uuids and not storage_uuids and not all_storages:
        raise invalid_argument(
            "zoneUuids, backupStorageUuids must have at least one be none-empty list, or all is set to true"
        )
    async with rt.db() as db:
        await _check_exist(db, BackupStorage, "BackupStorageVO", "backupStorageUuids", storage_uuids)
        await _check_exist(db, Zone, "ZoneVO", "zoneUuids", zone_uuids)
        sums = select(
            func.coalesce(func.sum(BackupStorage.total_capacity), 0),
            func.coalesce(func.sum(BackupStorage.available_capacity), 0),
        )
        if storage_uuids:
            sums = sums.where(BackupStorage.uuid.in_(storage_uuids))
        elif not all_storages:
            attached = select(BackupStorageZoneRef.backup_storage_uuid).where(
                BackupStorageZoneRef.zone_uuid.in_(zone_uuids)
            )
            sums = sums.where(BackupStorage.uuid.in_(attached))
        total, available = (await db.execute(sums)).one()
    return int(total), int(available)


async def _check_exist(db: AsyncSession, entity: type[BackupStorage] | type[Zone], resource: str, field: str,
                       uuids: list[str]) -> None:
    if not uuids:
        return
    found = set(await db.scalars(select(entity.uuid).where(entity.uuid.in_(uuids))))
    missing = [u for u in dict.fromkeys(uuids) if u not in found]
    if missing:
        raise not_found(resource, missing[0], field=field)


