"""An image's bytes in, RBD images out: the write path of AddImage (download and upload).

:class:`ImageIntake` takes the stream in pieces of any size. Its first
``imageformat.HEAD_SIZE`` bytes decide what it is (the client's ``format`` is not
trusted):

* **raw** or **iso** go straight into an ``ceph.ImageWriter`` per backup storage
  (fan-out: the source is read once however many storages take it). The writer keeps
  several writes in flight and skips zero chunks. No digest is taken of every byte
  (issue 15: CalculateImageHash computes one on demand), only those the client asked to
  have verified (:class:`hashing.Expected`): a mismatch fails the intake before any
  image is committed. A storage that fails drops out; the others go on.
* **qcow2** or **vmdk** are staged in a file under the data dir (qemu needs a seekable
  file), then read as raw through ``qemu-nbd``
  (:mod:`imgstore.services.images.formats.qemu`) into each storage's writer. That needs disk for the source
  only: converting to a raw temporary file first would need the allocated size again.
  The staging file is removed whatever happens.
* anything unsafe (a qcow2 with a backing or data file, a vmdk naming a parent or
  other files, a head that matches two formats: the CVE-2024-32498 class) or unknown is
  refused before a byte reaches Ceph or qemu.
* the virtual size (qcow2/vmdk header, or the raw source's announced length) is checked
  against :class:`Limits` ``max_virtual_size`` (refused) and each storage's available
  capacity (that storage drops out) before any RBD image exists; qemu's own idea of the
  size is checked again before the RBD image is made. A source of unknown length is
  cut off past ``max_source_bytes``; a conversion past ``convert_timeout`` fails.

A raw intake can stop without removing its RBD images (:meth:`ImageIntake.suspend`, when
the server stops) and a new one continue it from what RBD holds
(:meth:`ImageIntake.resume`: an upload survives a restart of the server).

A failed or aborted intake leaves no RBD image (the writers remove theirs) and no file.
No HTTP, no database: the caller turns the outcome into rows.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgstore.ceph import (
    CephError,
    ImageSizeMismatch,
    ImageWriter,
    RadosSource,
    SparsePiece,
    iter_image,
    remove_image,
)
from imgstore.services.images.formats import inspect as imageformat
from imgstore.services.images.formats import qemu
from imgstore.services.images.hashing import DigestMismatch, Expected
from imgstore.services.images.loan import Loan

log = logging.getLogger(__name__)

RAW, ISO, QCOW2, VMDK = "raw", "iso", "qcow2", "vmdk"
DIRECT = (RAW, ISO)
CONVERTED = qemu.FORMATS
STAGING_MARGIN = 64 << 20  # free disk kept beside a staged image

#: progress callback: (stage, bytes done, bytes expected or None)
Progress = Callable[[str, int, int | None], Awaitable[None]]
DOWNLOADING, CONVERTING = "Downloading", "Converting"


@dataclass(frozen=True)
class Limits:
    """How big and how long an intake may get (settings ``image_max_*``, ``image_convert_*``)."""

    max_virtual_size: int = 16 << 40
    max_source_bytes: int = 1 << 40  # sources of unknown length
    convert_timeout: float = 6 * 3600.0
    qemu: qemu.Limits = field(default_factory=qemu.Limits)


class ImageRefused(ValueError):
    """The bytes are not an image imgstore will store (unsafe or unsupported format)."""


class IntakeFailed(Exception):
    """Every storage failed (``failures`` says why, per storage), or staging failed."""

    def __init__(self, message: str, failures: dict[str, Exception] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or {}


@dataclass
class Target:
    """One backup storage to write the image into."""

    backup_storage_uuid: str
    cluster: RadosSource
    pool: str
    available: int | None = None  # bytes the pool can take, when known
    limits: Limits = Limits()  # the settings' bounds (image_add.targets_for fills them in)
    leftover: Callable[[str, int | None], Awaitable[None]] | None = None
    """Called with the reason and the image's size (None before it is known) when the
    image this intake made here cannot be removed (image_add.targets_for records it as
    the storage's trash): bits are never lost."""


@dataclass
class IntakeResult:
    detected_format: str  # raw, iso, qcow2, vmdk: what the bytes were
    size: int  # virtual size: the bytes of each RBD image
    actual_size: int  # bytes received from the source
    stored: list[str]  # backup storage uuids that have the image
    failures: dict[str, Exception] = field(default_factory=dict)
    verified: dict[str, str] = field(default_factory=dict)  # algorithm -> hex digest of the bytes received

    @property
    def md5(self) -> str | None:
        return self.verified.get("MD5")

    @property
    def sha512(self) -> str | None:
        return self.verified.get("SHA512")

    @property
    def stored_format(self) -> str:
        return ISO if self.detected_format == ISO else RAW


class ImageIntake:
    """Bytes of one image, written into every target; see the module docstring."""

    def __init__(self, targets: list[Target], image_uuid: str, total: int | None,
                 staging_dir: Path, progress: Progress | None = None, limits: Limits | None = None,
                 expected: Expected | None = None) -> None:
        if not targets:
            raise ValueError("an intake needs at least one target")
        self.image_uuid = image_uuid
        self.total = total
        self.received = 0
        self.detected: str | None = None
        self._targets = {t.backup_storage_uuid: t for t in targets}
        self._targets_by_uuid = dict(self._targets)  # _targets loses the failed ones
        self._all_targets = list(targets)
        self._staging_dir = staging_dir
        self._progress = progress
        self._limits = limits or targets[0].limits  # the callers need not know the settings
        self._head = bytearray()
        self._writers: dict[str, ImageWriter] = {}
        self._committed: list[Target] = []  # images made in full: an abort removes them too
        self._failures: dict[str, Exception] = {}
        self._staged: Any = None  # the open staging file
        self._staged_path: Path | None = None
        self._expected = expected or Expected()
        self._verified: dict[str, str] = {}
        self._virtual_size: int | None = None
        self._closed = False

    @classmethod
    async def resume(cls, targets: list[Target], image_uuid: str, total: int | None, offset: int,
                     staging_dir: Path, progress: Progress | None = None,
                     expected: Expected | None = None) -> ImageIntake:
        """Continue a raw intake from byte ``offset`` (a :attr:`durable` of an earlier
        one): its RBD images are reopened there, and the digests expected of the whole
        image are brought up to ``offset`` by reading those bytes back from RBD."""
        intake = cls(targets, image_uuid, total, staging_dir, progress, expected=expected)
        intake.detected, intake._virtual_size, intake.received = RAW, total, offset
        for uuid, t in list(intake._targets.items()):
            w = ImageWriter(t.cluster, t.pool, image_uuid, size=total, checksums=False)
            try:
                await w.reopen(offset)
            except CephError as e:
                intake._failures[uuid] = e
                continue
            intake._writers[uuid] = w
        try:
            intake._check_some_left()
            if intake._expected and offset:
                first = intake._targets[next(iter(intake._writers))]
                async with contextlib.aclosing(iter_image(first.cluster, first.pool, image_uuid,
                                                          0, offset)) as pieces:
                    async for piece in pieces:
                        await intake._expected.feed(piece)
        except BaseException:
            await intake.abort()
            raise
        return intake

    @property
    def durable(self) -> int:
        """Bytes from the start that every storage holds (0 while staged: a staging file
        does not outlive the server)."""
        if self.detected not in DIRECT or not self._writers:
            return 0
        return min(w.durable for w in self._writers.values())

    async def settle(self) -> int:
        """Wait for the writes in flight: :attr:`durable` then covers all but the chunk
        being filled."""
        for w in list(self._writers.values()):
            await w.settle()
        return self.durable

    async def suspend(self) -> int:
        """Stop, keeping the RBD images as they stand for :meth:`resume`: answers the
        offset to resume from (0: nothing kept, everything removed)."""
        if self.detected not in DIRECT or not self._writers:
            await self.abort()
            return 0
        self._closed = True
        offsets = []
        for w in list(self._writers.values()):
            offsets.append(await w.detach())
        self._writers = {}
        return min(offsets)

    # ------------------------------------------------------------ the stream

    async def write(self, data: bytes | bytearray | memoryview | SparsePiece,
                    release: Callable[[], None] | None = None) -> None:
        """The next piece of the image, of any size.

        With ``release``, ``data`` is lent: each writer may write straight from it, and
        ``release`` is called once the last of them is done with it (see
        :meth:`ImageWriter.write`); a buffer never released is only never reused.
        A :class:`SparsePiece` goes to raw writers as it is, and is taken as its bytes
        wherever they are read (the head, a staged image, an expected digest).
        """
        loan = Loan(release)
        try:
            await self._write(data, loan)
        finally:
            loan.let_go()

    async def _write(self, data: bytes | bytearray | memoryview | SparsePiece, loan: Loan) -> None:
        if self._closed:
            raise RuntimeError("the intake is finished or aborted")
        self.received += len(data)
        if self.total is not None and self.received > self.total:
            raise IntakeFailed(f"more than the announced {self.total} bytes arrived")
        if self.total is None and self.received > self._limits.max_source_bytes:
            raise ImageRefused(f"the image is refused: its source sent more than {self._limits.max_source_bytes} "
                               "bytes (image_max_source_bytes) without announcing its length")
        if isinstance(data, SparsePiece):
            if not self._expected and self.detected in DIRECT:
                await self._pass(data, loan)  # raw writers take it by its runs
                return
            data = bytes(data)
        await self._expected.feed(data)
        if self.detected is None and not self._head and len(data) >= imageformat.HEAD_SIZE:
            # the whole head in the first piece (an upload's 4 MiB buffers): the format is
            # read from it in place and the piece goes on lent, not copied twice first (two
            # 4 MiB copies at the start set the heap's high-water mark for the whole stream)
            await self._decide(data)
            await self._pass(data, loan)
            return
        if self.detected is None:
            self._head += data
            if len(self._head) < imageformat.HEAD_SIZE:
                return
            head, self._head = bytes(self._head), bytearray()
            await self._decide(head)
            await self._pass(head)
            return
        await self._pass(data, loan)

    async def finish(self) -> IntakeResult:
        """The stream has ended: commit (or convert) into every target still standing."""
        if self.detected is None:  # an image smaller than the head
            head, self._head = bytes(self._head), bytearray()
            await self._decide(head)
            if head:
                await self._pass(head)
        if self.total is not None and self.received != self.total:
            raise IntakeFailed(f"the image ended after {self.received} bytes, {self.total} were announced")
        try:
            self._verified = self._expected.check()
        except DigestMismatch as e:
            raise ImageRefused(str(e)) from None
        if self.detected in DIRECT:
            result = await self._commit_writers()
        else:
            result = await self._convert()
        self._closed = True
        return result

    async def abort(self) -> None:
        """Remove whatever was written, committed images included (the caller could not
        record them); safe to call twice, and after a failed finish."""
        self._closed = True
        writers, self._writers = list(self._writers.items()), {}
        committed, self._committed = self._committed, []
        for uuid, w in writers:
            await self._abort_writer(uuid, w)
        for t in committed:
            try:
                await remove_image(t.cluster, t.pool, self.image_uuid, missing_ok=True)
            except CephError as e:
                await self._left_behind(t, str(e))
        await asyncio.shield(self._drop_staging())

    async def _abort_writer(self, uuid: str, w: ImageWriter, error: Exception | None = None) -> None:
        """Abort a writer of this intake (it may have aborted itself already, on
        ``error``); an image it cannot remove is the storage's trash."""
        try:
            await w.abort()
        except CephError as e:
            error = e
        if w.left_behind:
            await self._left_behind(self._targets_by_uuid[uuid], str(error or "its removal failed"))

    async def _left_behind(self, t: Target, reason: str) -> None:
        log.error("could not remove the image %s/%s from backup storage %s: %s; it is in its trash",
                  t.pool, self.image_uuid, t.backup_storage_uuid, reason)
        if t.leftover is not None:
            await asyncio.shield(t.leftover(reason, self._virtual_size))

    # ------------------------------------------------------------ deciding

    async def _decide(self, head: bytes | bytearray | memoryview) -> None:
        info = imageformat.inspect(head)
        reason = info.unsafe_reason()
        if reason:
            raise ImageRefused(f"the image is refused: {reason}")
        if info.format not in DIRECT + CONVERTED:
            raise ImageRefused(f"the image is refused: {info.format} images are not supported")
        self.detected = info.format
        self._virtual_size = info.virtual_size if info.format in CONVERTED else self.total
        if info.format in CONVERTED and not self._virtual_size:
            raise ImageRefused(f"the image is refused: the {info.format} header gives no virtual size")
        if self._virtual_size is not None:
            self._check_size(self._virtual_size)
        if info.format in DIRECT:
            await self._open_writers()
        else:
            await self._open_staging()

    def _check_size(self, virtual: int) -> None:
        """Refuse an image over the maximum; drop the storages it does not fit in."""
        if virtual > self._limits.max_virtual_size:
            raise ImageRefused(f"the image is refused: its virtual size of {virtual} bytes is over the "
                               f"maximum of {self._limits.max_virtual_size} (image_max_virtual_size)")
        for uuid, t in list(self._targets.items()):
            if t.available is not None and virtual > t.available:
                self._failures[uuid] = IntakeFailed(
                    f"backup storage[uuid:{uuid}] has not enough capacity for the image: its virtual "
                    f"size is {virtual} bytes, {t.available} are available")
                del self._targets[uuid]
        if not self._targets:
            room = max((t.available or 0 for t in self._all_targets), default=0)
            raise IntakeFailed(f"not enough capacity on any backup storage for the image: its virtual size "
                               f"is {virtual} bytes, at most {room} are available", dict(self._failures))

    async def _open_writers(self) -> None:
        for uuid, t in self._targets.items():
            w = ImageWriter(t.cluster, t.pool, self.image_uuid, size=self.total, checksums=False)
            try:
                await w.open()
            except CephError as e:
                self._failures[uuid] = e
                continue
            self._writers[uuid] = w
        self._check_some_left()

    async def _open_staging(self) -> None:
        self._staging_dir.mkdir(parents=True, exist_ok=True)
        if self.total is not None:
            free = shutil.disk_usage(self._staging_dir).free
            if free < self.total + STAGING_MARGIN:
                raise IntakeFailed(
                    f"a {self.detected} image is converted from a staged copy, and the server has "
                    f"{free} bytes free for {self.total}; free disk in its data dir")
        path = self._staging_dir / f"{self.image_uuid}.{self.detected}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._staged, self._staged_path = os.fdopen(fd, "wb"), path

    # ------------------------------------------------------------ passing bytes on

    async def _pass(self, data: bytes | bytearray | memoryview | SparsePiece, loan: Loan | None = None) -> None:
        if self._staged is not None:
            await asyncio.to_thread(self._stage, bytes(data) if isinstance(data, (memoryview, SparsePiece)) else data)
            if self._progress:
                await self._progress(DOWNLOADING, self.received, self.total)
            return
        for uuid, w in list(self._writers.items()):
            room = self._targets[uuid].available
            if self.total is None and room is not None and self.received > room:
                self._failures[uuid] = IntakeFailed(
                    f"backup storage[uuid:{uuid}] has not enough capacity for the image: "
                    f"more than its {room} available bytes arrived")
                del self._writers[uuid]
                await self._abort_writer(uuid, w)
                continue
            try:
                await w.write(data, loan.hold() if loan is not None else None)
            except ImageSizeMismatch as e:  # the source's fault, not the storage's
                raise IntakeFailed(str(e)) from None
            except CephError as e:
                self._failures[uuid] = e
                del self._writers[uuid]
                await self._abort_writer(uuid, w, e)
        self._check_some_left()
        if self._progress:
            await self._progress(DOWNLOADING, self.received, self.total)

    def _stage(self, data: bytes | bytearray) -> None:
        if self.total is None and shutil.disk_usage(self._staging_dir).free < STAGING_MARGIN + len(data):
            raise IntakeFailed(f"staging the {self.detected} image failed: the server's data dir is "
                               "out of disk; free disk in its data dir")
        try:
            self._staged.write(data)
        except OSError as e:
            raise IntakeFailed(f"staging the {self.detected} image failed: {e.strerror}") from None

    def _check_some_left(self) -> None:
        if not self._writers and self.detected in DIRECT:
            raise IntakeFailed("every backup storage failed to write the image", dict(self._failures))

    # ------------------------------------------------------------ ending

    async def _commit_writers(self) -> IntakeResult:
        stored = []
        for uuid, w in list(self._writers.items()):
            try:
                await w.commit()
            except ImageSizeMismatch as e:
                raise IntakeFailed(str(e)) from None
            except CephError as e:
                self._failures[uuid] = e
                del self._writers[uuid]
                await self._abort_writer(uuid, w, e)
                continue
            del self._writers[uuid]
            self._committed.append(self._targets[uuid])
            stored.append(uuid)
        if not stored:
            raise IntakeFailed("every backup storage failed to write the image", dict(self._failures))
        assert self.detected is not None
        return IntakeResult(self.detected, self.received, self.received, stored, dict(self._failures),
                            self._verified)

    async def _convert(self) -> IntakeResult:
        assert self._staged is not None and self._staged_path is not None and self.detected
        await asyncio.to_thread(self._staged.close)
        stored: list[str] = []
        virtual = 0
        deadline = asyncio.get_running_loop().time() + self._limits.convert_timeout
        try:
            for uuid, t in self._targets.items():
                try:
                    async with asyncio.timeout_at(deadline):
                        virtual = await self._convert_into(t)
                except TimeoutError:
                    raise IntakeFailed(f"converting the {self.detected} image took longer than "
                                       f"{self._limits.convert_timeout:g} s (image_convert_timeout)") from None
                except (CephError, qemu.ConvertError) as e:
                    if isinstance(e, qemu.ConvertError):
                        raise IntakeFailed(f"the {self.detected} image cannot be read: {e}") from None
                    self._failures[uuid] = e
                    w = self._writers.pop(uuid, None)
                    if w is not None:
                        await self._abort_writer(uuid, w, e)
                    continue
                stored.append(uuid)
        finally:
            await self._drop_staging()
        if not stored:
            raise IntakeFailed("every backup storage failed to write the image", dict(self._failures))
        return IntakeResult(self.detected, virtual, self.received, stored, dict(self._failures),
                            self._verified)

    async def _convert_into(self, t: Target) -> int:
        assert self._staged_path is not None and self.detected is not None
        async with qemu.RawReader(self._staged_path, self.detected, limits=self._limits.qemu) as reader:
            if reader.size != self._virtual_size:  # the header said one size, qemu another
                raise ImageRefused(f"the image is refused: qemu reads a virtual size of {reader.size} "
                                   f"bytes, its header says {self._virtual_size}")
            w = ImageWriter(t.cluster, t.pool, self.image_uuid, size=reader.size, checksums=False)
            self._writers[t.backup_storage_uuid] = w
            async with w:
                async for piece in reader.chunks():
                    await w.write(piece)
                    if self._progress:
                        await self._progress(CONVERTING, reader.read, reader.size)
            del self._writers[t.backup_storage_uuid]
            self._committed.append(t)
            return reader.size

    async def _drop_staging(self) -> None:
        staged, self._staged = self._staged, None
        if staged is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(staged.close)
        path, self._staged_path = self._staged_path, None
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(path.unlink)

