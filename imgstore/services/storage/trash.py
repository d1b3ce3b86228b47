"""A backup storage's trash: what imgstore left in its pool and knows it no longer needs
(GetTrashOnBackupStorage, CleanUpTrashOnBackupStorage; issue 16 point 4).

Two ways in, both written down before anything can be lost:

* :func:`hold` before a copy into a storage starts (a migration's destination): a row
  naming the node writing it. The copy ends with :func:`release` (it succeeded, or its
  partial image was removed) or :func:`discard` (the removal failed: the row is trash now).
  A node that dies mid-copy leaves its row; at its next start :func:`settle_pending`
  finds it, and the partial image, if it is there, becomes trash.
* :func:`record` for bits whose removal failed outright: a failed add's image
  (trashType ``AddImage``, imgstore's own) that the intake could not remove.

Cleaning up removes the RBD image and then the row; an install path that an image ref
holds again (a later copy succeeded there) is never removed, only forgotten.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select, update

from imgstore import ceph
from imgstore.db.models import BackupStorageTrash, CephBackupStorage, ImageBackupStorageRef
from imgstore.errors import ApiError, invalid_argument, not_found
from imgstore.services.node.ceph_errors import ceph_error
from imgstore.services.node.runtime import Runtime

log = logging.getLogger(__name__)

MIGRATE_IMAGE = "MigrateImage"  # ZStack's only trashType of backup storages
ADD_IMAGE = "AddImage"  # imgstore's: what a failed add (download, upload) could not remove
TRASH_TYPES = (MIGRATE_IMAGE, ADD_IMAGE)


def split_path(install_path: str) -> tuple[str, str]:
    """``ceph://<pool>/<name>`` → ``(pool, name)``."""
    rest = install_path.removeprefix("ceph://")
    pool, _, name = rest.partition("/")
    if not pool or not name or rest == install_path:
        raise ValueError(f"not a Ceph install path: {install_path}")
    return pool, name


async def hold(rt: Runtime, storage_uuid: str, install_path: str, resource_uuid: str,
               resource_type: str, trash_type: str = MIGRATE_IMAGE) -> int:
    """Note a copy about to be written by this node; its id, for :func:`release`."""
    async with rt.db() as db:
        row = BackupStorageTrash(backup_storage_uuid=storage_uuid, resource_uuid=resource_uuid,
                                 resource_type=resource_type, trash_type=trash_type,
                                 install_path=install_path, node=rt.node_id)
        db.add(row)
        await db.commit()
        return row.id


async def release(rt: Runtime, trash_id: int) -> None:
    """The copy is done or its bits are gone: nothing to keep."""
    async with rt.db() as db:
        await db.execute(delete(BackupStorageTrash).where(BackupStorageTrash.id == trash_id))
        await db.commit()


async def discard(rt: Runtime, trash_id: int, size: int | None) -> None:
    """The copy failed and its bits could not be removed: they are trash now."""
    async with rt.db() as db:
        await db.execute(update(BackupStorageTrash).where(BackupStorageTrash.id == trash_id)
                         .values(node=None, size=size))
        await db.commit()


async def record(rt: Runtime, storage_uuid: str, install_path: str, resource_uuid: str | None,
                 resource_type: str, size: int | None, trash_type: str = MIGRATE_IMAGE) -> None:
    """Bits whose removal failed: trash at once."""
    async with rt.db() as db:
        db.add(BackupStorageTrash(backup_storage_uuid=storage_uuid, resource_uuid=resource_uuid,
                                  resource_type=resource_type, trash_type=trash_type,
                                  install_path=install_path, size=size))
        await db.commit()


async def settle_pending(rt: Runtime) -> None:
    """At start: copies this node was writing when it stopped. Their partial image is
    trash when it is there (its size read), forgotten when it is not; an unreachable
    storage's stays trash, size unknown."""
    async with rt.db() as db:
        rows = list(await db.scalars(select(BackupStorageTrash).where(BackupStorageTrash.node == rt.node_id)))
    for row in rows:
        size: int | None = None
        try:
            size = await _size_of(rt, row)
        except ceph.ImageNotFound:
            await release(rt, row.id)
            continue
        except (ceph.CephError, ApiError, ValueError) as e:
            log.warning("trash %s: cannot read %s: %s", row.id, row.install_path, e)
        log.info("found a leftover of an interrupted copy: %s (%s bytes)", row.install_path, size)
        await discard(rt, row.id, size)


