"""The bits of images: RBD format-2 images in a pool, written and read as streams.

DESIGN decision 6: an image is an RBD image named by the image uuid in the storage's
pool. This module is the write path and the read path of those images, and nothing else
(no HTTP, no database):

* :class:`ImageWriter` streams bytes of any chunking into a new image: re-chunked to the
  RBD object size, several ``aio_write`` in flight under a bounded window (memory stays
  bounded whatever the producer does), all-zero pieces skipped (thin images), md5 and
  sha512 computed in the cluster's thread pool while the writes fly, the size checked at
  the end. A failed, aborted or cancelled write removes the image: nothing is left behind.
* :func:`iter_image` streams a byte range of an image with a few ``aio_read`` ahead;
  objects the object map says do not exist are zeros without a read.
* :func:`image_size`, :func:`list_images`, :func:`remove_image` for the rest.

Every call takes the storage's handle (:class:`imgstore.ceph.Cluster`, or anything with
the same ``handle`` and ``executor``, see :class:`RadosSource`). Blocking librbd calls run
in its bounded executor; ``aio_*`` completions come back to the event loop through
``call_soon_threadsafe``. The event loop never blocks on Ceph.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any, NamedTuple, Protocol, TypeVar

import rados
import rbd

from imgstore import memory
from imgstore.ceph.exceptions import (
    CephCommandFailed,
    CephError,
    CephPermissionDenied,
    CephTimeout,
    ClusterUnreachable,
    ImageBusy,
    ImageExists,
    ImageNoSpace,
    ImageNotFound,
    ImageSizeMismatch,
    PoolNotFound,
)

__all__ = [
    "CHUNK_SIZE",
    "ImageWriter",
    "RadosSource",
    "WriteResult",
    "image_size",
    "iter_image",
    "list_images",
    "read_range",
    "remove_image",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

MiB = 1 << 20
CHUNK_SIZE = 4 * MiB
"""RBD object size of new images, and the unit of writes and reads."""
WRITE_WINDOW = 3
"""Chunks a writer holds at most (being written or hashed): 3 x 4 MiB, and librbd holds a
copy of each one in flight. An upload is CPU-bound here (md5 + sha512 of every byte on
2 cores): 3 in flight upload as fast as 4, 8 or 12, and each one more costs 8 MiB of RSS
(an idle ``imgstore serve`` is ~155 MiB; the bar is < 200 MiB during an upload: measured
peak 183 MiB for a thin image, 196-200 for random data with 3; 188 and 208 with 4)."""
READ_AHEAD = 3
"""Reads in flight ahead of the consumer of iter_image."""
_PLAN_AHEAD = 64  # pieces (holes included) iter_image looks ahead at most
_MAP_SPAN = 4096 * MiB  # bytes of an image's object map asked at once (1024 objects)
ZERO_GRAIN = 64 * 1024
"""Zero runs shorter than this inside a chunk are written, longer ones skipped."""
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

_CALL_TIMEOUT = 120.0  # last resort: librados' own op timeouts (cluster.py) come first
_REMOVE_RETRIES = 3
_HASH_BATCH = 4  # chunks a hash job takes before letting other pool work in


# ---------------------------------------------------------------------- handle


class RadosSource(Protocol):
    """What this module needs of a storage's handle; :class:`Cluster` is one."""

    @property
    def handle(self) -> Any:  # a connected rados.Rados
        ...

    @property
    def executor(self) -> Executor:
        ...


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
    ) -> None:
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
        self._lanes: list[_HashLane] = []
        self._state = "new"  # new -> open -> committed | aborted
        self._ioctx: Any = None
        self._image: Any = None
        self._created = False
        self._image_size = 0
        self._offset = 0  # image offset of the chunk being filled
        self._fill: bytearray | None = None
        self._fill_len = 0
        self._spare: list[bytearray] = []
        self._slots = asyncio.Semaphore(max(1, window))
        self._inflight: set[asyncio.Task[None]] = set()  # chunks and image calls under way
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
            self._ioctx = _open_ioctx(self._cluster, self.pool)
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
            self._lanes = [_HashLane(hashlib.md5(), self._cluster.executor, loop),
                           _HashLane(hashlib.sha512(), self._cluster.executor, loop)]

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Accept the next piece of the stream, of any size; waits while the window is full."""
        self._check_open()
        try:
            await self._accept(data)
        except BaseException:
            await self._shielded_cleanup()
            raise

    async def commit(self) -> WriteResult:
        """Wait for every write, flush, check the size; returns ``(size, md5, sha512)``."""
        self._check_open()
        try:
            if self._fill_len:
                last = memoryview(self._fill if self._fill is not None else _zero_block(self._chunk))
                await self._submit(bytes(last[: self._fill_len]), None)
                self._fill, self._fill_len = None, 0
            await self._drain()
            self._raise_pending_error()
            size = self.received
            if self.expected_size is not None and size != self.expected_size:
                raise ImageSizeMismatch(f"{self._what}: got {size} bytes, "
                                        f"{self.expected_size} were announced", _host(self._cluster))

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
        if self._state == "committed":
            raise RuntimeError(f"{self!r} is committed; remove the image instead")
        await self._shielded_cleanup()

    # ------------------------------------------------------------ write pipeline

    async def _accept(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
        n = len(view)
        self.received += n
        if self.expected_size is not None and self.received > self.expected_size:
            raise ImageSizeMismatch(f"{self._what}: more than the announced "
                                    f"{self.expected_size} bytes", _host(self._cluster))
        chunk = self._chunk
        if n == chunk and not self._fill_len and isinstance(data, bytes):
            await self._submit(data, None)  # aligned and immutable: no copy
            return
        # While the chunk being filled is zeros so far it has no buffer: pieces of zeros
        # (a memcmp says so) only move _fill_len, and the chunk goes out as the shared
        # zero block. Thin images then cost no copy and no buffer for their holes.
        searchable = isinstance(data, (bytes, bytearray))  # memcmp in place; memoryviews are copied
        zeros = memoryview(_zero_block(chunk))
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
                    await self._submit(_zero_block(chunk), None)
                else:
                    await self._submit(buf, buf)

    async def _submit(self, data: bytes | bytearray, recycle: bytearray | None) -> None:
        """Start writing and hashing one chunk at the current offset (waits for a slot)."""
        await self._slots.acquire()
        try:
            self._raise_pending_error()
            offset, end = self._offset, self._offset + len(data)
            self._offset = end
            runs = _data_runs(data, self._chunk)
            if runs and end > self._image_size:
                await self._grow(end)
        except BaseException:
            self._slots.release()
            raise
        loop = asyncio.get_running_loop()
        aio_write = self._image.aio_write
        pending = [_aio(self._cluster, loop, aio_write,
                        data if b - a == len(data) else data[a:b], offset + a)
                   for a, b in runs]
        pending += [lane.feed(data) for lane in self._lanes]
        task = loop.create_task(self._retire(offset, pending, recycle))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _retire(self, offset: int, pending: list[asyncio.Future[Any]],
                      recycle: bytearray | None) -> None:
        """When a chunk is written and hashed: note any error, reuse its buffer, free its slot."""
        try:
            for r in await asyncio.gather(*pending, return_exceptions=True):
                if self._error is None and isinstance(r, BaseException):
                    self._error = _translate(r, f"write {self._what}", self._cluster,
                                             self.pool, self.name)
                elif self._error is None and isinstance(r, int) and r < 0:
                    self._error = _from_errno(-r, f"write {self._what} at {offset}", self._cluster)
            if recycle is not None and self._state == "open":
                self._spare.append(recycle)
        finally:
            self._slots.release()

    async def _grow(self, end: int) -> None:
        """Unknown size: make room for ``end`` bytes, doubling (Glance bug 1792710)."""
        size = self._image_size
        new = max(end, min(max(size * 2, GROW_MIN), size + GROW_MAX_STEP))
        await self._image_op(lambda: self._image.resize(new), f"resize {self._what}")
        self._image_size = new

    async def _image_op(self, fn: Callable[[], None], what: str) -> None:
        """A blocking call on the image that cleanup waits for, even if we are cancelled.

        (Closing an image while a pool thread is still inside a call on it is unsafe.)
        librados' op timeouts bound it, so no wait_for here.
        """
        task = asyncio.get_running_loop().create_task(
            _call(self._cluster, fn, what, self.pool, self.name, timeout=None))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        await asyncio.shield(task)

    async def _drain(self) -> None:
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"{self!r} is not open")

    # ------------------------------------------------------------ cleanup

    async def _shielded_cleanup(self) -> None:
        if self._state == "committed":
            return
        self._state = "aborted"
        if self._cleanup is None:
            self._cleanup = asyncio.get_running_loop().create_task(self._remove_partial())
        await asyncio.shield(self._cleanup)

    async def _remove_partial(self) -> None:
        """Wait for in-flight I/O (aio cannot be cancelled), close, remove the image."""
        await self._drain()
        self._fill, self._spare = None, []
        image, self._image = self._image, None
        try:
            if image is not None:
                await _call(self._cluster, image.close, f"close {self._what}", self.pool,
                            self.name, timeout=None)
            if self._created:
                await self._remove_created()
        finally:
            await self._close_ioctx()

    async def _remove_created(self) -> None:
        remove = functools.partial(rbd.RBD().remove, self._ioctx, self.name)
        for attempt in range(_REMOVE_RETRIES):
            try:
                await _call(self._cluster, remove, f"remove the partial {self._what}",
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
        """Close the pool's context, then hand the stream's freed buffers back to the OS."""
        ioctx, self._ioctx = self._ioctx, None
        if ioctx is not None:
            await _call(self._cluster, ioctx.close, "close ioctx", self.pool)
        _submit_quietly(self._cluster, memory.trim_heap)


class _HashLane:
    """Feeds chunks to one hash object in order, in the pool's threads, off the loop.

    One job at a time per lane, working through what is queued, at most _HASH_BATCH
    chunks per job before it queues itself again so other work in the pool gets a turn.
    md5 and sha512 are two lanes: they run in parallel on two cores.
    """

    def __init__(self, h: Any, executor: Executor, loop: asyncio.AbstractEventLoop) -> None:
        self._h = h
        self._executor = executor
        self._loop = loop
        self._queue: deque[tuple[bytes | bytearray, asyncio.Future[None]]] = deque()
        self._lock = threading.Lock()
        self._running = False

    def feed(self, data: bytes | bytearray) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self._loop.create_future()
        with self._lock:
            self._queue.append((data, fut))
            if self._running:
                return fut
            self._running = True
        self._schedule()
        return fut

    def hexdigest(self) -> str:
        return str(self._h.hexdigest())

    def _schedule(self) -> None:
        try:
            job = self._executor.submit(self._work)
        except RuntimeError as e:  # the pool is shut down (Cluster.close)
            self._fail_all(e)
            return
        job.add_done_callback(lambda j: j.cancelled() and self._fail_all(
            ClusterUnreachable("the cluster handle was closed while hashing")))

    def _work(self) -> None:
        for _ in range(_HASH_BATCH):
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                data, fut = self._queue.popleft()
            error: BaseException | None = None
            try:
                self._h.update(data)
            except BaseException as e:  # noqa: BLE001 - handed to the waiting future
                error = e
            del data  # the chunk may be reused once its future is resolved
            _resolve_threadsafe(self._loop, fut, None, error)
        self._schedule()

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            items, self._queue, self._running = list(self._queue), deque(), False
        for _, fut in items:
            _resolve_threadsafe(self._loop, fut, None, error)


def _data_runs(data: bytes | bytearray, chunk: int) -> list[tuple[int, int]]:
    """``[start, end)`` runs of ``data`` worth writing: all of it but aligned zero grains.

    Only memcmp against a shared zero buffer, which stops at the first byte that is not
    zero: random data costs one compare per grain (a few bytes each), zeros are read once
    at memory speed. No copy, no substring search.
    """
    n = len(data)
    zero = _zero_block(chunk)
    if data == (zero if n == chunk else zero[:n]):
        return []
    if n <= ZERO_GRAIN:
        return [(0, n)]
    grain = _zero_block(ZERO_GRAIN)
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for pos in range(0, n - ZERO_GRAIN + 1, ZERO_GRAIN):
        if data.startswith(grain, pos):  # memcmp of one grain, in place
            if start is not None:
                runs.append((start, pos))
                start = None
        elif start is None:
            start = pos
    tail = n - n % ZERO_GRAIN if n % ZERO_GRAIN else n
    if tail < n and start is None:
        start = tail
    if start is not None:
        runs.append((start, n))
    return runs


@functools.lru_cache(maxsize=4)
def _zero_block(size: int) -> bytes:
    return bytes(size)


# ---------------------------------------------------------------------- reader


async def iter_image(
    cluster: RadosSource,
    pool: str,
    name: str,
    start: int = 0,
    end: int | None = None,
    chunk: int = CHUNK_SIZE,
    readahead: int = READ_AHEAD,
) -> AsyncIterator[bytes]:
    """Yield bytes ``[start, end)`` of image ``pool/name`` (``end=None``: to its end).

    Pieces are aligned to ``chunk`` (the object size) after the first one, with
    ``readahead`` reads in flight. Pieces where the image has no object (its object map
    says so: fast-diff) are not read at all: they are a shared buffer of zeros, so a
    thin image streams at memory speed through its holes. ``start`` beyond the size
    raises ValueError; ``end`` beyond it is clipped.
    """
    if start < 0 or (end is not None and end < start) or chunk <= 0:
        raise ValueError(f"bad range [{start}, {end}) or chunk {chunk}")
    loop = asyncio.get_running_loop()
    ioctx, image, size = await _open_read_only(cluster, pool, name)
    pending: deque[tuple[int, int, asyncio.Future[Any] | None]] = deque()
    try:
        if start > size:
            raise ValueError(f"range start {start} is beyond the image size {size}")
        plan = _ReadPlan(cluster, image, start, size if end is None else min(end, size), chunk)
        reads = 0  # of the pending pieces, those read from the OSDs

        async def fill() -> None:  # keep the window full before handing data out
            nonlocal reads
            while reads < readahead and len(pending) < _PLAN_AHEAD:
                piece = await plan.next()
                if piece is None:
                    return
                off, length, has_data = piece
                fut = _aio(cluster, loop, image.aio_read, off, length) if has_data else None
                reads += has_data
                pending.append((off, length, fut))

        await fill()
        while pending:
            off, length, fut = pending[0]
            if fut is None:
                pending.popleft()
                data = _zero_block(length) if length == chunk else bytes(length)
            else:
                rv, data = await fut
                pending.popleft()
                reads -= 1
                if rv < 0:
                    raise _from_errno(-rv, f"read image {pool}/{name} at {off}", cluster)
                if len(data) != length:
                    raise CephCommandFailed(
                        f"read image {pool}/{name} at {off}: {len(data)} of {length} bytes",
                        _host(cluster))
            await fill()
            yield data
    finally:
        await asyncio.shield(
            _close_reader(cluster, pool, name, ioctx, image,
                          [f for _, _, f in pending if f is not None]))


class _ReadPlan:
    """The pieces of ``[start, stop)`` to stream, each with whether it may hold data.

    The object map is asked (``diff_iterate``, whole objects: no OSD read but the map's)
    for _MAP_SPAN bytes at a time, as the stream gets there. An image without a valid
    fast-diff map is read in full.
    """

    def __init__(self, cluster: RadosSource, image: Any, start: int, stop: int, chunk: int) -> None:
        self._cluster = cluster
        self._image = image
        self._pieces = _read_extents(start, stop, chunk)
        self._stop = stop
        self._known_to = start  # the data map is known up to here
        self._data: deque[tuple[int, int]] = deque()  # [a, b) that hold data, ascending
        self._mapped = True  # False: no usable map, everything is read

    async def next(self) -> tuple[int, int, bool] | None:
        piece = next(self._pieces, None)
        if piece is None:
            return None
        off, length = piece
        end = off + length
        if self._mapped and end > self._known_to:
            hi = min(self._stop, max(end, self._known_to + _MAP_SPAN))
            found = await _call(self._cluster, functools.partial(_allocated, self._image,
                                                                 self._known_to, hi),
                                "map the objects of an image", timeout=None)
            if found is None:
                self._mapped = False
            else:
                self._data.extend(found)
                self._known_to = hi
        if not self._mapped:
            return off, length, True
        while self._data and self._data[0][1] <= off:
            self._data.popleft()
        return off, length, bool(self._data) and self._data[0][0] < end


def _allocated(image: Any, start: int, stop: int) -> list[tuple[int, int]] | None:
    """``[a, b)`` ranges of ``[start, stop)`` inside objects that exist (parent's too);
    None when the image has no valid fast-diff object map to tell."""
    if not image.features() & rbd.RBD_FEATURE_FAST_DIFF or image.flags() & (
            rbd.RBD_FLAG_FAST_DIFF_INVALID | rbd.RBD_FLAG_OBJECT_MAP_INVALID):
        return None
    found: list[tuple[int, int]] = []

    def seen(off: int, length: int, exists: bool) -> int:
        if exists:
            if found and found[-1][1] == off:
                found[-1] = (found[-1][0], off + length)
            else:
                found.append((off, off + length))
        return 0

    image.diff_iterate(start, stop - start, None, seen, include_parent=True, whole_object=True)
    return found


async def read_range(cluster: RadosSource, pool: str, name: str, offset: int, length: int) -> bytes:
    """Bytes ``[offset, offset + length)`` of the image (clipped to its size)."""
    parts = [p async for p in iter_image(cluster, pool, name, offset, offset + length)]
    return b"".join(parts)


def _read_extents(start: int, stop: int, chunk: int) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` pieces of ``[start, stop)``, aligned to ``chunk`` after the first."""
    off = start
    while off < stop:
        nxt = min(stop, (off // chunk + 1) * chunk)
        yield off, nxt - off
        off = nxt


async def _open_read_only(cluster: RadosSource, pool: str, name: str) -> tuple[Any, Any, int]:
    """Open the image read-only: ``(ioctx, image, size)``; the caller closes them.

    If the caller is cancelled while the pool thread opens it, the handles are closed
    when the thread is done, not leaked.
    """

    def open_() -> tuple[Any, Any, int]:
        ioctx = _open_ioctx(cluster, pool)
        try:
            image = rbd.Image(ioctx, name, read_only=True)
            try:
                return ioctx, image, image.size()
            except BaseException:
                image.close()
                raise
        except BaseException:
            ioctx.close()
            raise

    opening = asyncio.ensure_future(
        _call(cluster, open_, f"open image {pool}/{name}", pool, name, timeout=None))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(functools.partial(_close_abandoned, cluster))
        raise


def _close_abandoned(cluster: RadosSource, opening: asyncio.Future[tuple[Any, Any, int]]) -> None:
    if opening.cancelled() or opening.exception() is not None:
        return
    ioctx, image, _ = opening.result()
    _submit_quietly(cluster, lambda: (image.close(), ioctx.close()))


def _submit_quietly(cluster: RadosSource, fn: Callable[[], Any]) -> None:
    try:
        cluster.executor.submit(fn)
    except RuntimeError:  # pool shut down: the handle is going away with everything on it
        pass


async def _close_reader(cluster: RadosSource, pool: str, name: str, ioctx: Any, image: Any,
                        pending: list[asyncio.Future[Any]]) -> None:
    if pending:  # aio cannot be cancelled: let it land before closing the image
        await asyncio.gather(*pending, return_exceptions=True)

    def close() -> None:
        try:
            image.close()
        finally:
            ioctx.close()

    await _call(cluster, close, f"close image {pool}/{name}", pool, name, timeout=None)


# ---------------------------------------------------------------------- management


async def image_size(cluster: RadosSource, pool: str, name: str) -> int:
    """The provisioned size of the image in bytes."""
    ioctx, image, size = await _open_read_only(cluster, pool, name)
    await _close_reader(cluster, pool, name, ioctx, image, [])
    return size


async def list_images(cluster: RadosSource, pool: str) -> list[str]:
    """Names of the RBD images in the pool (not those in its trash)."""

    def list_() -> list[str]:
        ioctx = _open_ioctx(cluster, pool)
        try:
            return sorted(rbd.RBD().list(ioctx))
        finally:
            ioctx.close()

    return await _call(cluster, list_, f"list images of pool {pool}", pool)


async def remove_image(cluster: RadosSource, pool: str, name: str, *,
                       purge_snapshots: bool = False, missing_ok: bool = False) -> None:
    """Remove the image; ImageBusy (never a silent leak) when it is in use.

    Busy means: another client has it open for writing (watchers), or it has clones
    (children of a snapshot, in this or another pool), or snapshots and
    ``purge_snapshots`` is false. With ``purge_snapshots`` snapshots without clones
    are unprotected and removed first, and only once nothing else stands in the way.

    librbd does not see readers (read-only opens, e.g. an :func:`iter_image` export in
    progress): whoever serves exports must keep track of them itself.
    """

    def remove() -> None:
        ioctx = _open_ioctx(cluster, pool)
        try:
            try:
                snaps = _check_removable(ioctx, pool, name, purge_snapshots, cluster)
            except rbd.ImageNotFound:
                if missing_ok:
                    return
                raise
            if snaps:
                _purge_snapshots(ioctx, name, snaps)
            try:
                rbd.RBD().remove(ioctx, name)
            except rbd.ImageBusy:
                raise ImageBusy(f"image {pool}/{name} is open by another client (it has watchers)",
                                _host(cluster)) from None
            except rbd.ImageHasSnapshots:
                raise ImageBusy(f"image {pool}/{name} has snapshots kept by clones (in the trash)",
                                _host(cluster)) from None
            except rbd.ImageNotFound:
                if not missing_ok:
                    raise
        finally:
            ioctx.close()

    await _call(cluster, remove, f"remove image {pool}/{name}", pool, name, timeout=None)


def _check_removable(ioctx: Any, pool: str, name: str, purge: bool,
                     cluster: RadosSource) -> list[str]:
    """ImageBusy unless the image may go; the snapshots to purge first. Changes nothing.

    Looks through a read-only open, which registers no watcher of its own.
    """
    image = rbd.Image(ioctx, name, read_only=True)
    try:
        if list(image.watchers_list()):
            raise ImageBusy(f"image {pool}/{name} is open by another client (it has watchers)",
                            _host(cluster))
        snaps = [s["name"] for s in image.list_snaps()]
        clones = []
        for snap in snaps:
            image.set_snap(snap)
            clones += [f"{c['pool']}/{c['image']}" for c in image.list_children2()]
        if clones:
            raise ImageBusy(f"image {pool}/{name} has clones: {', '.join(sorted(clones))}",
                            _host(cluster))
        if snaps and not purge:
            marked = [f"{s} (protected)" if image.is_protected_snap(s) else s for s in snaps]
            raise ImageBusy(f"image {pool}/{name} has snapshots: {', '.join(marked)}",
                            _host(cluster))
        return snaps
    finally:
        image.close()


def _purge_snapshots(ioctx: Any, name: str, snaps: list[str]) -> None:
    image = rbd.Image(ioctx, name)
    try:
        for snap in snaps:
            if image.is_protected_snap(snap):
                image.unprotect_snap(snap)
            image.remove_snap(snap)
    finally:
        image.close()


# ---------------------------------------------------------------------- plumbing


def _open_ioctx(cluster: RadosSource, pool: str) -> Any:
    try:
        return cluster.handle.open_ioctx(pool)
    except rados.ObjectNotFound:
        raise PoolNotFound(f"pool[{pool}] does not exist in the ceph cluster", _host(cluster)) from None


def _completion(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.Future[Any], Callable[..., None]]:
    """A future and the rbd aio callback that resolves it (called in librbd's thread).

    The result is the completion's return value, or ``(return value, data)`` for an
    ``aio_read``, whose callback also gets the bytes read (None on error).
    """
    fut: asyncio.Future[Any] = loop.create_future()

    def callback(completion: Any, *data: Any) -> None:
        rv = completion.get_return_value()
        _resolve_threadsafe(loop, fut, (rv, data[0] or b"") if data else rv)

    return fut, callback


def _resolve_threadsafe(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], result: Any,
                        error: BaseException | None = None) -> None:
    """Settle ``fut`` from any thread (a no-op once it is done or the loop is closed)."""

    def settle() -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


def _aio(cluster: RadosSource, loop: asyncio.AbstractEventLoop, method: Callable[..., Any],
         *args: Any) -> asyncio.Future[Any]:
    """Start an rbd ``aio_*`` call; a future of its completion's result.

    The call is made from a pool thread, not the loop: librados may block the caller
    when its in-flight throttle is full, and librbd copies the data to write there.
    """
    done, callback = _completion(loop)
    try:
        submitted = loop.run_in_executor(cluster.executor, method, *args, callback)
    except RuntimeError:  # the pool was shut down by Cluster.close()
        done.set_exception(ClusterUnreachable("the cluster handle is closed", _host(cluster)))
        return done
    return asyncio.ensure_future(_after_submit(submitted, done))


async def _after_submit(submitted: asyncio.Future[Any], done: asyncio.Future[Any]) -> Any:
    """The aio result once both the submission (in a thread) and the completion happened.

    If the submission itself failed, librbd will never call back: the error is the result.
    """
    await submitted
    return await done


async def _call(cluster: RadosSource, fn: Callable[[], T], what: str, pool: str | None = None,
                name: str | None = None, timeout: float | None = _CALL_TIMEOUT) -> T:
    """Run blocking ``fn`` in the cluster's pool, with rados/rbd errors translated."""
    loop = asyncio.get_running_loop()
    try:
        future = loop.run_in_executor(cluster.executor, fn)
    except RuntimeError:  # the pool was shut down by Cluster.close()
        raise ClusterUnreachable("the cluster handle is closed", _host(cluster)) from None
    try:
        if timeout is None:
            return await future
        return await asyncio.wait_for(future, timeout)
    except (asyncio.TimeoutError, TimeoutError):
        raise CephTimeout(f"{what} timed out after {timeout:g}s", _host(cluster)) from None
    except CephError:
        raise
    except (rados.Error, rbd.Error) as e:
        raise _translate(e, what, cluster, pool, name) from None


def _translate(e: BaseException, what: str, cluster: RadosSource, pool: str | None,
               name: str | None) -> CephError:
    if isinstance(e, CephError):
        return e
    host = _host(cluster)
    where = f"{pool}/{name}" if name else f"pool {pool}"
    if isinstance(e, rbd.ImageNotFound):
        return ImageNotFound(f"image {where} does not exist", host)
    if isinstance(e, rbd.ImageExists):
        return ImageExists(f"image {where} already exists", host)
    if isinstance(e, (rbd.ImageBusy, rbd.ImageHasSnapshots)):
        return ImageBusy(f"image {where} is in use: {e}", host)
    if isinstance(e, rados.ObjectNotFound) and name is None and pool is not None:
        return PoolNotFound(f"pool[{pool}] does not exist in the ceph cluster", host)
    code = getattr(e, "errno", None)
    if isinstance(e, (rbd.NoSpace, rados.NoSpace)):
        code = errno.ENOSPC
    return _from_errno(code if isinstance(code, int) else 0, f"{what} failed: {e or type(e).__name__}",
                       cluster)


def _from_errno(code: int, message: str, cluster: RadosSource) -> CephError:
    host = _host(cluster)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return ImageNoSpace(f"{message}: the pool is full", host)
    if code in (errno.ETIMEDOUT, errno.EINTR):
        return CephTimeout(message, host)
    if code in (errno.EACCES, errno.EPERM):
        return CephPermissionDenied(message, host)
    if code in (errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNREFUSED):
        return ClusterUnreachable(message, host)
    if code == errno.ENOENT:
        return ImageNotFound(message, host)
    return CephCommandFailed(f"{message} ({errno.errorcode.get(code, code)})" if code else message, host)


def _host(cluster: RadosSource) -> str | None:
    return getattr(cluster, "mon_host", None) or getattr(cluster, "_mon_host", None)
