"""Zones: creating, querying, changing and deleting them, and attaching backup storages.

imgstore has no hosts or clusters; a zone is what ZStack clients group backup storages
by (``attachedZoneUuids``, GetBackupStorageCapacity by ``zoneUuids``), so it keeps
ZStack's zone API and its attach/detach rules and errors.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy import delete
from sqlalchemy import update as update_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from imgstore.crypto import new_uuid
from imgstore.db.engine import rows_changed
from imgstore.db.models import BackupStorage, BackupStorageZoneRef, Zone
from imgstore.errors import (
    OPERATION_ERROR,
    ApiError,
    invalid_argument,
    not_found,
)
from imgstore.services.catalog import queries, state_changes, tags
from imgstore.services.node.locking import commit_row, locked_row
from imgstore.services.node.runtime import Runtime
from imgstore.services.storage.queryables import ZONE_QUERY
from imgstore.wire.enums import State
from imgstore.wire.query import QuerySpec

ZONE_TYPE = "zstack"  # ZoneVO's type in ZStack
RESOURCE_TYPE = "ZoneVO"
_UUID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class NewZone:
    """What CreateZone asks for, already typed by the API layer."""

    name: str
    description: str | None = None
    resource_uuid: str | None = None
    is_default: bool = False
    system_tags: list[str] = field(default_factory=list)
    user_tags: list[str] = field(default_factory=list)


def _check_name(name: str | None) -> None:
    if name is not None and not name.strip():
        raise invalid_argument("field[name] cannot be an empty string")


async def create(rt: Runtime, req: NewZone) -> Zone:
    """CreateZone: an Enabled zone of type ``zstack``, with the tags given."""
    _check_name(req.name)
    if req.resource_uuid is not None and not _UUID.fullmatch(req.resource_uuid):
        raise invalid_argument(
            f"field[resourceUuid] value[{req.resource_uuid}] is not a valid uuid: "
            "32 lowercase hex characters without dashes"
        )
    tags.check_tags(req.system_tags, req.user_tags)
    uuid = req.resource_uuid or new_uuid()
    async with rt.db() as db:
        if req.is_default:
            await _clear_default(db, uuid)
        db.add(Zone(uuid=uuid, name=req.name, description=req.description, state=State.ENABLED, type=ZONE_TYPE,
                    is_default=req.is_default))
        db.add_all(tags.new_tags(uuid, RESOURCE_TYPE, req.system_tags, req.user_tags))
        try:
            await db.commit()
        except IntegrityError:
            raise invalid_argument(f"field[resourceUuid]: a resource with uuid[{uuid}] already exists") from None
    return await load(rt, uuid)


async def query(rt: Runtime, spec: QuerySpec) -> tuple[list[Zone], int | None]:
    """QueryZone: the page and, when asked, the total."""
    return await queries.run(rt, ZONE_QUERY, spec)


async def load(rt: Runtime, uuid: str, field_name: str = "uuid") -> Zone:
    async with rt.db() as db:
        row = await db.get(Zone, uuid)
        if row is None:
            raise not_found(RESOURCE_TYPE, uuid, field=field_name)
        return row


async def update(rt: Runtime, uuid: str, name: str | None, description: str | None,
                 is_default: bool | None = None) -> Zone:
    """UpdateZone: name, description and isDefault, each only when given."""
    _check_name(name)
    async with locked_row(rt, Zone, uuid) as (db, row):
        if row is None:
            raise not_found(RESOURCE_TYPE, uuid)
        if name is not None:
            row.name = name
        if description is not None:
            row.description = description
        if is_default is not None:
            if is_default:
                await _clear_default(db, uuid)
            row.is_default = is_default
        return await commit_row(db, row)


async def _clear_default(db: AsyncSession, but: str) -> None:
    """One default zone at a time, as ZStack's CreateZone/UpdateZone keep it."""
    await db.execute(update_(Zone).where(Zone.is_default.is_(True), Zone.uuid != but).values(is_default=False))


async def change_state(rt: Runtime, uuid: str, state_event: str) -> Zone:
    """ChangeZoneState: enable/disable, serialised per zone; already there is a no-op."""
    return await state_changes.change_state(rt, Zone, uuid, state_event, RESOURCE_TYPE)


async def delete_zone(rt: Runtime, uuid: str) -> None:
    """DeleteZone: the zone, its attachments (the storages stay, detached) and its tags.
    An unknown uuid is a success, as in ZStack. Both delete modes do the same: nothing
    in imgstore can refuse the deletion of a zone."""
    async with locked_row(rt, Zone, uuid) as (db, row):
        if row is None:
            return
        await db.execute(delete(BackupStorageZoneRef).where(BackupStorageZoneRef.zone_uuid == uuid))
        await tags.delete_tags_of(db, uuid)
        await db.delete(row)
        await db.commit()


# ---------------------------------------------------------------- attachment


async def attach_backup_storage(rt: Runtime, zone_uuid: str, storage_uuid: str) -> BackupStorage:
    """AttachBackupStorageToZone. The storage's row is locked meanwhile, so attach and
    detach of one storage are serialised; the unique (storage, zone) pair is the
    backstop across anything else."""
    async with locked_row(rt, BackupStorage, storage_uuid) as (db, storage):
        if await db.get(Zone, zone_uuid) is None:
            raise not_found(RESOURCE_TYPE, zone_uuid, field="zoneUuid")
        if storage is None:
            raise not_found("BackupStorageVO", storage_uuid, field="backupStorageUuid")
        if zone_uuid in storage.attached_zone_uuids:
            raise _attached(storage_uuid, zone_uuid)
        db.add(BackupStorageZoneRef(backup_storage_uuid=storage_uuid, zone_uuid=zone_uuid))
        try:
            await db.commit()
        except IntegrityError:
            await db.rollback()
            if await db.get(Zone, zone_uuid) is None:  # deleted meanwhile
                raise not_found(RESOURCE_TYPE, zone_uuid, field="zoneUuid") from None
            raise _attached(storage_uuid, zone_uuid) from None
    return await _load_storage(rt, storage_uuid)


async def detach_backup_storage(rt: Runtime, zone_uuid: str, storage_uuid: str) -> BackupStorage:
    """DetachBackupStorageFromZone; a storage not attached there is SYS.1006."""
    async with locked_row(rt, BackupStorage, storage_uuid) as (db, storage):
        if await db.get(Zone, zone_uuid) is None:
            raise not_found(RESOURCE_TYPE, zone_uuid, field="zoneUuid")
        if storage is None:
            raise not_found("BackupStorageVO", storage_uuid, field="backupStorageUuid")
        gone = await db.execute(
            delete(BackupStorageZoneRef).where(
                BackupStorageZoneRef.backup_storage_uuid == storage_uuid,
                BackupStorageZoneRef.zone_uuid == zone_uuid,
            )
        )
        if rows_changed(gone) == 0:
            raise ApiError(
                OPERATION_ERROR,
                f"backup storage[uuid:{storage_uuid}] has not been attached to zone[uuid:{zone_uuid}]",
            )
        await db.commit()
    return await _load_storage(rt, storage_uuid)


def _attached(storage_uuid: str, zone_uuid: str) -> ApiError:
    return ApiError(
        OPERATION_ERROR, f"backup storage[uuid:{storage_uuid}] has been attached to zone[uuid:{zone_uuid}]"
    )


async def _load_storage(rt: Runtime, uuid: str) -> BackupStorage:
    async with rt.db() as db:
        row = await db.get(BackupStorage, uuid)
        if row is None:
            raise not_found("BackupStorageVO", uuid, field="backupStorageUuid")
        return row


