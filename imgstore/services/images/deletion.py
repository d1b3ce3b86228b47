"""DeleteImage, ExpungeImage, RecoverImage, and the loop that expunges in time.

ZStack's deletion policy, setting ``image_deletion_policy``:

* **Delay** (the default): DeleteImage marks the refs Deleted, and the image once no
  ref is left that is not; the bits stay, RecoverImage brings it back, and the
  :class:`Expunger` expunges it ``image_expunge_period`` seconds later (checked every
  ``image_expunge_interval``).
* **Direct**: DeleteImage removes the bits at once (an expunge without the wait).

An image that is still Downloading (or failed) has nothing worth keeping: deleting it
stops its download or upload and removes its bits, whatever the policy.

Removing bits is ``ceph.remove_image``. An RBD image with clones, snapshots or
watchers is not removed and the call fails with a 409 naming them: the ref stays, so the
bits are never leaked unknown. Capacity is read again after every removal.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import select

from imgstore import ceph
from imgstore.db.models import CephBackupStorage, Image, ImageBackupStorageRef
from imgstore.errors import INVALID_ARGUMENT, OPERATION_ERROR, ApiError, invalid_argument, not_found
from imgstore.services.images import download as image_download
from imgstore.services.images import export as image_export
from imgstore.services.images import manage as images
from imgstore.services.images import metadata
from imgstore.services.images import upload as image_upload
from imgstore.services.node import task_progress
from imgstore.services.node.ceph_errors import ceph_error
from imgstore.services.node.locking import locked_row
from imgstore.services.node.runtime import Runtime
from imgstore.wire.dates import utcnow
from imgstore.wire.enums import DeleteMode, DeletionPolicy, ImageStatus

log = logging.getLogger(__name__)

DELAY, DIRECT = DeletionPolicy.DELAY, DeletionPolicy.DIRECT
DELETE_MODES = tuple(DeleteMode)
RETRY_PAUSES = (0, 5, 10, 15, 30, 60)  # seconds before each clean-up pass after a start
EXPUNGING = ImageStatus.EXPUNGING  # a ref whose bits an Expunge is removing now (see expunge)
STALE_CLAIM = timedelta(minutes=10)  # an Expunging ref untouched this long was left by a dead call


def _selected(image: Image, uuids: list[str] | None) -> list[ImageBackupStorageRef]:
    """The refs the call names (all when it names none); SYS.1007 for a storage the image
    is not on."""
    if uuids is None:
        return list(image.backup_storage_refs)
    if not uuids:
        raise invalid_argument("field[backupStorageUuids] must be a nonempty list")
    on = {r.backup_storage_uuid: r for r in image.backup_storage_refs}
    missing = [u for u in uuids if u not in on]
    if missing:
        raise invalid_argument(f"image[uuid:{image.uuid}] is not on backup storage{missing}")
    return [on[u] for u in dict.fromkeys(uuids)]


async def delete(rt: Runtime, uuid: str, backup_storage_uuids: list[str] | None = None,
                 delete_mode: str = "Permissive") -> None:
    """DeleteImage. An unknown uuid succeeds, as in ZStack."""
    if delete_mode not in DELETE_MODES:
        raise invalid_argument(f"valid value for field[deleteMode] are [{', '.join(DELETE_MODES)}], "
                               f"but {delete_mode} found")
    image = await images.find(rt, uuid)
    if image is None:
        return
    if image.status in (images.DOWNLOADING, images.ERROR):
        await image_download.cancel(rt, uuid)
        await image_upload.cancel(uuid)
        await _remove(rt, uuid, None)
        return
    refs = _selected(image, backup_storage_uuids)
    if rt.settings.image_deletion_policy == DIRECT:
        await _remove(rt, uuid, [r.backup_storage_uuid for r in refs])
        return
    async with locked_row(rt, Image, uuid) as (db, row):
        if row is None:
            return
        chosen = {r.backup_storage_uuid for r in refs}
        for ref in row.backup_storage_refs:
            if ref.backup_storage_uuid in chosen and ref.status != EXPUNGING:  # an Expunge's claim stays
                ref.status = images.DELETED
        if all(r.status in (images.DELETED, EXPUNGING) for r in row.backup_storage_refs):
            row.status = images.DELETED
            row.deleted_date = utcnow()
        await db.commit()


async def expunge(rt: Runtime, uuid: str, backup_storage_uuids: list[str] | None = None) -> None:
    """ExpungeImage: remove the bits of a deleted image (from the storages named, or all),
    then its refs, then the image when no ref is left.

    The refs are claimed first, under the image's row lock (``Expunging``): a Recover or
    another Expunge that comes while the bits are being removed finds them not Deleted
    and is refused, instead of recovering an image whose bits are going (the check and
    the claim were two steps before: a Recover between them left a Ready image without
    bits). The bits are removed outside the lock (a Ceph call); refs whose bits stay
    are Deleted again."""
    claimed = await _claim(rt, uuid, backup_storage_uuids)
    try:
        await _remove(rt, uuid, claimed)
    finally:
        await _unclaim(rt, uuid, claimed)


async def _claim(rt: Runtime, uuid: str, backup_storage_uuids: list[str] | None) -> list[str]:
    """Re-check under the row lock that the refs are Deleted, and mark them Expunging.
    A claim older than ``STALE_CLAIM`` (its node died mid-way) may be taken again."""
    stale = utcnow() - STALE_CLAIM
    async with locked_row(rt, Image, uuid) as (db, row):
        if row is None:
            raise not_found(images.RESOURCE_TYPE, uuid)
        refs = _selected(row, backup_storage_uuids)
        busy = [r.backup_storage_uuid for r in refs if r.status == EXPUNGING and r.last_op_date >= stale]
        if busy:
            raise ApiError(OPERATION_ERROR, f"image[uuid:{uuid}] is being expunged from backup storage{busy} "
                                            "by another call", status=409)
        alive = [r.backup_storage_uuid for r in refs if r.status not in (images.DELETED, EXPUNGING)]
        if alive:
            raise ApiError(OPERATION_ERROR, f"image[uuid:{uuid}] is not deleted on backup storage{alive}; "
                                            "delete it before expunging it", status=409)
        for ref in refs:
            ref.status = EXPUNGING
        await db.commit()
    return [r.backup_storage_uuid for r in refs]


async def _unclaim(rt: Runtime, uuid: str, claimed: list[str]) -> None:
    """The refs an expunge could not remove are Deleted again (a Recover may have them)."""
    async with locked_row(rt, Image, uuid) as (db, row):
        if row is None:
            return
        for ref in row.backup_storage_refs:
            if ref.backup_storage_uuid in claimed and ref.status == EXPUNGING:
                ref.status = images.DELETED
        await db.commit()


async def recover(rt: Runtime, uuid: str, backup_storage_uuids: list[str] | None = None) -> Image:
    """RecoverImage: a Delay-deleted image (on the storages named, or all) is Ready again."""
    async with locked_row(rt, Image, uuid) as (db, row):
        if row is None:
            raise not_found(images.RESOURCE_TYPE, uuid, field="imageUuid")
        refs = _selected(row, backup_storage_uuids)
        deleted = [r for r in refs if r.status == images.DELETED]
        if not deleted:
            raise ApiError(OPERATION_ERROR, f"image[uuid:{uuid}, name:{row.name}] is not deleted; "
                                            "there is nothing to recover", status=409)
        for ref in deleted:
            ref.status = images.READY
        row.status = images.READY
        row.deleted_date = None
        await db.commit()
    return await images.load(rt, uuid)


async def _remove(rt: Runtime, uuid: str, storage_uuids: list[str] | None) -> None:
    """Remove the bits from each storage named (all: None), then those refs, then the
    image when none is left. A storage whose bits cannot go keeps its ref and the call
    fails saying why (409 for clones/watchers, 503 for an unreachable cluster)."""
    image = await images.find(rt, uuid)
    if image is None:
        return
    refs = [r for r in image.backup_storage_refs
            if storage_uuids is None or r.backup_storage_uuid in storage_uuids]
    removed: list[str] = []
    errors: list[ApiError] = []
    for ref in refs:
        try:
            await _remove_bits(rt, ref)
        except ApiError as e:
            errors.append(e)
            continue
        removed.append(ref.backup_storage_uuid)
    async with locked_row(rt, Image, uuid) as (db, row):
        if row is not None:
            for ref in list(row.backup_storage_refs):
                if ref.backup_storage_uuid in removed:
                    row.backup_storage_refs.remove(ref)
            if not row.backup_storage_refs:
                await images.delete_rows_of_image(db, uuid)
            await db.commit()
    for bs in removed:
        await images.refresh_capacity(rt, bs)
        await metadata.image_expunged(rt, uuid, bs)  # its line leaves bs_ceph_info.json; never raises
    if errors:
        if len(errors) == 1:
            raise errors[0]
        raise ApiError(OPERATION_ERROR, "; ".join(e.details for e in errors), causes=errors,
                       status=max(e.status for e in errors))


async def _remove_bits(rt: Runtime, ref: ImageBackupStorageRef) -> None:
    """The RBD image of one ref; a storage deleted meanwhile has nothing left to remove."""
    async with rt.db() as db:
        storage = await db.get(CephBackupStorage, ref.backup_storage_uuid)
    if storage is None:
        return
    pool = storage.pool_name or ""
    readers = image_export.streaming(rt, ref.image_uuid)
    if readers:  # read-only opens hold no watch: librbd would let the image go under them
        raise ApiError(OPERATION_ERROR, f"cannot remove the bits of image[uuid:{ref.image_uuid}]: this server "
                                        f"is streaming it to {readers} export download(s); try again when they "
                                        "are done", status=409)
    try:
        cluster = await images.cluster_of(rt, storage)
        await ceph.remove_image(cluster, pool, ref.image_uuid, missing_ok=True)
    except ceph.ImageBusy as e:
        raise ceph_error(e, status=409, details=f"cannot remove the bits of image[uuid:{ref.image_uuid}] from "
                                                f"backup storage[uuid:{storage.uuid}]: {e}; the image stays "
                                                "until they are gone") from None
    except ceph.CephError as e:
        raise ceph_error(e) from None


# ---------------------------------------------------------------- the background loop


class Expunger:
    """Every ``image_expunge_interval`` seconds: expunge images deleted longer ago than
    ``image_expunge_period``; fail uploads idle too long; remove what interrupted adds
    left; forget old task progress. Each image is expunged by whichever node gets there
    first (removals are idempotent)."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and self._rt.settings.image_expunge_interval > 0:
            image_download.empty_staging(self._rt)
            self._task = asyncio.create_task(self._loop(), name="image-expunger")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _loop(self) -> None:
        await self._settle_interrupted()
        while True:
            await asyncio.sleep(self._rt.settings.image_expunge_interval)
            try:
                await self.round()
            except Exception:
                log.exception("image expunge round failed")

    async def _settle_interrupted(self) -> None:
        """First what this node's previous run left half-done. The bits of a killed
        process stay watched until the OSDs time it out (~30 s): try again a few times."""
        for pause in RETRY_PAUSES:
            await asyncio.sleep(pause)
            try:
                left = await image_upload.clean_up_interrupted(self._rt)
                left += await image_download.clean_up_interrupted(self._rt)
            except Exception:
                log.exception("cleaning up interrupted image adds failed")
                continue
            if not left:
                return

    async def round(self) -> None:
        rt = self._rt
        cutoff = utcnow() - timedelta(seconds=rt.settings.image_expunge_period)
        async with rt.db() as db:
            due = list(await db.scalars(select(Image.uuid).where(
                Image.status == images.DELETED, Image.deleted_date < cutoff)))
        for uuid in due:
            try:
                await expunge(rt, uuid)
                log.info("image %s expunged: deleted more than %s s ago", uuid, rt.settings.image_expunge_period)
            except ApiError as e:
                if e.kind is not INVALID_ARGUMENT:
                    log.warning("image %s could not be expunged yet: %s", uuid, e.details)
        await image_upload.expire_idle(rt)
        await image_upload.clean_up_interrupted(rt)
        await image_download.clean_up_interrupted(rt)
        await task_progress.prune(rt, rt.settings.job_retention)
