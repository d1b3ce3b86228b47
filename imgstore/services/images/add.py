"""What downloads and uploads share once the bytes flow: the storages to write to,
the progress, and the rows at the end (Ready, or the image failed).

ZStack's rules: a storage that cannot take the image drops out (its
ref is removed); the image is Ready with the storages that have it; when every storage
failed the add fails with SYS.1002 "Failed to download image[name:%s] on all backup
storage%s." and, for a download, the image is removed. Capacity is read again from the
cluster after every add, successful or not.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from imgstore import ceph
from imgstore.db.models import Image
from imgstore.errors import CREATE_RESOURCE_ERROR, INVALID_ARGUMENT, OPERATION_ERROR, ApiError
from imgstore.services.images import manage as images
from imgstore.services.images import metadata
from imgstore.services.images.formats import qemu
from imgstore.services.images.intake import (
    CONVERTED,
    CONVERTING,
    ImageRefused,
    IntakeFailed,
    IntakeResult,
    Limits,
    Target,
)
from imgstore.services.images.sources import SourceFailed, SourceRefused
from imgstore.services.node.ceph_errors import ceph_error
from imgstore.services.node.locking import locked_row
from imgstore.services.node.runtime import Runtime
from imgstore.services.node.task_progress import ProgressReporter
from imgstore.services.storage import trash

log = logging.getLogger(__name__)


def staging_dir(rt: Runtime) -> Path:
    """Where qcow2/vmdk images wait for their conversion (this node's disk)."""
    return rt.settings.data_dir / "staging"


def limits(rt: Runtime) -> Limits:
    """The intake's bounds, from the settings (Trust point 6)."""
    s = rt.settings
    return Limits(max_virtual_size=s.image_max_virtual_size, max_source_bytes=s.image_max_source_bytes,
                  convert_timeout=s.image_convert_timeout,
                  qemu=qemu.Limits(address_space=s.image_convert_memory,
                                   cpu_seconds=max(1, int(s.image_convert_timeout))))


async def targets_for(rt: Runtime, image: Image, length: int | None) -> tuple[list[Target], dict[str, ApiError]]:
    """A writable target per ref of the image, and why the others cannot take it.

    Each storage's capacity is read from its cluster first. With the length known, a
    storage with less available than the image is refused before any byte is written;
    the intake checks the virtual size (qcow2/vmdk header) against it too, before any
    RBD image exists.
    """
    targets: list[Target] = []
    failures: dict[str, ApiError] = {}
    for ref in image.backup_storage_refs:
        bs = ref.backup_storage_uuid
        try:
            await images.refresh_capacity(rt, bs)
            storage = await images.storage_of(rt, bs)
            if length is not None and length > storage.available_capacity:
                raise ApiError(
                    OPERATION_ERROR,
                    f"backup storage[uuid:{bs}] has not enough capacity to download the image"
                    f"[name:{image.name}]: it needs {length} bytes, {storage.available_capacity} are available",
                )
            pool = storage.pool_name or ""
            targets.append(Target(bs, await images.cluster_of(rt, storage), pool,
                                  available=storage.available_capacity, limits=limits(rt),
                                  leftover=functools.partial(keep_leftover, rt, bs, pool, image.uuid)))
        except ApiError as e:
            failures[bs] = e
    return targets, failures


async def keep_leftover(rt: Runtime, storage_uuid: str, pool: str, image_uuid: str, reason: str,
                        size: int | None) -> None:
    """An add's RBD image that could not be removed (``reason``, logged by the caller):
    the storage's trash, where GetTrashOnBackupStorage shows it and
    CleanUpTrashOnBackupStorage removes it."""
    await trash.record(rt, storage_uuid, images.install_path(pool, image_uuid), image_uuid,
                       images.RESOURCE_TYPE, size, trash_type=trash.ADD_IMAGE)


def progress_of(reporter: ProgressReporter,
                intake_format: Callable[[], str | None]) -> Callable[[str, int, int | None], Awaitable[None]]:
    """The intake's progress as a percentage: the transfer, then (qcow2) the conversion.

    Without conversion the transfer is 0-99 %; with one it is 0-49 % and the conversion
    50-99 %. 100 % is written when the image is Ready.
    """

    async def report(stage: str, done: int, total: int | None) -> None:
        converts = intake_format() in CONVERTED
        span = (50, 50) if converts and stage == CONVERTING else ((0, 50) if converts else (0, 100))
        fraction = done / total if total else 0.0
        percent = min(99, int(span[0] + span[1] * fraction))
        await reporter.update(percent, stage=stage, bytes=done, totalBytes=total)

    return report


def as_api_error(e: Exception) -> ApiError:
    """Any failure of an add as the ErrorCode a client reads."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, (SourceRefused, ImageRefused)):
        return ApiError(INVALID_ARGUMENT, str(e))
    if isinstance(e, ceph.CephError):
        return ceph_error(e)
    if isinstance(e, (SourceFailed, IntakeFailed)):
        return ApiError(OPERATION_ERROR, str(e), status=503)
    return ApiError(OPERATION_ERROR, f"{type(e).__name__}: {e}", status=503)


def all_failed(image: Image, failures: dict[str, Exception], error: Exception | None = None) -> ApiError:
    """ZStack's SYS.1002 for an add that no storage could finish."""
    causes = [as_api_error(f) for f in failures.values()]
    if error is not None:
        causes.insert(0, as_api_error(error))
    uuids = [r.backup_storage_uuid for r in image.backup_storage_refs]
    return ApiError(
        CREATE_RESOURCE_ERROR,
        f"Failed to download image[name:{image.name}] on all backup storage[{', '.join(uuids)}].",
        cause=causes[0] if causes else None,
        causes=causes,
    )


async def finish(rt: Runtime, image_uuid: str, result: IntakeResult,
                 failures: dict[str, ApiError], reporter: ProgressReporter) -> Image:
    """The bits are in: refs Ready where stored, removed where not, the image Ready with
    its sizes, sums and format. If the image was deleted meanwhile, its bits go too."""
    gone = False
    async with locked_row(rt, Image, image_uuid) as (db, image):
        if image is None or image.status != images.DOWNLOADING:
            gone = True
        else:
            for ref in list(image.backup_storage_refs):
                if ref.backup_storage_uuid in result.stored:
                    ref.status = images.READY
                else:
                    image.backup_storage_refs.remove(ref)
            image.status = images.READY
            image.status_reason = None
            image.size = result.size
            image.actual_size = result.actual_size
            image.md5_sum = result.md5
            image.sha512_sum = result.sha512
            image.format = "iso" if image.media_type == images.ISO_MEDIA else result.stored_format
            await db.commit()
    if gone:
        for bs in await remove_bits(rt, image_uuid, result.stored):
            with contextlib.suppress(ApiError):  # a storage deleted since takes its pool along
                storage = await images.storage_of(rt, bs)
                await keep_leftover(rt, bs, storage.pool_name or "", image_uuid,
                                    "the image was deleted while it was being added", result.size)
        raise ApiError(OPERATION_ERROR, f"image[uuid:{image_uuid}] was deleted while it was being added",
                       status=409)
    for bs in [*result.stored, *result.failures, *failures]:
        await images.refresh_capacity(rt, bs)
    for bs in result.stored:
        await metadata.image_ready(rt, image_uuid, bs)  # its line in bs_ceph_info.json; never raises
    await reporter.update(100, force=True, stage="Done", bytes=result.actual_size)
    return await images.load(rt, image_uuid)


async def remove_bits(rt: Runtime, image_uuid: str, storage_uuids: list[str]) -> list[str]:
    """Remove the RBD image from each storage; the storages where it could not be (logged).

    A storage deleted meanwhile counts as done. An image written by a process that was
    killed stays watched until the OSDs time the dead client out (about 30 s): busy, and
    the caller tries again later.
    """
    left = []
    for bs in storage_uuids:
        try:
            storage = await images.storage_of(rt, bs)
        except ApiError:
            continue
        try:
            await ceph.remove_image(await images.cluster_of(rt, storage), storage.pool_name or "",
                                      image_uuid, missing_ok=True)
        except (ApiError, ceph.CephError) as e:
            log.warning("could not remove image %s from backup storage %s yet: %s", image_uuid, bs, e)
            left.append(bs)
    return left


async def discard(rt: Runtime, image_uuid: str, reporter: ProgressReporter | None, error: ApiError) -> None:
    """A download that failed everywhere: the image goes (ZStack removes it), and the
    progress says why. The storages are left as they were: their writers removed what they
    had written (bits that could not be removed are trash, found by the next ping), and a
    refused call rewrites no row (re-reading the capacity here did, whenever the cluster's
    figures had moved)."""
    async with locked_row(rt, Image, image_uuid) as (db, image):
        if image is not None:
            await images.delete_rows_of_image(db, image_uuid)
            await db.commit()
    if reporter is not None:
        await reporter.update(reporter.percent, force=True, stage="Failed", error=error.details)


async def mark_failed(rt: Runtime, image_uuid: str, reason: str) -> None:
    """An upload that failed after AddImage answered: the image stays, in Error, saying why."""
    async with locked_row(rt, Image, image_uuid) as (db, image):
        if image is None:
            return
        image.status = images.ERROR
        image.status_reason = reason[:2048]
        for ref in image.backup_storage_refs:
            ref.status = images.ERROR
        await db.commit()
