"""Exporting an image from a backup storage: a download URL served by imgstore itself.

ZStack's ExportImageFromBackupStorage has the Ceph agent serve the RBD image at
``http://<mon>:7761/ceph/export/<pool>/<name>-<uuid>?token=<token>`` and records that
URL and the md5 on the image's ref. imgstore has no agent:
it serves ``<base>/zstack/v1/exports/<pool>/<name>-<uuid>?token=<token>`` itself,
streaming the RBD image with several reads in flight (``ceph.iter_image``).

* The token is 256 random bits; the ref keeps its sha256 (``export_token``) to check a
  download against, the URL sealed with the node's secret key (``export_url``: it holds
  the token, and a copy of the database must not be a set of links) and
  ``export_md5_sum``. As in ZStack, the URL shows in QueryImage's ``backupStorageRefs``
  (to holders of a session only, through :func:`shown_url`), and a second export
  returns the same URL.
* ``exportMd5Sum`` is the md5 of the bytes served: the MD5 CalculateImageHash kept on
  the ref, or the image's ``md5Sum`` when the bytes stored are the bytes received (not
  converted from qcow2 or vmdk: then its size differs from what was received); otherwise
  the image is read once to compute it (:func:`hashing.digest_of`), and the result is
  kept on the ref (``exportMd5Sum``).
* DeleteExportedImageFromBackupStorage clears the URL and the token: the URL answers 404
  from then on.

librbd does not know about readers; :func:`streaming` tells whoever removes an image's
bits whether this node is serving it right now.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

from sqlalchemy import select

from imgstore import ceph
from imgstore.db.models import CephBackupStorage, Image, ImageBackupStorageRef
from imgstore.errors import (
    INVALID_ARGUMENT,
    OPERATION_ERROR,
    PERMISSION_DENIED,
    RESOURCE_NOT_FOUND,
    ApiError,
    not_found,
)
from imgstore.services.images import hashing
from imgstore.services.images.metadata import split_install_path
from imgstore.services.node.ceph_errors import ceph_error
from imgstore.services.node.handles import Lease
from imgstore.services.node.locking import locked_row
from imgstore.services.node.runtime import Runtime
from imgstore.wire.enums import ImageStatus

EXPORT_PATH = "zstack/v1/exports"
EXPORT_FORMATS = ("raw", "qcow2")  # ZStack's valid values; Ceph ignores it and exports raw
READY = ImageStatus.READY
NOT_CALCULATED = "not calculated"  # ZStack's md5Sum of an image added to Ceph
# a download's reader may be slow and there may be many (api/export_slots.py caps them):
# object-sized reads, 2 in flight, are 12 MiB per download with the piece being sent.
# 1 MiB reads, 4 in flight (5 MiB), cost the server a third more CPU a GiB: 4 times the
# pieces through the response (the README's benchmark table)
STREAM_CHUNK, STREAM_READ_AHEAD = 4 << 20, 2
_UUID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Export:
    image_url: str
    md5: str


@dataclass
class Download:
    """An authorised download: what to stream and how to name it."""

    cluster: ceph.Cluster
    pool: str
    name: str  # the RBD image
    image_uuid: str
    size: int
    filename: str
    md5: str | None
    streams: Counter[str]  # the node's downloads being served, by image (``Node.streams``)
    lease: Lease | None = None  # keeps ``cluster`` open until the stream ends (a Reconnect may replace it)

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of the image; counted in :func:`streaming` meanwhile."""
        self.streams[self.image_uuid] += 1
        try:
            # aclosing: a client that hangs up leaves the loop; the reader closes its image now,
            # not when the generator is collected after the lease has let the cluster go
            async with contextlib.aclosing(ceph.iter_image(self.cluster, self.pool, self.name, start, end,
                                                           chunk=STREAM_CHUNK,
                                                           readahead=STREAM_READ_AHEAD)) as pieces:
                async for piece in pieces:
                    yield piece
        finally:
            if self.lease is not None:
                self.lease.release()
            self.streams[self.image_uuid] -= 1
            if self.streams[self.image_uuid] <= 0:
                del self.streams[self.image_uuid]


