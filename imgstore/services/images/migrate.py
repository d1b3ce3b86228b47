"""BackupStorageMigrateImage and GetBackupStorageCandidatesForImageMigration (issue 16 point 2).

ZStack pipes ``rbd export | ssh | rbd import`` through the mon hosts. imgstore holds a
librados handle to both clusters, so it streams librbd to librbd in this process:
``ceph.iter_image`` reads with several reads in flight and skips the holes the object map
knows (no read), ``ceph.ImageWriter`` writes with several writes in flight and skips zero
chunks (no write), so a thin image stays thin. The bytes are verified end to end: each
piece read from the source is held until the destination's OSDs, asked behind the writer
for the CRC-32C of each object (:class:`OsdChecksums`), have answered that of the piece;
where librados cannot be asked that, the copy is read back (:class:`ReadBack`). A
failure removes the destination's image (the writer's abort, or a removal here); bits
that cannot be removed, or a copy its node's death interrupted, are recorded in the
destination's trash (services/storage/trash.py), never lost.
Progress is GetTaskProgress's, under the API's job id.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import select

from imgstore import ceph
from imgstore.db.models import BackupStorage, CephBackupStorage, Image, ImageBackupStorageRef
from imgstore.errors import OPERATION_ERROR, ApiError, not_found
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
    # src == dst is not refused as an argument (no document can say "two fields differ"):
    # the image is then either not Ready on src or already on dst, both 409 below
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
    """Stream, and check the destination behind the writer: every object must hold the
    piece read from the source (:class:`OsdChecksums`, or :class:`ReadBack` where
    librados cannot checksum on the OSDs)."""
    src_pool, dst_pool = src.pool_name or "", dst.pool_name or ""
    size = await ceph.image_size(src_cluster, src_pool, name)
    check = new_check(dst_cluster, dst_pool, name)

    async def progress(copied: int) -> None:
        await reporter.update(_percent(copied, size, 95), copied=copied, total=size)

    try:
        await stream((src_cluster, src_pool, name), (dst_cluster, dst_pool, name), size, check, progress)
        await reporter.update(95, force=True, stage="Verifying")
        await check.finish(size)
    finally:
        await check.close()
    if check.mismatch is not None:
        raise ApiError(OPERATION_ERROR, f"the copy of image[uuid:{name}] on backup storage[uuid:{dst.uuid}] does "
                                        f"not hold the bytes read from the source (they differ in the piece at "
                                        f"byte {check.mismatch})")


ImageAt = tuple[ceph.RadosSource, str, str]
"""An RBD image: the cluster, the pool, the image's name."""


async def stream(src: ImageAt, dst: ImageAt, size: int, check: CopyCheck | None,
                 progress: Callable[[int], Awaitable[None]] | None = None) -> None:
    """Copy image ``src`` into a new image ``dst`` of ``size`` bytes: reads and writes in
    flight, holes neither read nor written. Each piece goes to ``check`` too, advanced
    behind the writer (None: nothing is checked; ``scripts/bench_migrate.py``'s floor);
    ``progress`` hears the bytes copied after each piece. The caller finishes the check."""
    async with ceph.ImageWriter(*dst, size=size, checksums=False, read_back=check is not None) as writer, \
            contextlib.aclosing(ceph.iter_image(*src)) as pieces:
        async for piece in pieces:
            if check is not None:
                check.expect(piece)
            await writer.write(piece)
            if check is not None:
                await check.advance(writer.durable, writer.settle)
            if progress is not None:
                await progress(writer.received)


def new_check(cluster: ceph.RadosSource, pool: str, name: str) -> CopyCheck:
    """How a copy is checked: the OSDs' checksums where librados has them."""
    if ceph.osd_checksums_available():
        return OsdChecksums(cluster, pool, name)
    return ReadBack(cluster, pool, name)


