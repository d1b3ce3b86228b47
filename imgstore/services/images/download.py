"""AddImage: the checks, then the download of an http(s) or file:/// image into RBD.

The job of an AddImage runs here (always as an API job: the download is long by
nature). It checks the request as ZStack does, makes the image (Downloading) with a ref
per usable storage, then streams the source through :class:`ImageIntake` into every
storage at once: no staging copy for raw and iso, qcow2 staged and converted. The job
answers the Ready image; if no storage could take it, SYS.1002 and the image is gone.
``upload://`` images are handed to :mod:`image_upload` once made.

A download runs as a task of its own, known by image uuid on this node, so DeleteImage
can cancel it (the intake then removes what it wrote).
"""
from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select

from imgstore.crypto import new_uuid
from imgstore.db.models import ApiJob, Image, ImageUpload, TaskProgress
from imgstore.errors import CREATE_RESOURCE_ERROR, OPERATION_ERROR, ApiError, invalid_argument
from imgstore.services.images import add as image_add
from imgstore.services.images import hashing
from imgstore.services.images import manage as images
from imgstore.services.images import upload as image_upload
from imgstore.services.images.intake import DIRECT, ImageIntake
from imgstore.services.images.sources import (
    UPLOAD,
    HttpSource,
    SourceRefused,
    check_source,
    check_url,
    open_source,
)
from imgstore.services.images.url_guard import Allowance
from imgstore.services.node.handles import Lease
from imgstore.services.node.metrics import count_image_bytes
from imgstore.services.node.runtime import Runtime
from imgstore.services.node.task_progress import ProgressReporter
from imgstore.wire.masking import without_credentials

log = logging.getLogger(__name__)

TASK_NAME = "AddImage"


async def add(rt: Runtime, req: images.NewImage, api_id: str, base_url: str) -> Image:
    """AddImage: the Ready image (http, file), or the Downloading one with its upload URL."""
    req = images.check_new_image(req)
    hashing.expected_from_tags(req.system_tags)  # a checksum:: tag that cannot be checked: 400 now
    try:
        req.url = check_url(req.url, rt.settings.file_allow_dirs)
        await check_source(req.url, rt.settings.file_allow_dirs, _allowance(rt))
    except SourceRefused as e:
        raise invalid_argument(str(e)) from None
    source_url, req.url = req.url, without_credentials(req.url)  # only the download sees user:password@
    if req.url.lower().startswith(UPLOAD) and len(set(req.backup_storage_uuids)) > 1:
        raise invalid_argument("an upload:// image is uploaded to one backup storage; "
                               f"field[backupStorageUuids] names {len(set(req.backup_storage_uuids))}")
    storages = await images.usable_storages(rt, req.backup_storage_uuids)
    uuid = req.resource_uuid or new_uuid()
    reporter = ProgressReporter(rt, api_id, uuid, TASK_NAME, arguments={"imageUuid": uuid, "url": req.url})
    if req.url.lower().startswith(UPLOAD):
        return await image_upload.open_slot(rt, req, storages, uuid, api_id, base_url, reporter)
    image = await images.create(rt, req, storages, uuid, extra=[reporter.new_row(stage="Waiting")])
    # on the node's registry, so a DeleteImage can find it and cancel it
    task = rt.node.downloads.start(uuid, _download(rt, image, reporter, source_url, req.system_tags),
                                   f"download-{uuid}")
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the server is stopping: the job says so
        raise ApiError(OPERATION_ERROR, f"the download of image[uuid:{uuid}] was cancelled: "
                                        "the image was deleted", status=409) from None


async def cancel(rt: Runtime, image_uuid: str) -> None:
    """Stop this node's download of the image, if any, and wait until its bits are gone."""
    task = rt.node.downloads.get(image_uuid)
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait({task})


def _allowance(rt: Runtime) -> Allowance:
    """The setting image_url_allow: what an http(s) source may reach besides public hosts."""
    return Allowance.parse(rt.settings.image_url_allow)


async def _download(rt: Runtime, image: Image, reporter: ProgressReporter, source_url: str,
                    system_tags: list[str]) -> Image:
    """Stream the source into every target storage; the handles the writers use are leased
    until the image is finished or discarded, so a Reconnect cannot cut the download."""
    leases: list[Lease] = []
    try:
        return await _stream(rt, image, reporter, source_url, leases, system_tags)
    finally:
        for lease in leases:
            lease.release()


