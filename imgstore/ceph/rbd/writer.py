"""Stream bytes into a new RBD image (DESIGN decision 6: an image is an RBD image named by
the image uuid in the storage's pool), all or nothing.

:class:`ImageWriter` takes bytes of any chunking: re-chunked to the RBD object size,
several ``aio_write`` in flight under a bounded window (memory stays bounded whatever the
producer does), all-zero pieces skipped (thin images), md5 and sha512 computed in the
cluster's thread pool while the writes fly (:mod:`.hashing`), the size checked at the
end. A failed, aborted or cancelled write removes the image: nothing is left behind.

A writer can also stop without removing what it wrote (:meth:`ImageWriter.detach`, when
the server stops mid-upload) and a new one continue it (:meth:`ImageWriter.reopen`) from
:attr:`ImageWriter.durable`: the bytes every write below which the OSDs acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import rados
import rbd

from imgstore.ceph._calls import RadosSource, call, from_errno, host_of, open_ioctx, translate
from imgstore.ceph.exceptions import CephError, ImageBusy, ImageNotFound, ImageSizeMismatch
from imgstore.ceph.rbd._common import CALL_TIMEOUT, CHUNK_SIZE, InFlight, MiB, aio, trim_soon, zero_block
from imgstore.ceph.rbd.hashing import HashLane
from imgstore.ceph.rbd.window import WriteWindow
from imgstore.ceph.rbd.zeros import SparsePiece, runs_to_write

__all__ = ["FEATURES", "WRITE_WINDOW", "ImageWriter", "WriteResult"]

log = logging.getLogger(__name__)

WRITE_WINDOW = 3
"""Chunks a writer holds at most (being written or hashed); librbd writes from them without
a copy (cluster.py), so each one more costs a chunk of RSS. The README's benchmark table
has the uploads and peak RSS measured with it. A :class:`SparsePiece` holds only its runs:
it takes their share of a chunk (:class:`.window.WriteWindow`)."""
GROW_MIN = 64 * MiB
GROW_MAX_STEP = 8 * 1024 * MiB
"""Unknown size: the image doubles (from GROW_MIN, by at most GROW_MAX_STEP) as data comes."""

# What Glance, Cinder and CloudStack ask for, limited to what this librbd knows.
FEATURES = (
    rbd.RBD_FEATURE_LAYERING
    | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
    | rbd.RBD_FEATURE_OBJECT_MAP
    | rbd.RBD_FEATURE_FAST_DIFF
    | rbd.RBD_FEATURE_DEEP_FLATTEN
) & rbd.RBD_FEATURES_ALL

_REMOVE_RETRIES = 3


class WriteResult(NamedTuple):
    size: int
    md5: str | None
    sha512: str | None


# ---------------------------------------------------------------------- writer


class ImageWriter:
    """Stream bytes into a new RBD image ``pool/name``; all or nothing.

    ::

        async with ImageWriter(cluster, pool, image_uuid, size=content_length) as w:
            async for piece in body:
                await w.write(piece)
        size, md5, sha512 = w.result

    Leaving the block normally commits (or ``await w.commit()`` inside it); an exception
    or a cancellation aborts, and so does any failed ``write``/``commit``: the image is
    removed. ``size=None`` means unknown: the image grows by doubling and is trimmed to
    the bytes received at the end.

    Memory: at most ``window`` chunks are held (being written or hashed) plus the one
    being filled; their buffers are allocated once and reused, and a chunk of zeros
    needs none (it is the shared zero block). One producer only.
    """

    def __init__(
        self,
        cluster: RadosSource,
        pool: str,
        name: str,
        size: int | None = None,
        *,
        chunk_size: int = CHUNK_SIZE,
        window: int = WRITE_WINDOW,
        checksums: bool = True,
        read_back: bool = False,
    ) -> None:
        """``read_back``: the data is read again right behind the writer (a migration's
        check): each write asks its OSD to keep the data in its cache (FADVISE_WILLNEED),
        so the read finds it there, not on the disk the writes go to. BlueStore puts new
        data in its two-queue cache's warm-in list, so a copy passing through does not
        push out what the OSD's readers keep hot."""
        if chunk_size < 4096 or chunk_size & (chunk_size - 1) or chunk_size > 32 * MiB:
            raise ValueError("chunk_size must be a power of two from 4 KiB to 32 MiB")
        if size is not None and size < 0:
            raise ValueError("size must be >= 0 or None")
        self._cluster = cluster
        self.pool = pool
        self.name = name
        self.expected_size = size
        self.received = 0  # bytes accepted by write(): progress
        self.result: WriteResult | None = None
        self._chunk = chunk_size
        self._checksums = checksums
        self._fadvise = rados.LIBRADOS_OP_FLAG_FADVISE_WILLNEED if read_back else 0
        self._lanes: list[HashLane] = []
        self._state = "new"  # new -> open -> committed | aborted
        self._ioctx: Any = None
        self._image: Any = None
        self._created = False
        self._image_size = 0
        self._offset = 0  # image offset of the chunk being filled
        self._fill: bytearray | None = None
        self._fill_len = 0
        self._spare: list[bytearray] = []
        self._window = WriteWindow(window, chunk_size)
        self._inflight = InFlight()  # chunks and image calls under way
        self._unacked: set[int] = set()  # offsets of the chunks written but not acknowledged yet
        self._error: CephError | None = None
        self._cleanup: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"ImageWriter({self.pool}/{self.name}, {self._state}, received={self.received})"

    @property
    def _what(self) -> str:
        return f"image {self.pool}/{self.name}"

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ImageWriter:
        await self.open()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            if self._state == "open":
                await self.commit()
            return
        try:
            await self.abort()
        except CephError as e:  # keep the original exception; the leak is logged
            log.error("could not remove the partial %s: %s", self._what, e)

    async def open(self) -> None:
        """Create the image and open it for writing; ImageExists if the name is taken."""
        if self._state != "new":
            raise RuntimeError(f"{self!r} cannot be opened twice")
        self._state = "open"
        initial = self.expected_size if self.expected_size is not None else 0
        order = self._chunk.bit_length() - 1

        def create_and_open() -> None:
            self._ioctx = open_ioctx(self._cluster, self.pool)
            rbd.RBD().create(self._ioctx, self.name, initial, order=order,
                             old_format=False, features=FEATURES)
            self._created = True
            self._image = rbd.Image(self._ioctx, self.name)

        try:
            await self._image_op(create_and_open, f"create {self._what}")
        except BaseException:
            await self._shielded_cleanup()
            raise
        self._image_size = initial
        if self._checksums:
            loop = asyncio.get_running_loop()
            self._lanes = [HashLane(hashlib.md5(), self._cluster.executor, loop),
                           HashLane(hashlib.sha512(), self._cluster.executor, loop)]

    async def reopen(self, offset: int) -> None:
        """Continue writing the existing image from ``offset`` (a chunk boundary: a
        :attr:`durable` of an earlier writer of it). A failure or abort removes it, as if
        this writer had made it."""
        if self._state != "new":
            raise RuntimeError(f"{self!r} cannot be opened twice")
        if offset % self._chunk or offset < 0:
            raise ValueError(f"offset {offset} is not a multiple of the chunk size {self._chunk}")
        self._state = "open"

        def open_existing() -> int:
            self._ioctx = open_ioctx(self._cluster, self.pool)
            self._created = True  # ours to remove from now on
            self._image = rbd.Image(self._ioctx, self.name)
            return int(self._image.size())

        try:
            self._image_size = await self._image_op(open_existing, f"open {self._what}")
        except BaseException:
            await self._shielded_cleanup()
            raise
        if offset > self._image_size:
            await self._shielded_cleanup()
            raise ImageSizeMismatch(f"{self._what} has {self._image_size} bytes, less than the {offset} "
                                    "to continue from", host_of(self._cluster))
        self.received = self._offset = offset

    @property
    def left_behind(self) -> bool:
        """Aborted, and the image it made could not be removed: it is still in the pool
        (the caller records it as the storage's trash)."""
        return self._state == "aborted" and self._created

    @property
    def durable(self) -> int:
        """Bytes from the start that the OSDs hold: every write below was acknowledged."""
        return min(self._unacked, default=self._offset)

    async def settle(self) -> int:
        """Wait for the writes in flight (not for the chunk being filled): :attr:`durable`."""
        self._check_open()
        await self._inflight.drain()
        self._raise_pending_error()
        return self.durable

    async def detach(self) -> int:
        """Stop writing but keep the image as it stands, for a later :meth:`reopen`:
        wait for the writes in flight, close it; answers :attr:`durable`."""
        durable = await self.settle()
        image, self._image = self._image, None
        self._state, self._created = "detached", False
        self._fill, self._spare = None, []
        try:
            if image is not None:
                await call(self._cluster, image.close, f"close {self._what}", self.pool, self.name, timeout=None)
        finally:
            await self._close_ioctx()
        return durable

    async def write(self, data: bytes | bytearray | memoryview | SparsePiece,
                    release: Callable[[], None] | None = None) -> None:
        """Accept the next piece of the stream, of any size; waits while the window is full.

        A :class:`SparsePiece` that is a whole chunk at a chunk boundary is written by its
        runs, its zeros neither compared nor copied; any other is taken as its bytes.

        With ``release``, ``data`` is lent: a whole chunk at a chunk boundary is written
        straight from it (librbd too writes from it, without a copy: cluster.py) and
        ``release`` is called once the write is done with it;
        any other piece is copied and released at once. ``release`` is called exactly
        once, whatever happens.
        """
        kept = False  # the write in flight holds the lent buffer: it releases it when done
        try:
            self._check_open()
            try:
                kept = await self._accept(data, release)
            except BaseException:
                await self._shielded_cleanup()
                raise
        finally:
            if release is not None and not kept:
                release()

    async def commit(self) -> WriteResult:
        """Wait for every write, flush, check the size; returns ``(size, md5, sha512)``."""
        self._check_open()
        try:
            if self._fill_len:
                last = memoryview(self._fill if self._fill is not None else zero_block(self._chunk))
                await self._submit(bytes(last[: self._fill_len]), None)
                self._fill, self._fill_len = None, 0
            await self._inflight.drain()
            self._raise_pending_error()
            size = self.received
            if self.expected_size is not None and size != self.expected_size:
                raise ImageSizeMismatch(f"{self._what}: got {size} bytes, "
                                        f"{self.expected_size} were announced", host_of(self._cluster))

            def finish() -> None:
                if self._image_size != size:
                    self._image.resize(size)
                self._image.flush()
                self._image.close()

            await self._image_op(finish, f"finish {self._what}")
            self._image = None
        except BaseException:
            await self._shielded_cleanup()
            raise
        self._state = "committed"
        self._fill, self._spare = None, []
        await self._close_ioctx()
        md5, sha512 = (lane.hexdigest() for lane in self._lanes) if self._lanes else (None, None)
        self.result = WriteResult(size, md5, sha512)
        return self.result

    async def abort(self) -> None:
        """Wait for what is in flight, then remove the image. Safe to call twice.

        The cleanup runs to its end even if the awaiting task is cancelled again.
        """
        if self._state in ("committed", "detached"):
            raise RuntimeError(f"{self!r} is {self._state}; remove the image instead")
        await self._shielded_cleanup()

    # ------------------------------------------------------------ write pipeline

    async def _accept(self, data: bytes | bytearray | memoryview | SparsePiece,
                      release: Callable[[], None] | None) -> bool:
        """Take the piece; True when a write in flight holds it (lent: ``release`` is its)."""
        if isinstance(data, SparsePiece) and (len(data) != self._chunk or self._fill_len):
            data = bytes(data)
        if ((release is not None and not isinstance(data, memoryview)) or isinstance(data, (bytes, SparsePiece))) \
                and len(data) == self._chunk and not self._fill_len:
            self._count(len(data))
            await self._submit(data, None, release)  # aligned, and immutable or lent: no copy
            return release is not None
        await self._copy(data)
        return False

    def _count(self, n: int) -> None:
        self.received += n
        if self.expected_size is not None and self.received > self.expected_size:
            raise ImageSizeMismatch(f"{self._what}: more than the announced "
                                    f"{self.expected_size} bytes", host_of(self._cluster))

    async def _copy(self, data: bytes | bytearray | memoryview) -> None:
        """Copy a piece into the chunk being filled, and submit each chunk it completes."""
        view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
        n = len(view)
        self._count(n)
        chunk = self._chunk
        # While the chunk being filled is zeros so far it has no buffer: pieces of zeros
        # (a memcmp says so) only move _fill_len, and the chunk goes out as the shared
        # zero block. Thin images then cost no copy and no buffer for their holes.
        searchable = isinstance(data, (bytes, bytearray))  # memcmp in place; memoryviews are copied
        zeros = memoryview(zero_block(chunk))
        pos = 0
        while pos < n:
            take = min(chunk - self._fill_len, n - pos)
            if self._fill is None and searchable and data.startswith(zeros[:take], pos):
                self._fill_len += take
            else:
                if self._fill is None:
                    self._fill = self._spare.pop() if self._spare else bytearray(chunk)
                    self._fill[:self._fill_len] = zeros[:self._fill_len]  # a reused buffer's old bytes
                self._fill[self._fill_len:self._fill_len + take] = view[pos:pos + take]
                self._fill_len += take
            pos += take
            if self._fill_len == chunk:
                buf, self._fill, self._fill_len = self._fill, None, 0
                if buf is None:
                    await self._submit(zero_block(chunk), None)
                else:
                    await self._submit(buf, buf)

    async def _submit(self, data: bytes | bytearray | SparsePiece, recycle: bytearray | None,
                      release: Callable[[], None] | None = None) -> None:
        """Start writing and hashing one chunk at the current offset (waits for its share
        of the window); ``release`` is called when the chunk's writes are done with
        ``data`` (not when this raises: the caller still holds it then)."""
        share = self._window.share(data.held if isinstance(data, SparsePiece) else len(data))
        await self._window.take(share)
        try:
            self._raise_pending_error()
            offset, end = self._offset, self._offset + len(data)
            self._offset = end
            runs = runs_to_write(data, self._chunk)
            if runs and end > self._image_size:
                await self._grow(end)
        except BaseException:
            self._window.give(share)
            raise
        loop = asyncio.get_running_loop()
        aio_write = functools.partial(self._image.aio_write, fadvise_flags=self._fadvise)
        pieces = [(piece, offset + a) for a, piece in runs]
        pending = [aio(self._cluster, loop, aio_write, piece, at) for piece, at in pieces]
        pending += [lane.feed(bytes(data) if isinstance(data, SparsePiece) else data) for lane in self._lanes]
        if not self._lanes and all(piece is not data for piece, _ in pieces):
            # librbd writes copies of the data runs (or nothing): the chunk's buffer is
            # free now, not when its writes land. A sparse stream then holds its runs in
            # flight, not 4 MiB buffers mostly of zeros (the upload's peak RSS)
            self._give_back(recycle, release)
            recycle = release = None
        self._unacked.add(offset)
        self._inflight.track(loop.create_task(self._retire(offset, share, pending, recycle, release)))

    async def _retire(self, offset: int, share: int, pending: list[asyncio.Future[Any]],
                      recycle: bytearray | None, release: Callable[[], None] | None = None) -> None:
        """When a chunk is written and hashed: note any error, reuse or give back its
        buffer, free its share of the window. librbd writes from the buffer itself (no copy, cluster.py):
        cancelled before its writes complete, this gives the buffer back only once they
        have, so nobody fills it while librbd still sends it."""
        done = asyncio.gather(*pending, return_exceptions=True)
        try:
            results = await asyncio.shield(done)
        except BaseException:
            done.add_done_callback(lambda _: self._free(share, recycle, release))
            raise
        try:
            for r in results:
                if self._error is None and isinstance(r, BaseException):
                    self._error = translate(r, f"write {self._what}", self._cluster,
                                             self.pool, self.name)
                elif self._error is None and isinstance(r, int) and r < 0:
                    self._error = from_errno(-r, f"write {self._what} at {offset}", self._cluster,
                                             self.pool, self.name)
            if self._error is None:
                self._unacked.discard(offset)
        finally:
            self._free(share, recycle, release)

    def _free(self, share: int, recycle: bytearray | None, release: Callable[[], None] | None) -> None:
        """A chunk's writes are over: its buffer is reused or given back, its share freed."""
        self._window.give(share)
        self._give_back(recycle, release)

    def _give_back(self, recycle: bytearray | None, release: Callable[[], None] | None) -> None:
        """A chunk's buffer is no longer read: ours is reused, a lent one given back."""
        if recycle is not None and self._state == "open":
            self._spare.append(recycle)
        if release is not None:
            release()

    async def _grow(self, end: int) -> None:
        """Unknown size: make room for ``end`` bytes, doubling (Glance bug 1792710)."""
        size = self._image_size
        new = max(end, min(max(size * 2, GROW_MIN), size + GROW_MAX_STEP))
        await self._image_op(lambda: self._image.resize(new), f"resize {self._what}")
        self._image_size = new

    async def _image_op(self, fn: Callable[[], Any], what: str) -> Any:
        """A blocking call on the image that cleanup waits for, even if we are cancelled."""
        return await self._inflight.call(self._cluster, fn, what, self.pool, self.name)

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"{self!r} is not open")

    # ------------------------------------------------------------ cleanup

    async def _shielded_cleanup(self) -> None:
        if self._state in ("committed", "detached"):
            return
        self._state = "aborted"
        if self._cleanup is None:
            self._cleanup = asyncio.get_running_loop().create_task(self._remove_partial())
        await asyncio.shield(self._cleanup)

    async def _remove_partial(self) -> None:
        """Wait for in-flight I/O (aio cannot be cancelled), close, remove the image."""
        await self._inflight.drain()
        self._fill, self._spare = None, []
        image, self._image = self._image, None
        try:
            if image is not None:
                await call(self._cluster, image.close, f"close {self._what}", self.pool,
                            self.name, timeout=None)
            if self._created:
                await self._remove_created()
        finally:
            await self._close_ioctx()

    async def _remove_created(self) -> None:
        remove = functools.partial(rbd.RBD().remove, self._ioctx, self.name)
        for attempt in range(_REMOVE_RETRIES):
            try:
                await call(self._cluster, remove, f"remove the partial {self._what}",
                            self.pool, self.name, timeout=None)
                break
            except ImageNotFound:
                break
            except ImageBusy:  # our own watch may take a moment to go
                if attempt == _REMOVE_RETRIES - 1:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
        self._created = False

    async def _close_ioctx(self) -> None:
        """Close the pool's context; the stream's freed buffers go back to the OS soon after."""
        ioctx, self._ioctx = self._ioctx, None
        if ioctx is not None:
            await call(self._cluster, ioctx.close, "close ioctx", self.pool, timeout=CALL_TIMEOUT)
        trim_soon(self._cluster)