class CopyCheck:
    """Verifies a copy while it is still being written, a span at a time once the OSDs
    acknowledged all of it (the writer's ``durable``), against the pieces read from the
    source, held until then; subclasses say how a span is checked (:meth:`_check`).

    Behind the writer, the check overlaps the copy and only the last span is left when
    the copy ends. Memory: the copy waits while more than :attr:`LAG` bytes are
    unchecked (12 pieces); holes are the shared zero block.

    ``mismatch`` is the offset of the first piece that differs (None: all agree so far);
    a mismatch or an error of the check stops the copy at its next piece (:meth:`advance`
    raises).
    """

    SPAN = 4 * ceph.CHUNK_SIZE
    """Bytes checked at once."""
    LAG = 12 * ceph.CHUNK_SIZE
    """Bytes of the source held at most, unchecked: the copy waits beyond."""

    def __init__(self, cluster: ceph.RadosSource, pool: str, name: str) -> None:
        self._where = cluster, pool, name
        self._expected: dict[int, bytes] = {}  # piece index -> the source's bytes, until checked
        self._pieces = 0
        self._durable = 0
        self._final = False
        self._waiting = False  # the copy waits for the check
        self._wake = asyncio.Event()
        self._checked_more = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.checked = 0
        self.mismatch: int | None = None

    def expect(self, piece: bytes) -> None:
        """The source's next piece (pieces are the object size, from 0)."""
        self._expected[self._pieces] = piece
        self._pieces += 1

    async def advance(self, durable: int, settle: Callable[[], Awaitable[int]] | None = None) -> None:
        """The OSDs hold the copy's first ``durable`` bytes; waits while :attr:`LAG` bytes
        are unchecked, and raises what stopped the check.

        ``durable`` can stay behind while the copy goes on: one slow write holds it, and
        the writes after it (holes: none at all) complete around it. When all of it is
        checked and still too much is unchecked, ``settle`` (the writer's) waits for the
        writes in flight and says how far the copy is durable now; without it, this waits
        for a later call."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        self._durable = max(self._durable, durable)
        if self._durable - self.checked >= self.SPAN:
            self._wake.set()
        while not self._task.done() and self._pieces * ceph.CHUNK_SIZE - self.checked > self.LAG:
            if settle is not None and self.checked >= self._durable:
                self._durable = max(self._durable, await settle())
                if self.checked >= self._durable:  # (cannot be: the pieces were all written)
                    raise RuntimeError(f"the copy is durable to {self._durable} only, "
                                       f"{self._pieces} pieces after its start")
            self._waiting = True  # check what is durable, if less than a span
            self._wake.set()
            self._checked_more.clear()
            waiter = asyncio.ensure_future(self._checked_more.wait())
            try:
                await asyncio.wait([self._task, waiter], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                self._waiting = False
        if self._task.done():
            self._task.result()  # an error of the check
        if self.mismatch is not None:
            raise ApiError(OPERATION_ERROR, f"the copy differs from the source in the piece at byte {self.mismatch}")

    async def finish(self, size: int) -> None:
        """The copy is committed: check up to ``size`` and wait for it."""
        self._durable, self._final = size, True
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        self._wake.set()
        await asyncio.shield(self._task)

    async def close(self) -> None:
        """Stop checking (the copy failed), let the pieces go; never raises."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._expected.clear()

    async def _run(self) -> None:
        while self.mismatch is None:
            await self._wake.wait()
            self._wake.clear()
            while self.mismatch is None and (self._durable - self.checked >= self.SPAN or (
                    (self._final or self._waiting) and self.checked < self._durable)):
                whole = self._final or self._durable - self.checked < self.SPAN
                end = self._durable if whole else self.checked + self.SPAN
                await self._check(end)
                self._checked_more.set()
            if self._final and self.checked >= self._durable:
                return

    async def _check(self, end: int) -> None:
        """Check ``[checked, end)`` against the pieces held: set ``checked = end``, or
        ``mismatch``."""
        raise NotImplementedError


class OsdChecksums(CopyCheck):
    """Asks the destination's OSDs for the CRC-32C of each object of the copy once they
    acknowledged all of it, and compares it with the CRC-32C of the source's piece
    (``ceph.ImageChecksums``): the bytes are not brought back. Two objects at a time:
    while the OSD read them from its disk, more than one in flight slowed the copy on 2
    cores; read from its cache (the writer's ``read_back``), two sped it up and four did
    not (README).

    A hole the source's object map knows (the shared zero block) is not asked for: the
    writer wrote nothing there (the read-back trusted the destination's object map the
    same way). Any other piece is, zeros included: ``ImageChecksums.matches`` takes an
    absent object for zeros in the pool's thread, so the loop does not compare every
    piece with zeros again (the writer already did).
    """

    SPAN = 2 * ceph.CHUNK_SIZE
    """Objects asked at once, as soon as the OSDs hold them."""

    def __init__(self, cluster: ceph.RadosSource, pool: str, name: str) -> None:
        super().__init__(cluster, pool, name)
        self._sums: ceph.ImageChecksums | None = None

    async def close(self) -> None:
        await super().close()
        sums, self._sums = self._sums, None
        if sums is not None:
            with contextlib.suppress(ceph.CephError):
                await asyncio.shield(sums.close())

    async def _check(self, end: int) -> None:
        if self._sums is None:
            self._sums = await ceph.ImageChecksums.open(*self._where)
        sums, zero = self._sums, ceph.zero_block(ceph.CHUNK_SIZE)
        indexes = range(self.checked // ceph.CHUNK_SIZE, -(-end // ceph.CHUNK_SIZE))
        pieces = {i: self._expected.pop(i) for i in indexes}
        asked = [i for i in indexes if pieces[i] is not zero]
        agree = await asyncio.gather(*(sums.matches(i, pieces[i]) for i in asked))
        differ = [i for i, ok in zip(asked, agree, strict=True) if not ok]
        if differ:
            self.mismatch = differ[0] * ceph.CHUNK_SIZE
            return
        self.checked = end


class ReadBack(CopyCheck):
    """Reads the copy back a span at a time and compares each piece with the source's
    piece, as bytes (memcmp, GB/s) rather than by a checksum of each side: CRC-32 of
    both ran at ~1 ns a byte, a fifth of the copy's CPU on 2 cores. Used where librados
    cannot be asked for checksums (:class:`OsdChecksums`): the bytes come back through
    the client, which on 2 cores costs the read-back's whole time (README).
    """

    SPAN = 4 * ceph.CHUNK_SIZE
    """Bytes read back at once (one read-only open of the image each)."""

    async def _check(self, end: int) -> None:
        index = self.checked // ceph.CHUNK_SIZE
        # aclosing: a mismatch leaves the loop early, and the reader must close its image
        # now, not when the generator is collected (perhaps after the handle is gone)
        async with contextlib.aclosing(ceph.iter_image(*self._where, self.checked, end)) as pieces:
            async for piece in pieces:
                if piece != self._expected.pop(index):
                    self.mismatch = index * ceph.CHUNK_SIZE
                    return
                index += 1
        self.checked = end


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
