"""Images on Ceph backup storages: the rows, their checks and queries, and the small
image APIs (ChangeImageState, UpdateImage, SyncImageSize).

An image is an RBD format-2 image named by the image uuid in each storage's pool,
install path ``ceph://<pool>/<uuid>`` (README, Design notes). Adding one is in
``image_download`` (http, file) and ``image_upload`` (upload://); deleting, expunging
and recovering in ``image_deletion``. This module holds what they share: the AddImage
checks in ZStack's words, the rows and the capacity refresh. The
storage's metadata object follows images by direct calls (``images.metadata``).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from imgstore import ceph
from imgstore.db import query as q
from imgstore.db.models import (
    BackupStorage,
    CephBackupStorage,
    Image,
    ImageBackupStorageRef,
    ImageUpload,
    Tag,
)
from imgstore.errors import (
    OPERATION_ERROR,
    ApiError,
    invalid_argument,
    not_found,
)
from imgstore.services.catalog import queries, state_changes, tags
from imgstore.services.node.ceph_errors import ceph_error
from imgstore.services.node.locking import locked_row
from imgstore.services.node.runtime import Runtime
from imgstore.services.storage.queryables import BACKUP_STORAGE_QUERY
from imgstore.services.storage.rows import apply_capacity
from imgstore.wire.enums import ImageStatus, MediaType, State, StorageStatus
from imgstore.wire.query import QuerySpec

log = logging.getLogger(__name__)

RESOURCE_TYPE = "ImageVO"
MEDIA_TYPES = tuple(MediaType)
ISO_MEDIA = MediaType.ISO
FORMATS = ("qcow2", "raw", "vmdk", "iso")
PLATFORMS = ("Linux", "Windows", "Other", "Paravirtualization", "WindowsVirtio")
ARCHITECTURES = ("x86_64", "aarch64", "mips64el", "loongarch64")
IMAGE_TYPE = "zstack"

# image and ref statuses (ZStack's ImageStatus)
DOWNLOADING, READY, ERROR, DELETED = (ImageStatus.DOWNLOADING, ImageStatus.READY, ImageStatus.ERROR,
                                      ImageStatus.DELETED)
ENABLED = State.ENABLED
_UUID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class NewImage:
    """What AddImage asks for, typed by the API layer."""

    name: str
    url: str
    backup_storage_uuids: list[str]
    description: str | None = None
    media_type: str | None = None
    format: str | None = None
    guest_os_type: str | None = None
    platform: str | None = None
    architecture: str | None = None
    system: bool = False
    virtio: bool = True
    type: str | None = None
    resource_uuid: str | None = None
    system_tags: list[str] = field(default_factory=list)
    user_tags: list[str] = field(default_factory=list)


def install_path(pool: str, image_uuid: str) -> str:
    return f"ceph://{pool}/{image_uuid}"


def _one_of(name: str, value: str | None, valid: tuple[str, ...]) -> None:
    if value is not None and value not in valid:
        raise invalid_argument(f"valid value for field[{name}] are [{', '.join(valid)}], but {value} found")


def check_new_image(req: NewImage) -> NewImage:
    """The field checks of AddImage, in ZStack's words; returns the request with its
    defaults filled in (mediaType RootVolumeTemplate, format iso for an ISO)."""
    if not req.name.strip():
        raise invalid_argument("field[name] cannot be an empty string")
    if not req.backup_storage_uuids:
        raise invalid_argument("field[backupStorageUuids] must be a nonempty list")
    if any(not u for u in req.backup_storage_uuids):
        raise invalid_argument("field[backupStorageUuids] cannot contain any empty string")
    _one_of("mediaType", req.media_type, MEDIA_TYPES)
    _one_of("platform", req.platform, PLATFORMS)
    _one_of("architecture", req.architecture, ARCHITECTURES)
    media = req.media_type or MEDIA_TYPES[0]
    fmt = "iso" if media == ISO_MEDIA else req.format
    if fmt is None:
        raise invalid_argument(f"field[format] is mandatory unless mediaType is ISO; "
                               f"valid formats are [{', '.join(FORMATS)}]")
    if fmt not in FORMATS:
        raise invalid_argument(f"unknown format[{fmt}]; valid formats are [{', '.join(FORMATS)}]")
    if req.resource_uuid is not None and not _UUID.fullmatch(req.resource_uuid):
        raise invalid_argument(f"field[resourceUuid] value[{req.resource_uuid}] is not a valid uuid: "
                               "32 lowercase hex characters without dashes")
    tags.check_tags(req.system_tags, req.user_tags)
    req.media_type, req.format = media, fmt
    return req


async def usable_storages(rt: Runtime, uuids: list[str]) -> list[CephBackupStorage]:
    """The storages named that can take an image now: Enabled, Connected, with room.

    An unknown uuid is SYS.1003; when none is usable, SYS.1006 as ZStack's interceptor
    says it. Usable ones are kept (ZStack drops the others silently; so does imgstore).
    """
    wanted = list(dict.fromkeys(uuids))
    async with rt.db() as db:
        rows = {r.uuid: r for r in await db.scalars(select(BackupStorage).where(BackupStorage.uuid.in_(wanted)))}
    for u in wanted:
        if u not in rows:
            raise not_found("BackupStorageVO", u, field="backupStorageUuids")
    ceph_rows = [row for u in wanted if isinstance(row := rows[u], CephBackupStorage)]
    usable = [row for row in ceph_rows if row.state == ENABLED and row.status == StorageStatus.CONNECTED
              and row.available_capacity > 0]
    if not usable:
        raise ApiError(
            OPERATION_ERROR,
            f"no backup storage specified in uuids{wanted} is available for adding this image; "
            "check that they are Enabled, Connected and have available capacity",
        )
    return usable


async def create(rt: Runtime, req: NewImage, storages: list[CephBackupStorage],
                 uuid: str, extra: list[Any] | None = None) -> Image:
    """The image (Downloading), a ref per storage with its install path, tags, and the
    rows that follow its add (progress, upload slot), in one transaction: a crash can
    leave no image without them."""
    image = Image(
        uuid=uuid, name=req.name, description=req.description, state=ENABLED, status=DOWNLOADING,
        url=req.url, media_type=req.media_type, guest_os_type=req.guest_os_type,
        type=req.type or IMAGE_TYPE, platform=req.platform, architecture=req.architecture,
        format=req.format, system=req.system, virtio=req.virtio, size=0, actual_size=0,
        backup_storage_refs=[
            ImageBackupStorageRef(backup_storage_uuid=s.uuid, status=DOWNLOADING,
                                  install_path=install_path(s.pool_name or "", uuid))
            for s in storages
        ],
    )
    async with rt.db() as db:
        db.add(image)
        db.add_all(tags.new_tags(uuid, RESOURCE_TYPE, req.system_tags, req.user_tags))
        db.add_all(extra or [])
        try:
            await db.commit()
        except IntegrityError:
            raise invalid_argument(f"resource[uuid:{uuid}] has been occupied") from None
    return await load(rt, uuid)


async def load(rt: Runtime, uuid: str) -> Image:
    """The image with its refs as stored now; SYS.1003 when there is none."""
    async with rt.db() as db:
        row = await db.get(Image, uuid, populate_existing=True)
        if row is None:
            raise not_found(RESOURCE_TYPE, uuid)
        return row


async def find(rt: Runtime, uuid: str) -> Image | None:
    async with rt.db() as db:
        return await db.get(Image, uuid, populate_existing=True)


async def storage_of(rt: Runtime, uuid: str) -> CephBackupStorage:
    async with rt.db() as db:
        row = await db.get(CephBackupStorage, uuid, populate_existing=True)
    if row is None:
        raise not_found("BackupStorageVO", uuid, field="backupStorageUuid")
    return row


async def cluster_of(rt: Runtime, storage: CephBackupStorage) -> ceph.Cluster:
    return await rt.clusters.get(storage)


# ---------------------------------------------------------------- capacity


async def refresh_capacity(rt: Runtime, backup_storage_uuid: str) -> None:
    """Read the storage's capacity from its cluster now (after an add or a removal).
    Best effort: the ping tracker refreshes it anyway; a failure is only logged."""
    try:
        storage = await storage_of(rt, backup_storage_uuid)
        cluster = await cluster_of(rt, storage)
        capacity = await cluster.capacity(storage.pool_name or "")
    except (ApiError, ceph.CephError) as e:
        log.info("capacity of backup storage %s not refreshed: %s", backup_storage_uuid, e)
        return
    async with rt.db() as db:
        row = await db.get(CephBackupStorage, backup_storage_uuid)
        if row is not None:
            apply_capacity(row, capacity)
            await db.commit()


# ---------------------------------------------------------------- queries


REF_QUERY = q.Queryable(
    entity=ImageBackupStorageRef,
    name="ImageBackupStorageRefInventory",
    fields=q.columns(
        ImageBackupStorageRef, "id", "image_uuid", "backup_storage_uuid", "install_path", "status", "export_url",
        "export_md5_sum", "create_date", "last_op_date",
    ),
    default_sort="createDate",
)


IMAGE_QUERY = q.Queryable(
    entity=Image,
    name="ImageInventory",
    fields=q.columns(
        Image, "uuid", "name", "description", "state", "status", "size", "actual_size", "md5_sum", "sha512_sum",
        "url", "media_type", "guest_os_type", "type", "platform", "architecture", "format", "system", "virtio",
        "create_date", "last_op_date",
    ),
    relations={
        "backupStorageRefs": q.relation(
            Image.uuid, lambda: select(ImageBackupStorageRef.image_uuid, ImageBackupStorageRef.id), REF_QUERY
        ),
        "backupStorage": q.relation(  # the image's storages, through its refs
            Image.uuid, lambda: select(ImageBackupStorageRef.image_uuid, ImageBackupStorageRef.backup_storage_uuid),
            BACKUP_STORAGE_QUERY,
        ),
    },
    tags=q.tag_filter(Image.uuid, tags.tag_rows),
    default_sort="createDate",
)


async def query(rt: Runtime, spec: QuerySpec) -> tuple[list[Image], int | None]:
    """QueryImage: the page and, when asked, the total."""
    return await queries.run(rt, IMAGE_QUERY, spec)


# ---------------------------------------------------------------- small APIs


async def change_state(rt: Runtime, uuid: str, state_event: str) -> Image:
    """ChangeImageState: ``enable``/``disable`` (services/catalog/state_machine.py)."""
    await state_changes.change_state(rt, Image, uuid, state_event, RESOURCE_TYPE)
    return await load(rt, uuid)


@dataclass
class ImageUpdate:
    name: str | None = None
    description: str | None = None
    guest_os_type: str | None = None
    media_type: str | None = None
    format: str | None = None
    system: bool | None = None
    platform: str | None = None
    architecture: str | None = None
    virtio: bool | None = None


async def update(rt: Runtime, uuid: str, change: ImageUpdate) -> Image:
    """UpdateImage: every field given, nothing else."""
    if change.name is not None and not change.name.strip():
        raise invalid_argument("field[name] cannot be an empty string")
    _one_of("mediaType", change.media_type, MEDIA_TYPES)
    _one_of("platform", change.platform, PLATFORMS)
    _one_of("architecture", change.architecture, ARCHITECTURES)
    if change.format is not None and change.format not in FORMATS:
        raise invalid_argument(f"unknown format[{change.format}]; valid formats are [{', '.join(FORMATS)}]")
    async with locked_row(rt, Image, uuid) as (db, row):
        if row is None:
            raise not_found(RESOURCE_TYPE, uuid)
        for name, value in vars(change).items():
            if value is not None:
                setattr(row, name, value)
        await db.commit()
    return await load(rt, uuid)


async def sync_size(rt: Runtime, uuid: str) -> Image:
    """SyncImageSize: the image's size from its RBD image (the first Ready storage that
    answers), as ZStack's agent ``getsize`` does, and its actual size: the bytes the RBD
    image holds (ZStack's Ceph agent leaves it unfilled)."""
    image = await load(rt, uuid)
    refs = [r for r in image.backup_storage_refs if r.status == READY]
    if not refs:
        raise ApiError(OPERATION_ERROR, f"image[uuid:{uuid}] is not Ready on any backup storage; "
                                        "there is no size to read")
    errors: list[ApiError] = []
    for ref in refs:
        try:
            storage = await storage_of(rt, ref.backup_storage_uuid)
            size, used = await ceph.image_usage(await cluster_of(rt, storage), storage.pool_name or "", uuid)
        except ceph.CephError as e:
            errors.append(ceph_error(e))
            continue
        except ApiError as e:
            errors.append(e)
            continue
        async with locked_row(rt, Image, uuid) as (db, row):
            if row is None:
                raise not_found(RESOURCE_TYPE, uuid)
            row.size, row.actual_size = size, used
            await db.commit()
        return await load(rt, uuid)
    raise ApiError(OPERATION_ERROR, f"cannot read the size of image[uuid:{uuid}]: "
                                    f"{'; '.join(e.details for e in errors)}", causes=errors,
                   status=errors[0].status)


async def delete_rows_of_image(db: AsyncSession, uuid: str) -> None:
    """Everything about an image in the database (used when it is gone for good)."""
    await db.execute(delete(ImageUpload).where(ImageUpload.image_uuid == uuid))
    await db.execute(delete(ImageBackupStorageRef).where(ImageBackupStorageRef.image_uuid == uuid))
    await db.execute(delete(Tag).where(Tag.resource_uuid == uuid))
    await db.execute(delete(Image).where(Image.uuid == uuid))

