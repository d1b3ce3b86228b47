"""BackupStorageMigrateImage and GetBackupStorageCandidatesForImageMigration (issue 16 point 2).

ZStack pipes ``rbd export | ssh | rbd import`` through the mon hosts. imgstore holds a
librados handle to both clusters, so it streams librbd to librbd in this process:
``ceph.iter_image`` reads with several reads in flight and skips the holes the object map
knows (no read), ``ceph.ImageWriter`` writes with several writes in flight and skips zero
chunks (no write), so a thin image stays thin. The bytes are verified end to end: each
piece read from the source is checksummed, the destination is read back, and its pieces
must agree. A failure removes the destination's image (the writer's abort, or
a removal here); bits that cannot be removed, or a copy its node's death interrupted,
are recorded in the destination's trash (services/storage/trash.py), never lost.
Progress is GetTaskProgress's, under the API's job id.
"""
from __future__ import annotations

import asyncio
import logging
import zlib

from sqlalchemy import select

from imgstore import ceph
from imgstore.db.models import BackupStorage, CephBackupStorage, Image, ImageBackupStorageRef
from imgstore.errors import OPERATION_ERROR, ApiError, invalid_argument, not_found
from imgstore.services.images import manage as images
from imgstore.services.node.ceph_errors import ceph_error
from imgstore.services.node.locking import locked_row
from imgstore.services.node.runtime import Runtime
from imgstore.services.node.task_progress import ProgressReporter
from imgstore.services.storage import trash

log = logging.getLogger(__name__)

TASK_NAME = "BackupStorageMigrateImage"


async def candidates(rt: Runtime, src_uuid: str) -> list[BackupStorage]:
    """The storages an image of ``src_uuid`` can move to: the other Ceph storages that
    are Enabled and Connected."""
    async with rt.db() as db:
        if await db.get(BackupStorage, src_uuid) is None:
            raise not_found("BackupStorageVO", src_uuid, field="srcBackupStorageUuid")
        rows = await db.scalars(select(CephBackupStorage).where(
            CephBackupStorage.uuid != src_uuid, CephBackupStorage.state == images.ENABLED,
            CephBackupStorage.status == "Connected").order_by(CephBackupStorage.create_date))
        return list(rows)


async def migrate(rt: Runtime, image_uuid: str, src_uuid: str, dst_uuid: str, api_id: str) -> Image:
    """Copy the image's bits from ``src_uuid`` to ``dst_uuid`` and add the ref there."""
    _image, src, dst = await _check(rt, image_uuid, src_uuid, dst_uuid)
    path = images.install_path(dst.pool_name or "", image_uuid)
    held = await trash.hold(rt, dst.uuid, path, image_uuid, images.RESOURCE_TYPE)
    reporter = ProgressReporter(rt, api_id, image_uuid, TASK_NAME,
                                arguments={"imageUuid": image_uuid, "srcBackupStorageUuid": src_uuid,
                                           "dstBackupStorageUuid": dst_uuid})
    await reporter.start(stage="Copying")
    try:
        async with rt.clusters.lease(src) as src_cluster, rt.clusters.lease(dst) as dst_cluster:
            await _copy(src_cluster, src, dst_cluster, dst, image_uuid, reporter)
            await _add_ref(rt, image_uuid, dst, path)
    except ceph.ImageExists as e:  # not ours: never removed
        await trash.release(rt, held)
        raise ceph_error(e, status=409, details=f"backup storage[uuid:{dst_uuid}] already holds an RBD image "
                                                f"at {path} that no image ref names; remove it or clean up the "
                                                "trash first") from e
    except BaseException as e:
        await _undo(rt, dst, image_uuid, held)
        await reporter.update(reporter.percent, force=True, stage="Failed",
                              error=e.details if isinstance(e, ApiError) else str(e))
        if isinstance(e, ceph.CephError):
            raise ceph_error(e) from None
        raise
    await trash.release(rt, held)
    await reporter.update(100, force=True, stage="Done")
    await images.refresh_capacity(rt, dst.uuid)
    return await images.load(rt, image_uuid)