async def _stream(rt: Runtime, image: Image, reporter: ProgressReporter, source_url: str,
                  leases: list[Lease], system_tags: list[str]) -> Image:
    source = open_source(source_url, rt.settings.file_allow_dirs, rt.settings.image_download_timeout,
                         _allowance(rt))
    intake: ImageIntake | None = None
    failures: dict[str, ApiError] = {}
    try:
        async with source:
            if source.length is None and isinstance(source, HttpSource):
                await source.open()  # HEAD did not say: the GET's Content-Length may
            targets, failures = await image_add.targets_for(rt, image, source.length)
            leases.extend(rt.clusters.hold(t.cluster) for t in targets)
            if not targets:
                raise image_add.all_failed(image, dict(failures))
            intake = ImageIntake(targets, image.uuid, source.length, image_add.staging_dir(rt),
                                 image_add.progress_of(reporter, lambda: intake.detected if intake else None),
                                 expected=hashing.expected_from_tags(system_tags))
            async for piece in source.chunks():
                await intake.write(piece)
                count_image_bytes(rt, "download", len(piece))
            result = await intake.finish()
    except BaseException as e:
        if intake is not None:
            await intake.abort()
        if isinstance(e, Exception):
            if isinstance(e, ApiError) and e.kind is CREATE_RESOURCE_ERROR:
                error = e
            elif isinstance(e, SourceRefused):
                error = invalid_argument(str(e))  # the request's fault (a redirect, a swapped file)
            else:
                error = image_add.all_failed(image, dict(failures) | getattr(e, "failures", {}), e)
            await image_add.discard(rt, image.uuid, reporter, error)
            raise error from None
        await asyncio.shield(image_add.discard(rt, image.uuid, reporter, ApiError(
            OPERATION_ERROR, "the download was cancelled")))
        raise
    try:
        done = await image_add.finish(rt, image.uuid, result, failures, reporter)
    except BaseException:
        await intake.abort()  # the rows could not say the image is there: its bits go
        raise
    if result.verified and result.detected_format in DIRECT:
        await hashing.keep_verified(rt, image.uuid, result.stored, result.verified)
        done = await images.load(rt, image.uuid)
    return done


# ---------------------------------------------------------------- after a restart


async def clean_up_interrupted(rt: Runtime) -> int:
    """Downloads whose job is no longer running anywhere (their node stopped or died):
    their partial RBD images are removed and the images with them, as a failed add.
    Uploads are :mod:`image_upload`'s. Answers how many are left to retry (bits busy).

    A download's job row exists before its image, and its progress row is made in the
    image's own transaction, so a live download is always found Processing here."""
    async with rt.db() as db:
        rows = (await db.execute(
            select(Image.uuid, TaskProgress.api_id, ApiJob.state)
            .outerjoin(TaskProgress, TaskProgress.task_uuid == Image.uuid)
            .outerjoin(ApiJob, ApiJob.uuid == TaskProgress.api_id)
            .where(Image.status == images.DOWNLOADING, Image.uuid.not_in(select(ImageUpload.image_uuid)))
        )).all()
    live = {image_uuid for image_uuid, _, job_state in rows if job_state == "Processing"}
    left = 0
    for image_uuid in dict.fromkeys(u for u, _, _ in rows):
        if image_uuid in rt.node.downloads or image_uuid in live:
            continue
        image = await images.find(rt, image_uuid)
        if image is None:
            continue
        log.warning("image %s was left Downloading by an interrupted add; removing it", image_uuid)
        if await image_add.remove_bits(rt, image_uuid, [r.backup_storage_uuid for r in image.backup_storage_refs]):
            left += 1  # still Downloading: the next pass tries again
            continue
        await image_add.discard(rt, image_uuid, None, ApiError(OPERATION_ERROR, "interrupted"))
    return left


def empty_staging(rt: Runtime) -> None:
    """At start: staged images of this node's earlier run, which nothing can use now."""
    staging = image_add.staging_dir(rt)
    if not staging.is_dir():
        return
    for path in staging.iterdir():
        if path.is_file():
            try:
                path.unlink()
            except OSError as e:
                log.warning("could not remove the staged file %s: %s", path, e)