def streaming(rt: Runtime, image_uuid: str) -> int:
    """How many downloads of the image this node is serving now."""
    return rt.node.streams.get(image_uuid, 0)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def export_url(base_url: str, pool: str, image: Image, token: str) -> str:
    segment = f"{quote(image.name, safe='')}-{image.uuid}"
    return f"{base_url.rstrip('/')}/{EXPORT_PATH}/{quote(pool, safe='')}/{segment}?token={token}"


# ---------------------------------------------------------------- Export / DeleteExported


async def export(rt: Runtime, bs_uuid: str, image_uuid: str, base_url: str,
                 export_format: str | None = None) -> Export:
    """ExportImageFromBackupStorage: the image's download URL and md5 (the same URL
    again if it is exported already)."""
    if export_format is not None and export_format not in EXPORT_FORMATS:
        raise ApiError(INVALID_ARGUMENT, f"valid value for field[exportFormat] are "
                                         f"[{', '.join(EXPORT_FORMATS)}], but {export_format} found")
    storage, image, ref = await _ref(rt, bs_uuid, image_uuid)
    if ref.export_url and ref.export_token:
        return Export(rt.secrets.open(ref.export_url), ref.export_md5_sum or "")
    if ref.status != READY or image.status != READY:
        raise ApiError(OPERATION_ERROR, f"image[uuid: {image_uuid}] on backup storage[uuid:{bs_uuid}] is "
                                        f"{ref.status if ref.status != READY else image.status}, not Ready: "
                                        "only a Ready image can be exported")
    where = _where(ref)
    md5 = _stored_md5(image, ref) or ref.export_md5_sum or await _compute_md5(rt, storage, *where)
    token = secrets.token_urlsafe(32)
    async with locked_row(rt, Image, image_uuid) as (db, locked):
        row = next((r for r in locked.backup_storage_refs if r.backup_storage_uuid == bs_uuid), None) \
            if locked is not None else None
        if row is None:
            raise _not_on_storage(image_uuid, storage)
        if row.export_url and row.export_token:  # a concurrent export got there first
            return Export(rt.secrets.open(row.export_url), row.export_md5_sum or md5)
        url = export_url(base_url, where[0], image, token)
        row.export_url = rt.secrets.seal(url)
        row.export_token = _hash(token)
        row.export_md5_sum = md5
        await db.commit()
        return Export(url, md5)


def shown_url(rt: Runtime, stored: str | None) -> str | None:
    """A ref's ``export_url`` as inventories show it: unsealed; None when this node's key
    cannot open it (a key changed: export again)."""
    if not stored:
        return None
    try:
        return rt.secrets.open(stored)
    except ValueError:
        return None


async def revoke(rt: Runtime, bs_uuid: str, image_uuid: str) -> None:
    """DeleteExportedImageFromBackupStorage: the URL stops working. Nothing exported,
    or the image not on that storage: nothing to do, success (as in ZStack)."""
    async with rt.db() as db:
        if await db.get(CephBackupStorage, bs_uuid) is None:
            raise not_found("BackupStorageVO", bs_uuid, field="backupStorageUuid")
        ref = await db.scalar(select(ImageBackupStorageRef).where(
            ImageBackupStorageRef.image_uuid == image_uuid,
            ImageBackupStorageRef.backup_storage_uuid == bs_uuid))
        if ref is None or (ref.export_url is None and ref.export_token is None):
            return
        ref.export_url = None
        ref.export_token = None
        await db.commit()


async def _ref(rt: Runtime, bs_uuid: str, image_uuid: str) -> tuple[CephBackupStorage, Image, ImageBackupStorageRef]:
    async with rt.db() as db:
        storage = await db.get(CephBackupStorage, bs_uuid, populate_existing=True)
        if storage is None:
            raise not_found("BackupStorageVO", bs_uuid, field="backupStorageUuid")
        image = await db.get(Image, image_uuid, populate_existing=True)
        if image is None:
            raise not_found("ImageVO", image_uuid, field="imageUuid")
        ref = next((r for r in image.backup_storage_refs if r.backup_storage_uuid == bs_uuid), None)
        if ref is None:
            raise _not_on_storage(image_uuid, storage)
        return storage, image, ref


