"""upload:// images: the slot AddImage opens, and the PUTs that fill it, resumable.

AddImage(upload://) answers at once with the image Downloading and, on its ref,
``uploadUrl``: ``<base>/zstack/v1/images/uploads/<image uuid>?token=<token>`` (ZStack's
agent answers with an upload path the same way; its AddImage completes before the bytes
arrive, and ``UploadImageTracker`` follows the upload). The token (256 random bits) is
the credential: plain HTTP clients PUT there without a session. It sits in the query
string, which the access log does not write; the database keeps its sha256 and a sealed
copy of the URL (shown again by QueryImage and GetUploadImageJobDetails).

A PUT sends bytes from an offset: ``Content-Range: bytes <first>-<last>/<total|*>`` or
``X-Upload-Offset: <n>``; neither means 0. The total is the Content-Range's, else
``X-Image-Size`` (what ZStack's clients send) or ``X-Upload-Length``, else this PUT
carries the rest (offset + Content-Length), else (chunked, no length) the body's end is
the image's end.

A client may have the bytes checked as they arrive (its choice, its CPU; nothing is
hashed otherwise): ``Content-MD5`` is the md5 of this PUT's body, checked when the body
ends (a part's body cut short cannot be checked: the upload fails; a PUT of the whole
image makes it the image's digest, checked at the image's end); ``Digest`` (RFC 3230) or
``Repr-Digest`` (RFC 9530), sha-256 or sha-512 (md5, sha-1 too), and AddImage's
``checksum::<algorithm>::<hex>`` system tag are digests of the whole image, sent with
its first bytes (a later PUT may repeat them) and checked when the last byte is in. A
mismatch fails the upload: no RBD image is left, the image turns Error saying which
digest differed. A PUT whose offset is not where the upload stands is refused with 409
and the right offset in ``X-Upload-Offset``: the client resumes from there. A client
that disconnects mid-body loses nothing received: the upload stays open on this node
(the writer keeps its place and its RBD image) until the rest arrives, or until
``image_upload_timeout`` seconds pass without a byte. When the last byte arrives the PUT
commits (converting a qcow2) and answers with the image Ready.

An upload survives a restart of its node (stopped or killed): the slot's ``offset`` in
the database is what RBD holds (every write below it acknowledged, saved each second
and when a PUT ends), so after the restart a HEAD says where to resume, and the next
PUT reopens the RBD image there; digests expected of the whole image are brought up to
that point by reading the bytes back. Before the first 4 MiB are held (or a qcow2
staged on the server's disk) the upload starts again from 0.

A failed upload leaves no RBD image; its image turns Error with the reason.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imgstore.db.models import CephBackupStorage, Image, ImageUpload, Node
from imgstore.errors import (
    OPERATION_ERROR,
    PERMISSION_DENIED,
    RESOURCE_NOT_FOUND,
    ApiError,
    invalid_argument,
)
from imgstore.services.catalog import tags
from imgstore.services.images import add as image_add
from imgstore.services.images import manage as images
from imgstore.services.images.hashing import DigestMismatch, Expected, checksum_tags, expected_from_tags, keep_verified
from imgstore.services.images.intake import DIRECT, ImageIntake, ImageRefused
from imgstore.services.images.upload_state import (
    FAILED,
    RUNNING,
    SUCCEEDED,
    WAITING,
    BodyInterrupted,
    BodyPiece,
    OffsetMismatch,
    Piece,
    Session,
    UploadStatus,
)
from imgstore.services.node.metrics import count_image_bytes
from imgstore.services.node.runtime import Runtime
from imgstore.services.node.task_progress import ProgressReporter
from imgstore.wire.dates import utcnow

log = logging.getLogger(__name__)

UPLOAD_PATH = "zstack/v1/images/uploads"
SAVE_EVERY = 1.0  # seconds between two writes of the offset during a PUT
ORPHAN_RETRY_PAUSES = (0, 5, 10, 15, 30, 60)  # seconds before each try to end a dead node's upload


_SESSIONS: dict[str, Session] = {}


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def upload_url(base_url: str, image_uuid: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/{UPLOAD_PATH}/{image_uuid}?token={token}"


# ---------------------------------------------------------------- the slot


async def open_slot(rt: Runtime, req: images.NewImage, storages: list[CephBackupStorage], uuid: str,
                    api_id: str, base_url: str, reporter: ProgressReporter) -> Image:
    """AddImage(upload://): the image, Downloading, with an upload slot on its storage."""
    token = secrets.token_urlsafe(32)
    slot = ImageUpload(
        image_uuid=uuid, backup_storage_uuid=storages[0].uuid, api_id=api_id, token_hash=_hash(token),
        token_sealed=rt.secrets.seal(upload_url(base_url, uuid, token)), state=WAITING, offset=0,
    )
    return await images.create(rt, req, storages[:1], uuid, extra=[slot, reporter.new_row(stage=WAITING)])


async def upload_urls(rt: Runtime, image_uuids: list[str]) -> dict[str, str]:
    """Image uuid → upload URL, for the images still waiting for (more) bytes."""
    if not image_uuids:
        return {}
    async with rt.db() as db:
        slots = list(await db.scalars(select(ImageUpload).where(
            ImageUpload.image_uuid.in_(image_uuids), ImageUpload.state.in_((WAITING, RUNNING)))))
    return {s.image_uuid: rt.secrets.open(s.token_sealed) for s in slots}


async def job_details(rt: Runtime, image_uuid: str) -> list[dict[str, object]]:
    """GetUploadImageJobDetails: ZStack's ``existingJobDetails`` of the image's upload."""
    async with rt.db() as db:
        slot = await db.get(ImageUpload, image_uuid)
    if slot is None:
        return []
    pending = slot.state in (WAITING, RUNNING)
    return [{
        "longJobUuid": slot.api_id,
        "longJobState": slot.state,
        "imageUuid": slot.image_uuid,
        "imageUploadUrl": rt.secrets.open(slot.token_sealed) if pending else None,
        "offset": _live_offset(slot),
    }]


def _live_offset(slot: ImageUpload) -> int:
    session = _SESSIONS.get(slot.image_uuid)
    return session.received if session is not None else slot.offset


async def _slot(rt: Runtime, image_uuid: str, token: str) -> ImageUpload:
    async with rt.db() as db:
        slot = await db.get(ImageUpload, image_uuid, populate_existing=True)
    if slot is None:
        raise ApiError(RESOURCE_NOT_FOUND, f"no upload of image[uuid:{image_uuid}] is open here")
    if not token or not hmac.compare_digest(_hash(token), slot.token_hash):
        raise ApiError(PERMISSION_DENIED, f"the token of the upload of image[uuid:{image_uuid}] is wrong")
    return slot


async def status(rt: Runtime, image_uuid: str, token: str) -> UploadStatus:
    """Where the upload stands (HEAD/GET on the upload URL)."""
    slot = await _slot(rt, image_uuid, token)
    return UploadStatus(image_uuid, slot.state, _live_offset(slot), slot.size)


# ---------------------------------------------------------------- receiving bytes


async def receive(rt: Runtime, image_uuid: str, token: str, piece: Piece,
                  body: AsyncIterator[BodyPiece]) -> UploadStatus:
    """One PUT: its bytes into the upload; the image Ready when they were the last."""
    slot = await _slot(rt, image_uuid, token)
    if piece.image_uuid is not None and piece.image_uuid != image_uuid:
        raise invalid_argument(f"header X-Image-Uuid[{piece.image_uuid}] does not name image[uuid:{image_uuid}]")
    if slot.state == SUCCEEDED:
        raise ApiError(OPERATION_ERROR, f"image[uuid:{image_uuid}] is uploaded already", status=409)
    if slot.state == FAILED:
        image = await images.find(rt, image_uuid)
        reason = image.status_reason if image is not None else None
        raise ApiError(OPERATION_ERROR, f"the upload of image[uuid:{image_uuid}] failed"
                                        f"{f': {reason}' if reason else ''}; add the image again", status=409)
    session = _SESSIONS.get(image_uuid)
    if session is None:
        if slot.node not in (None, rt.node_id) and (slot.offset > 0 or slot.state == RUNNING):
            raise ApiError(OPERATION_ERROR, f"the upload of image[uuid:{image_uuid}] is held by "
                                            f"node[{slot.node}]; resume it there, or add the image again",
                           status=409)
        reporter = ProgressReporter(rt, slot.api_id, image_uuid, "AddImage")
        session = _SESSIONS.setdefault(image_uuid, Session(image_uuid, reporter))
        if slot.state == RUNNING and not session.lock.locked():  # this node's, before it restarted
            session.received, session.total, session.restarted = slot.offset, slot.size, True
    if session.lock.locked():
        raise ApiError(OPERATION_ERROR, f"another request is sending the bytes of image[uuid:{image_uuid}]",
                       status=409)
    async with session.lock:
        current = session.task = asyncio.current_task()
        try:
            return await _receive(rt, session, piece, body)
        except asyncio.CancelledError:
            if not session.deleted or current is None:
                raise
            current.uncancel()  # cancel() stopped this PUT: answer it, then cancel() cleans up
            raise ApiError(OPERATION_ERROR, f"image[uuid:{image_uuid}] was deleted during its upload",
                           status=409) from None
        finally:
            session.task = None


async def _receive(rt: Runtime, session: Session, piece: Piece, body: AsyncIterator[BodyPiece]) -> UploadStatus:
    uuid = session.image_uuid
    offset = piece.offset or 0
    if offset != session.received:
        raise OffsetMismatch(uuid, session.received, offset)
    total = piece.total
    if total is None and piece.length is not None:
        total = offset + piece.length
    if total is not None and session.total is not None and total != session.total:
        raise invalid_argument(f"the upload of image[uuid:{uuid}] is {session.total} bytes; "
                               f"this request says {total}")
    if total is not None and total < session.received:
        raise invalid_argument(f"size[{total}] is less than the {session.received} bytes received")
    # a PUT of the whole image: its Content-MD5 is the image's, checked at the image's end
    whole = offset == 0 and (total is None or piece.length is None or piece.length == total)
    image_digests = piece.image_digests | (piece.body_digests if whole else {})
    if session.intake is None:
        session.total = total if total is not None else session.total
        session.intake = await _start(rt, session, image_digests)
    else:
        _check_same_digests(session, image_digests)
    this_body = Expected({} if whole else piece.body_digests)
    try:
        async for data, release in body:
            await this_body.feed(data)
            await session.intake.write(data, release)
            session.received += len(data)
            count_image_bytes(rt, "upload", len(data))
            if time.monotonic() - session.saved_at >= SAVE_EVERY:
                await _save(rt, session, RUNNING)
        this_body.check()
    except BodyInterrupted:
        if this_body:
            raise await _fail(rt, session, ImageRefused(
                "the body of a PUT with Content-MD5 was cut short: its bytes cannot be checked, "
                "and the upload fails")) from None
        return await _pause(rt, session)
    except DigestMismatch as e:
        raise await _fail(rt, session, ImageRefused(f"Content-MD5: {e}")) from None
    except Exception as e:
        raise await _fail(rt, session, e) from None
    if session.total is not None and session.received < session.total:
        return await _pause(rt, session)
    return await _complete(rt, session)


async def _pause(rt: Runtime, session: Session) -> UploadStatus:
    """A PUT ended before the image did: its writes land, so what RBD holds is saved."""
    assert session.intake is not None
    try:
        await session.intake.settle()
    except Exception as e:
        raise await _fail(rt, session, e) from None
    await _save(rt, session, RUNNING)
    return UploadStatus(session.image_uuid, RUNNING, session.received, session.total)


def _check_same_digests(session: Session, digests: dict[str, str]) -> None:
    """A later PUT may repeat the whole image's digests, not bring new ones: the bytes
    already received were not hashed for them."""
    for algorithm, value in digests.items():
        if session.expected.digests.get(algorithm) != value:
            raise invalid_argument(f"the {algorithm} digest of the whole image (Digest, Repr-Digest) must come "
                                   "with its first bytes; this PUT brings a new one")


async def _start(rt: Runtime, session: Session, digests: dict[str, str]) -> ImageIntake:
    """The first bytes: check the storage (capacity against the size, when known), and
    gather the digests to check (the AddImage's checksum tag and the PUT's headers)."""
    async with rt.db() as db:
        system_tags = await tags.tags_of(db, session.image_uuid, tags.SYSTEM)
    expected = expected_from_tags(system_tags)
    for algorithm, value in digests.items():
        expected.add(algorithm, value, "header Digest or Repr-Digest")
    session.expected = expected
    kept = [t for t in checksum_tags(digests) if t not in system_tags]
    if kept:  # the expectation outlives this process: a resumed upload after a restart checks it too
        async with rt.db() as db:
            db.add_all(tags.new_tags(session.image_uuid, images.RESOURCE_TYPE, kept, []))
            await db.commit()
    image = await images.load(rt, session.image_uuid)
    if session.restarted and not session.received:  # a partial image the previous run left: start over
        if await image_add.remove_bits(rt, image.uuid, [r.backup_storage_uuid for r in image.backup_storage_refs]):
            raise ApiError(OPERATION_ERROR, f"the upload of image[uuid:{image.uuid}] is still held by the writer of "
                                            "this node's previous run (its watch ends within a minute); "
                                            "send the bytes again then", status=503)
    targets, failures = await image_add.targets_for(rt, image, session.total)
    # no await since each target's handle was taken: a Reconnect, a Delete or a mon change
    # during the upload (minutes, across PUTs) replaces the handle but leaves this one open
    session.leases = [rt.clusters.hold(t.cluster) for t in targets]
    if not targets:
        raise await _fail(rt, session, image_add.all_failed(image, dict(failures)))
    reporter = session.reporter
    progress = image_add.progress_of(reporter, lambda: intake.detected)
    if session.received:
        try:
            intake = await ImageIntake.resume(targets, image.uuid, session.total, session.received,
                                              image_add.staging_dir(rt), progress, session.expected)
        except Exception as e:
            raise await _fail(rt, session, e) from None
    else:
        intake = ImageIntake(targets, image.uuid, session.total, image_add.staging_dir(rt), progress,
                             expected=session.expected)
    await _save(rt, session, RUNNING)
    return intake


async def _complete(rt: Runtime, session: Session) -> UploadStatus:
    assert session.intake is not None
    try:
        result = await session.intake.finish()
        image = await image_add.finish(rt, session.image_uuid, result, {}, session.reporter)
        if result.verified and result.detected_format in DIRECT:
            await keep_verified(rt, session.image_uuid, result.stored, result.verified)
            image = await images.load(rt, session.image_uuid)
    except Exception as e:
        raise await _fail(rt, session, e) from None
    finally:
        session.release()
    _SESSIONS.pop(session.image_uuid, None)
    await _save(rt, session, SUCCEEDED)
    return UploadStatus(session.image_uuid, SUCCEEDED, session.received, session.received, image)


async def _save(rt: Runtime, session: Session, state: str, offset: int | None = None) -> None:
    """The slot's state; while Running its offset is what RBD holds (where the upload
    resumes after a restart), once done the bytes received."""
    session.saved_at = time.monotonic()
    if offset is None:
        held = session.intake.durable if session.intake is not None else session.received
        offset = held if state == RUNNING else session.received
    async with rt.db() as db:
        slot = await db.get(ImageUpload, session.image_uuid)
        if slot is None:
            return
        slot.state, slot.offset, slot.size, slot.node = state, offset, session.total, rt.node_id
        await db.commit()


async def _fail(rt: Runtime, session: Session, error: Exception) -> ApiError:
    """The upload cannot go on: nothing stays in Ceph, the image is Error with the reason."""
    _SESSIONS.pop(session.image_uuid, None)
    if session.intake is not None:
        await session.intake.abort()
    session.release()
    api_error = image_add.as_api_error(error)
    await image_add.mark_failed(rt, session.image_uuid, api_error.details)
    await _save(rt, session, FAILED)
    await session.reporter.update(session.reporter.percent, force=True, stage=FAILED, error=api_error.details)
    return api_error


# ---------------------------------------------------------------- ending uploads


async def cancel(image_uuid: str) -> None:
    """DeleteImage of an uploading image: stop the PUT under way, remove what was written."""
    session = _SESSIONS.pop(image_uuid, None)
    if session is None:
        return
    session.deleted = True
    task = session.task
    if task is not None and not task.done() and task is not asyncio.current_task():
        task.cancel()
    async with session.lock:  # the PUT has answered and let go
        if session.intake is not None:
            await session.intake.abort()
        session.release()


async def expire_idle(rt: Runtime) -> None:
    """Uploads that got no byte for ``image_upload_timeout`` seconds fail (their partial
    image removed): a forgotten upload must not hold an open writer for ever."""
    cutoff = utcnow() - timedelta(seconds=rt.settings.image_upload_timeout)
    async with rt.db() as db:
        idle = list(await db.scalars(select(ImageUpload).where(
            ImageUpload.state.in_((WAITING, RUNNING)), ImageUpload.last_op_date < cutoff)))
    for slot in idle:
        session = _SESSIONS.get(slot.image_uuid)
        if session is not None and session.lock.locked():
            continue  # bytes are arriving right now
        if slot.node not in (None, rt.node_id):
            continue  # another node's writer: that node expires it
        reason = f"no byte of the upload arrived for {rt.settings.image_upload_timeout} seconds"
        await cancel(slot.image_uuid)
        await _close_slot(rt, slot, reason)


async def clean_up_interrupted(rt: Runtime) -> int:
    """Uploads this node was receiving when its process ended stay open: they continue
    from what RBD holds (their slot's offset). Those that held nothing yet (offset 0)
    start again, so the partial image their writer may have left is removed now (a
    killed writer's watch keeps it busy for ~30 s). Answers how many are left to retry."""
    async with rt.db() as db:
        lost = list(await db.scalars(select(ImageUpload).where(
            ImageUpload.state == RUNNING, ImageUpload.node == rt.node_id, ImageUpload.offset == 0)))
    left = 0
    for slot in lost:
        if slot.image_uuid not in _SESSIONS:
            left += bool(await image_add.remove_bits(rt, slot.image_uuid, [slot.backup_storage_uuid]))
    return left


async def orphans(db: AsyncSession) -> list[tuple[str, str]]:
    """(image uuid, node) of the open uploads whose node is gone (no ``node`` row: its
    heartbeat expired). Their writer died with that node; only a survivor can end them."""
    rows = await db.execute(select(ImageUpload.image_uuid, ImageUpload.node).where(
        ImageUpload.state.in_((WAITING, RUNNING)),
        ImageUpload.node.is_not(None),
        ImageUpload.node.not_in(select(Node.id)),
    ))
    return [(uuid, node) for uuid, node in rows]


async def claim_orphan(db: AsyncSession, image_uuid: str, dead: str, me: str) -> bool:
    """Compare-and-set the upload's node from the dead one to this one (Running: a
    clean-up that fails is retried by this node's ``clean_up_interrupted``), so only one
    survivor ends it, and if this one dies too, it is again a dead node's."""
    result = await db.execute(
        update(ImageUpload)
        .where(ImageUpload.image_uuid == image_uuid, ImageUpload.node == dead,
               ImageUpload.state.in_((WAITING, RUNNING)))
        .values(node=me, state=RUNNING)
    )
    await db.commit()
    return bool(result.rowcount)


async def end_orphan(rt: Runtime, image_uuid: str, dead: str) -> None:
    """Fail an upload claimed from dead node ``dead``: the image Error with the reason
    (the client must add it again: the bytes were in the dead node's writer), then its
    partial image removed. The dead writer's watch holds that image until the OSDs time
    it out (~30 s), so the removal is tried again a few times."""
    for pause in ORPHAN_RETRY_PAUSES:
        await asyncio.sleep(pause)
        async with rt.db() as db:
            slot = await db.get(ImageUpload, image_uuid, populate_existing=True)
        if slot is None or slot.state != RUNNING or slot.node != rt.node_id:
            return  # done, or no longer this node's to end
        if await _close_slot(rt, slot, f"node[{dead}] receiving the upload stopped; add the image again"):
            return


async def _close_slot(rt: Runtime, slot: ImageUpload, reason: str) -> bool:
    """Fail the upload: the image Error, the slot Failed once its bits are gone (until
    then it stays Running, so the next clean-up tries again). True when all is done."""
    log.warning("upload of image %s failed: %s", slot.image_uuid, reason)
    left = []
    if slot.offset > 0 or slot.state == RUNNING:
        left = await image_add.remove_bits(rt, slot.image_uuid, [slot.backup_storage_uuid])
    await image_add.mark_failed(rt, slot.image_uuid, reason)
    async with rt.db() as db:
        row = await db.get(ImageUpload, slot.image_uuid)
        if row is not None:
            row.state = RUNNING if left else FAILED
            row.node = rt.node_id
            await db.commit()
    return not left


async def stop_all(rt: Runtime) -> None:
    """The node stops: the uploads it holds keep what RBD has, to continue after its
    restart (their writers wait for the writes in flight and let go of the images). One
    whose bytes are arriving right now (the server's grace ran out) fails, as does one
    whose images cannot be kept."""
    for image_uuid, session in list(_SESSIONS.items()):
        if session.lock.locked() or session.intake is None:
            if session.lock.locked():
                await cancel(image_uuid)
                await _close_failed(rt, image_uuid, "the server stopped during a PUT of the upload; "
                                                    "add the image again")
            continue
        _SESSIONS.pop(image_uuid, None)
        try:
            offset = await session.intake.suspend()
        except Exception as e:
            log.warning("upload of image %s could not be kept for a restart: %s", image_uuid, e)
            await session.intake.abort()
            offset = 0
        finally:
            session.release()
        await _save(rt, session, RUNNING, offset)


async def _close_failed(rt: Runtime, image_uuid: str, reason: str) -> None:
    async with rt.db() as db:
        slot = await db.get(ImageUpload, image_uuid)
    if slot is not None:
        await _close_slot(rt, slot, reason)
