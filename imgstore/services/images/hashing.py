"""Digests of images: CalculateImageHash, and the digests a client asks to be verified.

No digest of every byte is taken while an image is written (issue 15): on a 2-core
machine md5 and sha512 of each byte cost more CPU than ``rbd import`` needs for the whole
job. ZStack's Ceph storage does the same: it offers CalculateImageHash
(``PUT /v1/images/{uuid}/actions``, ``calculateImageHash``) for whoever wants one.

* :func:`calculate` reads the RBD image back (several reads in flight, holes not read)
  and hashes it in a worker thread (hashlib lets go of the GIL), reporting progress
  through GetTaskProgress. The result is kept on the ref it read (``hashAlgorithm``,
  ``hashValue``); an MD5 also fills the image's ``md5Sum``, a SHA512 its ``sha512Sum``.
  A ref that holds the algorithm's result already answers at once (ZStack answers at
  once when ``md5Sum`` is set).
* :class:`Expected` is what a client asked to have checked while the bytes stream
  (``Content-MD5``, ``Digest``/``Repr-Digest``, or AddImage's ``checksum::`` system
  tag); a mismatch fails the add (:class:`DigestMismatch`) and its RBD image goes.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from imgstore import ceph
from imgstore.db.models import Image, ImageBackupStorageRef
from imgstore.errors import OPERATION_ERROR, ApiError, invalid_argument
from imgstore.services.images import manage as images
from imgstore.services.images.metadata import split_install_path
from imgstore.services.node.ceph_errors import ceph_error
from imgstore.services.node.locking import locked_row
from imgstore.services.node.runtime import Runtime
from imgstore.services.node.task_progress import ProgressReporter

log = logging.getLogger(__name__)

TASK_NAME = "CalculateImageHash"
#: ZStack's ImageHashAlgorithm names → hashlib's
ALGORITHMS = {"MD5": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
HEX_LENGTHS = {name: hashlib.new(h).digest_size * 2 for name, h in ALGORITHMS.items()}
READ_AHEAD = 8  # 4 MiB reads in flight while hashing (holes are not read)
INLINE_UPDATE = 1 << 20  # pieces smaller than this are hashed on the loop: a thread hop costs as much
CHECKSUM_TAG = "checksum::"  # AddImage's system tag checksum::<algorithm>::<hex digest>
#: HTTP digest algorithm names (RFC 3230 Digest, RFC 9530 Repr-Digest) → ZStack's
HTTP_ALGORITHMS = {"md5": "MD5", "sha": "SHA1", "sha-1": "SHA1", "sha-256": "SHA256", "sha-512": "SHA512"}

#: progress callback: (bytes hashed, bytes in all)
Progress = Callable[[int, int], Awaitable[None]]


def algorithm_of(name: str, field: str = "algorithm") -> str:
    """ZStack's algorithm name (any case, ``SHA-256`` too) → MD5/SHA1/SHA256/SHA512."""
    key = name.strip().upper().replace("-", "")
    if key not in ALGORITHMS:
        raise invalid_argument(f"valid values of field[{field}] are [{', '.join(ALGORITHMS)}], "
                               f"but {name[:40]} found")
    return key


class DigestMismatch(ValueError):
    """The bytes received do not have the digest the client said they have."""