async def _check(rt: Runtime, image_uuid: str, src_uuid: str,
                 dst_uuid: str) -> tuple[Image, CephBackupStorage, CephBackupStorage]:
    if src_uuid == dst_uuid:
        raise invalid_argument("srcBackupStorageUuid and dstBackupStorageUuid are the same backup storage")
    image = await images.load(rt, image_uuid)
    src = await images.storage_of(rt, src_uuid)
    dst = await images.storage_of(rt, dst_uuid)
    refs = {r.backup_storage_uuid: r for r in image.backup_storage_refs}
    if src_uuid not in refs or refs[src_uuid].status != images.READY:
        raise ApiError(OPERATION_ERROR, f"image[uuid:{image_uuid}] is not Ready on backup storage[uuid:{src_uuid}]")
    if dst_uuid in refs:
        raise ApiError(OPERATION_ERROR, f"image[uuid:{image_uuid}] is already on backup storage[uuid:{dst_uuid}]")
    if dst.state != images.ENABLED or dst.status != "Connected":
        raise ApiError(OPERATION_ERROR, f"backup storage[uuid:{dst_uuid}] is not Enabled and Connected "
                                        f"(it is {dst.state}, {dst.status})")
    return image, src, dst


async def _copy(src_cluster: ceph.Cluster, src: CephBackupStorage, dst_cluster: ceph.Cluster,
                dst: CephBackupStorage, name: str, reporter: ProgressReporter) -> None:
    """Stream, then read the destination back: the CRC-32 of every piece must agree.

    CRC-32 and not the writer's md5 + sha512: the check is against corruption on the way,
    not against an adversary, and zlib's CRC runs at GB/s where the two digests take more
    CPU than the copy itself (the bench: scripts/bench_migrate.py). Each piece's CRC is
    taken in a worker thread (zlib lets the GIL go) while the next piece is written."""
    src_pool, dst_pool = src.pool_name or "", dst.pool_name or ""
    size = await ceph.image_size(src_cluster, src_pool, name)
    loop = asyncio.get_running_loop()
    sent: list[asyncio.Future[int]] = []
    async with ceph.ImageWriter(dst_cluster, dst_pool, name, size=size, checksums=False) as writer:
        async for piece in ceph.iter_image(src_cluster, src_pool, name):
            sent.append(loop.run_in_executor(None, zlib.crc32, piece))
            await writer.write(piece)
            await reporter.update(_percent(writer.received, size, 90), copied=writer.received, total=size)
    await reporter.update(90, force=True, stage="Verifying")
    expected = await asyncio.gather(*sent)
    got = [await loop.run_in_executor(None, zlib.crc32, piece)
           async for piece in ceph.iter_image(dst_cluster, dst_pool, name)]
    if got != expected:
        raise ApiError(OPERATION_ERROR, f"the copy of image[uuid:{name}] on backup storage[uuid:{dst.uuid}] "
                                        "does not read back as the bytes read from the source (CRC-32 differs)")


def _percent(done: int, total: int, scale: int) -> int:
    return scale if total <= 0 else done * scale // total


async def _add_ref(rt: Runtime, image_uuid: str, dst: CephBackupStorage, path: str) -> None:
    async with locked_row(rt, Image, image_uuid) as (db, image):
        if image is None or image.status != images.READY:
            raise ApiError(OPERATION_ERROR, f"image[uuid:{image_uuid}] was deleted while it was being migrated",
                           status=409)
        image.backup_storage_refs.append(ImageBackupStorageRef(
            backup_storage_uuid=dst.uuid, install_path=path, status=images.READY))
        await db.commit()


async def _undo(rt: Runtime, dst: CephBackupStorage, name: str, held: int) -> None:
    """Nothing left on the destination: remove its image (the writer removed a partial
    one already); if that fails, the hold becomes trash."""
    try:
        async with rt.clusters.lease(dst) as cluster:
            await asyncio.shield(ceph.remove_image(cluster, dst.pool_name or "", name, missing_ok=True))
    except (ceph.CephError, ApiError) as e:
        log.error("could not remove the copy of image %s on backup storage %s: %s; it is in its trash",
                  name, dst.uuid, e)
        await trash.discard(rt, held, None)
        return
    await trash.release(rt, held)