def _not_on_storage(image_uuid: str, storage: CephBackupStorage) -> ApiError:
    return ApiError(OPERATION_ERROR, f"image[uuid: {image_uuid}] is not on backup storage"
                                     f"[uuid:{storage.uuid}, name:{storage.name}]")


def _where(ref: ImageBackupStorageRef) -> tuple[str, str]:
    where = split_install_path(ref.install_path)
    if where is None:
        raise ApiError(OPERATION_ERROR, f"image[uuid: {ref.image_uuid}] has no RBD image on backup storage"
                                        f"[uuid:{ref.backup_storage_uuid}]: installPath[{ref.install_path}]")
    return where


def _stored_md5(image: Image, ref: ImageBackupStorageRef) -> str | None:
    """An md5 of the bytes stored, known already: CalculateImageHash's on the ref, or the
    image's md5Sum when the image was stored as received (same size), not converted."""
    if ref.hash_algorithm == "MD5" and ref.hash_value:
        return ref.hash_value
    md5 = (image.md5_sum or "").strip().lower()
    if re.fullmatch(r"[0-9a-f]{32}", md5) and image.actual_size == image.size:
        return md5
    return None


async def _compute_md5(rt: Runtime, storage: CephBackupStorage, pool: str, name: str) -> str:
    try:
        async with rt.clusters.lease(storage) as cluster:
            return await hashing.digest_of(cluster, pool, name, "MD5")
    except ceph.ImageNotFound as e:
        raise ceph_error(e, status=404, details=f"the RBD image {pool}/{name} of backup storage"
                                                f"[uuid:{storage.uuid}] is missing") from None
    except ceph.CephError as e:
        raise ceph_error(e) from None


# ---------------------------------------------------------------- the download


async def open_download(rt: Runtime, pool: str, segment: str, token: str | None) -> Download:
    """The export behind ``/exports/<pool>/<segment>?token=``: 404 when nothing of that
    image is exported (or no more), 403 when the token is missing or wrong.

    The image uuid is the last 32 characters of the segment, as ZStack's agent reads it.
    """
    image_uuid = segment[-32:]
    if not _UUID.fullmatch(image_uuid):
        raise _no_export(pool, segment)
    async with rt.db() as db:
        refs = list(await db.scalars(select(ImageBackupStorageRef).where(
            ImageBackupStorageRef.image_uuid == image_uuid,
            ImageBackupStorageRef.export_token.is_not(None))))
        refs = [r for r in refs if (split_install_path(r.install_path) or ("",))[0] == pool]
        if not refs:
            raise _no_export(pool, segment)
        wanted = _hash(token or "")
        ref = next((r for r in refs if hmac.compare_digest(r.export_token or "", wanted)), None)
        if ref is None:
            raise ApiError(PERMISSION_DENIED, "Forbidden: the token of this export URL is missing or wrong")
        image = await db.get(Image, image_uuid)
        storage = await db.get(CephBackupStorage, ref.backup_storage_uuid)
        if image is None or storage is None or ref.status != READY or image.status != READY:
            raise _no_export(pool, segment)
        md5 = ref.export_md5_sum
        filename = _filename(image)
    pool, name = _where(ref)
    lease = await rt.clusters.take(storage)  # the stream finishes on this handle
    try:
        size = await ceph.image_size(lease.cluster, pool, name)
    except ceph.ImageNotFound:
        lease.release()
        raise _no_export(pool, segment) from None
    except ceph.CephError as e:
        lease.release()
        raise ceph_error(e) from None
    return Download(lease.cluster, pool, name, image_uuid, size, filename, md5, rt.node.streams, lease)


def _no_export(pool: str, segment: str) -> ApiError:
    return ApiError(RESOURCE_NOT_FOUND, f"no exported image at {pool}/{segment}: never exported, "
                                        "or the export was deleted")


def _filename(image: Image) -> str:
    """The image's name as a file name, with the format as extension if it has none."""
    name = re.sub(r'[\x00-\x1f\x7f/\\"]', "_", image.name).strip(" .") or image.uuid
    extension = f".{image.format}"
    return name if name.lower().endswith(extension) else name + extension