class Expected:
    """Digests a client expects of the bytes, checked as they stream (its choice, its cost).

    Each piece is hashed in a worker thread, every algorithm in turn: one hop per piece,
    and the event loop stays free while OpenSSL works.
    """

    def __init__(self, digests: dict[str, str] | None = None) -> None:
        self.digests: dict[str, str] = {}
        self._hashes: dict[str, Any] = {}
        for algorithm, value in (digests or {}).items():
            self.add(algorithm, value)

    def add(self, algorithm: str, hex_value: str, source: str = "the request") -> None:
        name = algorithm_of(algorithm)
        value = hex_value.strip().lower()
        if len(value) != HEX_LENGTHS[name] or any(c not in "0123456789abcdef" for c in value):
            raise invalid_argument(f"the {name} digest in {source} must be {HEX_LENGTHS[name]} hex digits")
        if self.digests.get(name, value) != value:
            raise invalid_argument(f"two different {name} digests are expected of the image")
        self.digests[name] = value
        self._hashes.setdefault(name, hashlib.new(ALGORITHMS[name]))

    def __bool__(self) -> bool:
        return bool(self.digests)

    async def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not self._hashes:
            return
        if len(data) < INLINE_UPDATE:
            self._update(data)
        else:
            await asyncio.to_thread(self._update, data)

    def _update(self, data: bytes | bytearray | memoryview) -> None:
        for h in self._hashes.values():
            h.update(data)

    def check(self) -> dict[str, str]:
        """The digests, verified: DigestMismatch names the first one that differs."""
        for name, want in self.digests.items():
            got = self._hashes[name].hexdigest()
            if got != want:
                raise DigestMismatch(f"the {name} digest of the bytes received is {got}, "
                                     f"{want} was expected: the image is not stored")
        return dict(self.digests)


def expected_from_tags(system_tags: list[str]) -> Expected:
    """AddImage's ``checksum::<MD5|SHA1|SHA256|SHA512>::<hex>`` system tags: the digests
    the image's bytes (as sent, before any conversion) must have."""
    expected = Expected()
    for tag in system_tags:
        if tag.lower().startswith(CHECKSUM_TAG):
            algorithm, _, value = tag[len(CHECKSUM_TAG):].partition("::")
            try:
                algorithm = algorithm_of(algorithm, "systemTags")
            except ApiError:
                raise invalid_argument(f"system tag[{tag[:80]}] must be checksum::<algorithm>::<hex digest>, "
                                       f"the algorithm one of {', '.join(ALGORITHMS)}") from None
            expected.add(algorithm, value, f"system tag[{tag[:80]}]")
    return expected


def checksum_tags(digests: dict[str, str]) -> list[str]:
    """The ``checksum::`` system tags saying the image must have these digests."""
    return [f"{CHECKSUM_TAG}{algorithm}::{value}" for algorithm, value in digests.items()]


def content_md5(value: str) -> dict[str, str]:
    """``Content-MD5`` (RFC 1864: base64 of the 16 bytes) as ``{"MD5": hex}``."""
    return {"MD5": _hex_of(value.strip(), "Content-MD5", "MD5")}


def http_digests(value: str, header: str) -> dict[str, str]:
    """``Digest`` (RFC 3230: ``sha-256=<base64>``) or ``Repr-Digest`` (RFC 9530:
    ``sha-256=:<base64>:``) as ZStack algorithm → hex. Algorithms imgstore does not
    know are ignored, as both RFCs say; a header naming none it knows is refused (the
    client asked for a check that would not happen)."""
    found: dict[str, str] = {}
    for member in value.split(","):
        name, eq, raw = member.strip().partition("=")
        if not eq:
            raise invalid_argument(f"header {header}[{value[:120]}] must be <algorithm>=<base64 digest>, ...")
        algorithm = HTTP_ALGORITHMS.get(name.strip().lower())
        if algorithm is not None:
            found[algorithm] = _hex_of(raw.strip().strip(":"), header, algorithm)
    if not found:
        raise invalid_argument(f"header {header}[{value[:120]}] names no digest imgstore checks "
                               f"(it knows {', '.join(HTTP_ALGORITHMS)})")
    return found


def _hex_of(b64: str, header: str, algorithm: str) -> str:
    try:
        raw = base64.b64decode(b64, validate=True) if re.fullmatch(r"[A-Za-z0-9+/]+=*", b64) else b""
    except binascii.Error:
        raw = b""
    if len(raw) * 2 != HEX_LENGTHS[algorithm]:
        raise invalid_argument(f"header {header} must carry the base64 of the {HEX_LENGTHS[algorithm] // 2} "
                               f"bytes of a {algorithm} digest")
    return raw.hex()