async def _size_of(rt: Runtime, row: BackupStorageTrash) -> int | None:
    async with rt.db() as db:
        storage = await db.get(CephBackupStorage, row.backup_storage_uuid)
    if storage is None:
        return None
    pool, name = split_path(row.install_path)
    return await ceph.image_size(await rt.clusters.get(storage), pool, name)


async def query(rt: Runtime, storage_uuid: str, resource_uuid: str | None = None,
                resource_type: str | None = None, trash_type: str | None = None) -> list[BackupStorageTrash]:
    """GetTrashOnBackupStorage: the storage's trash (copies under way are not trash yet)."""
    if (resource_uuid is None) != (resource_type is None):
        raise invalid_argument("resourceUuid and resourceType must be given together, or neither")
    if trash_type is not None and trash_type not in TRASH_TYPES:
        raise invalid_argument(f"field[trashType] value[{trash_type}] is not a valid value; valid values are "
                               f"{list(TRASH_TYPES)}")
    async with rt.db() as db:
        if await db.get(CephBackupStorage, storage_uuid) is None:
            raise not_found("BackupStorageVO", storage_uuid)
        stmt = select(BackupStorageTrash).where(BackupStorageTrash.backup_storage_uuid == storage_uuid,
                                                BackupStorageTrash.node.is_(None))
        if resource_uuid is not None:
            stmt = stmt.where(BackupStorageTrash.resource_uuid == resource_uuid,
                              BackupStorageTrash.resource_type == resource_type)
        if trash_type is not None:
            stmt = stmt.where(BackupStorageTrash.trash_type == trash_type)
        return list(await db.scalars(stmt.order_by(BackupStorageTrash.id)))


@dataclass
class Cleaned:
    """CleanUpTrashOnBackupStorage's answer: ZStack's CleanTrashResult and TrashCleanupResults."""

    resource_uuids: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    size: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)


async def clean_up(rt: Runtime, storage_uuid: str, trash_id: int | None) -> Cleaned:
    """Remove the storage's trash (one entry with ``trash_id``). Each removal is tried on
    its own; one that fails stays in the trash and says why."""
    rows = await query(rt, storage_uuid)
    out = Cleaned()
    if trash_id is not None:
        rows = [r for r in rows if r.id == trash_id]
        if not rows:  # ZStack: cleaned up already, or never there; nothing to do, and it says so
            out.results.append({"resourceUuid": None, "trashId": trash_id, "size": 0, "success": True,
                                "error": None})
            return out
    for row in rows:
        result: dict[str, Any] = {"resourceUuid": row.resource_uuid, "trashId": row.id, "size": row.size or 0}
        try:
            await _remove(rt, row)
        except ApiError as e:
            out.details.append(f"trash[id:{row.id}, installPath:{row.install_path}]: {e.details}")
            out.results.append({**result, "success": False, "error": e.to_dict()})
            continue
        await release(rt, row.id)
        if row.resource_uuid:
            out.resource_uuids.append(row.resource_uuid)
        out.size += row.size or 0
        out.results.append({**result, "success": True, "error": None})
    return out


async def _remove(rt: Runtime, row: BackupStorageTrash) -> None:
    async with rt.db() as db:
        storage = await db.get(CephBackupStorage, row.backup_storage_uuid)
        in_use = await db.scalar(select(ImageBackupStorageRef.id).where(
            ImageBackupStorageRef.backup_storage_uuid == row.backup_storage_uuid,
            ImageBackupStorageRef.install_path == row.install_path))
    if storage is None or in_use is not None:
        return  # nothing of ours to remove: an image holds the path again
    pool, name = split_path(row.install_path)
    try:
        await ceph.remove_image(await rt.clusters.get(storage), pool, name, missing_ok=True)
    except ceph.CephError as e:
        raise ceph_error(e) from None
