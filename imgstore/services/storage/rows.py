"""A Ceph backup storage's row: loaded, saved, measured; the one way to read it here.

Every module of the storage package (and the tracker) loads a storage through these, so
the row comes with its mons, fresh from the database (``populate_existing``), and a
capacity reading sets the same columns wherever it was taken.
"""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from imgstore import ceph
from imgstore.db.models import CephBackupStorage, CephMon
from imgstore.errors import not_found
from imgstore.services.node.runtime import Runtime


async def load(rt: Runtime, uuid: str) -> CephBackupStorage:
    async with rt.db() as db:
        row = await db.get(CephBackupStorage, uuid, populate_existing=True)
        if row is None:
            raise not_found("CephBackupStorageVO", uuid)
        return row


async def load_many(rt: Runtime, uuids: list[str]) -> list[CephBackupStorage]:
    """The storages of ``uuids`` (with their mons); missing ones are left out."""
    async with rt.db() as db:
        return await rows_of(db, uuids)


async def rows_of(db: AsyncSession, uuids: list[str]) -> list[CephBackupStorage]:
    """The storages of ``uuids`` in ``db``, a query per 500 (SQLite's bound-parameter limit)."""
    rows: list[CephBackupStorage] = []
    for i in range(0, len(uuids), 500):
        rows += await db.scalars(select(CephBackupStorage).where(CephBackupStorage.uuid.in_(uuids[i : i + 500])))
    return rows


async def versions_of(rt: Runtime, uuids: list[str]) -> dict[str, tuple[object, ...]]:
    """For each storage of ``uuids`` that exists, a value that changes whenever it or its
    mons do (its lastOpDate, its mons' number and latest lastOpDate): a reader that kept
    a row reloads it only when this moved. One plain statement, no rows built."""
    bs, mon = CephBackupStorage, CephMon
    versions: dict[str, tuple[object, ...]] = {}
    async with rt.db() as db:
        for i in range(0, len(uuids), 500):
            stmt = (
                select(bs.uuid, bs.last_op_date, func.count(mon.uuid), func.max(mon.last_op_date))
                .outerjoin(mon, mon.backup_storage_uuid == bs.uuid)
                .where(bs.uuid.in_(uuids[i : i + 500]))
                .group_by(bs.uuid, bs.last_op_date)
            )
            for uuid, *version in await db.execute(stmt):
                versions[uuid] = tuple(version)
    return versions


async def save(rt: Runtime, uuid: str, **values: object) -> None:
    """Set ``values`` on the storage's row and commit (one step of an add, a new key)."""
    async with rt.db() as db:
        row = await db.get(CephBackupStorage, uuid)
        assert row is not None
        for k, v in values.items():
            setattr(row, k, v)
        await db.commit()


def apply_capacity(row: CephBackupStorage, capacity: ceph.Capacity) -> None:
    for name, value in capacity_columns(capacity).items():
        setattr(row, name, value)


def capacity_columns(capacity: ceph.Capacity) -> dict[str, object]:
    """The storage's columns that a capacity reading sets."""
    return {
        "total_capacity": capacity.total,
        "available_capacity": capacity.available,
        "pool_available_capacity": capacity.pool_available,
        "pool_used_capacity": capacity.pool_used,
        "pool_replicated_size": capacity.pool_replicated_size,
        "pool_disk_utilization": capacity.pool_disk_utilization,
        "pool_security_policy": capacity.pool_security_policy,
    }