async def digest_of(cluster: ceph.RadosSource, pool: str, name: str, algorithm: str,
                    progress: Progress | None = None) -> str:
    """The hex digest of RBD image ``pool/name``, read with reads in flight."""
    h = hashlib.new(ALGORITHMS[algorithm])
    size = await ceph.image_size(cluster, pool, name)
    done = 0
    # aclosing: a failed progress write leaves the loop early; the reader closes its image now
    async with contextlib.aclosing(ceph.iter_image(cluster, pool, name, readahead=READ_AHEAD)) as pieces:
        async for piece in pieces:
            await asyncio.to_thread(h.update, piece)
            done += len(piece)
            if progress is not None:
                await progress(done, size)
    return h.hexdigest()


async def calculate(rt: Runtime, image_uuid: str, bs_uuid: str, algorithm: str, api_id: str) -> Image:
    """CalculateImageHash: the image, its digest kept on the ref of storage ``bs_uuid``."""
    name = algorithm_of(algorithm)
    image = await images.load(rt, image_uuid)
    storage = await images.storage_of(rt, bs_uuid)
    ref = _ref_on(image, bs_uuid)
    if ref.hash_algorithm == name and ref.hash_value:
        return image
    if ref.status != images.READY or image.status != images.READY:
        raise ApiError(OPERATION_ERROR, f"image[uuid:{image_uuid}] on backup storage[uuid:{bs_uuid}] is "
                                        f"{ref.status if ref.status != images.READY else image.status}, "
                                        "not Ready: only a Ready image can be hashed", status=409)
    where = split_install_path(ref.install_path)
    if where is None:
        raise ApiError(OPERATION_ERROR, f"image[uuid:{image_uuid}] has no RBD image on backup storage"
                                        f"[uuid:{bs_uuid}]: installPath[{ref.install_path}]")
    reporter = ProgressReporter(rt, api_id, image_uuid, TASK_NAME,
                                arguments={"imageUuid": image_uuid, "algorithm": name})
    await reporter.start(stage="Hashing")

    async def report(done: int, total: int) -> None:
        await reporter.update(min(99, done * 100 // total) if total else 99, bytes=done, totalBytes=total)

    try:
        async with rt.clusters.lease(storage) as cluster:
            value = await digest_of(cluster, *where, name, report)
    except ceph.ImageNotFound as e:
        raise ceph_error(e, status=404, details=f"the RBD image {where[0]}/{where[1]} of backup storage"
                                                f"[uuid:{bs_uuid}] is missing") from None
    except ceph.CephError as e:
        raise ceph_error(e) from None
    await keep(rt, image_uuid, bs_uuid, name, value)
    await reporter.update(100, force=True, stage="Done")
    return await images.load(rt, image_uuid)


async def keep_verified(rt: Runtime, image_uuid: str, stored: list[str], verified: dict[str, str]) -> None:
    """Digests checked while the image streamed in, kept on its refs as CalculateImageHash
    would keep them (only for bytes stored as received: not converted)."""
    for algorithm in ("SHA256", "SHA512", "SHA1", "MD5"):  # one per ref: the strongest
        if algorithm in verified:
            for bs in stored:
                await keep(rt, image_uuid, bs, algorithm, verified[algorithm])
            return


async def keep(rt: Runtime, image_uuid: str, bs_uuid: str, algorithm: str, value: str) -> None:
    """Record a digest of the image's bits on storage ``bs_uuid`` (and md5Sum/sha512Sum)."""
    async with locked_row(rt, Image, image_uuid) as (db, image):
        if image is None:
            return
        for ref in image.backup_storage_refs:
            if ref.backup_storage_uuid == bs_uuid:
                ref.hash_algorithm, ref.hash_value = algorithm, value
        if algorithm == "MD5":
            image.md5_sum = value
        elif algorithm == "SHA512":
            image.sha512_sum = value
        await db.commit()


def _ref_on(image: Image, bs_uuid: str) -> ImageBackupStorageRef:
    ref = next((r for r in image.backup_storage_refs if r.backup_storage_uuid == bs_uuid), None)
    if ref is None:
        raise ApiError(OPERATION_ERROR, f"image[uuid:{image.uuid}] is not on backup storage[uuid:{bs_uuid}]")
    return ref

