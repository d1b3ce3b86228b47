"""Stream a byte range of an RBD image with a few ``aio_read`` ahead.

Objects the object map says do not exist are zeros without a read, so a thin image
streams at memory speed through its holes.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import rbd

from imgstore.ceph._calls import RadosSource, call, from_errno, host_of, open_ioctx
from imgstore.ceph.exceptions import CephCommandFailed
from imgstore.ceph.rbd._common import CHUNK_SIZE, InFlight, MiB, aio, submit_quietly, trim_soon, zero_block

__all__ = ["READ_AHEAD", "iter_image", "read_range"]

READ_AHEAD = 3
"""Reads in flight ahead of the consumer of iter_image."""
_PLAN_AHEAD = 64  # pieces (holes included) iter_image looks ahead at most
_MAP_SPAN = 4096 * MiB  # bytes of an image's object map asked at once (1024 objects)


async def iter_image(
    cluster: RadosSource,
    pool: str,
    name: str,
    start: int = 0,
    end: int | None = None,
    chunk: int = CHUNK_SIZE,
    readahead: int = READ_AHEAD,
) -> AsyncGenerator[bytes, None]:
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
    ioctx, image, size = await open_read_only(cluster, pool, name)
    inflight = InFlight()  # the reads and the object map's calls: the image closes after them
    pending: deque[tuple[int, int, asyncio.Future[Any] | None]] = deque()
    try:
        if start > size:
            raise ValueError(f"range start {start} is beyond the image size {size}")
        plan = _ReadPlan(cluster, pool, name, image, inflight, start,
                         size if end is None else min(end, size), chunk)
        reads = 0  # of the pending pieces, those read from the OSDs

        async def fill() -> None:  # keep the window full before handing data out
            nonlocal reads
            while reads < readahead and len(pending) < _PLAN_AHEAD:
                piece = await plan.next()
                if piece is None:
                    return
                off, length, has_data = piece
                fut = inflight.track(aio(cluster, loop, image.aio_read, off, length)) if has_data else None
                reads += has_data
                pending.append((off, length, fut))

        await fill()
        while pending:
            off, length, fut = pending[0]
            if fut is None:
                pending.popleft()
                data = zero_block(length) if length == chunk else bytes(length)
            else:
                # shielded: a consumer cancelled here must not cancel the read's task,
                # which close_reader waits for before it closes the image under librbd
                rv, data = await asyncio.shield(fut)
                pending.popleft()
                reads -= 1
                if rv < 0:
                    raise from_errno(-rv, f"read image {pool}/{name} at {off}", cluster, pool, name)
                if len(data) != length:
                    raise CephCommandFailed(
                        f"read image {pool}/{name} at {off}: {len(data)} of {length} bytes",
                        host_of(cluster))
            await fill()
            yield data
    finally:
        await asyncio.shield(close_reader(cluster, pool, name, ioctx, image, inflight))


class _ReadPlan:
    """The pieces of ``[start, stop)`` to stream, each with whether it may hold data.

    The object map is asked (``diff_iterate``, whole objects: no OSD read but the map's)
    for _MAP_SPAN bytes at a time, as the stream gets there. An image without a valid
    fast-diff map is read in full.
    """

    def __init__(self, cluster: RadosSource, pool: str, name: str, image: Any, inflight: InFlight,
                 start: int, stop: int, chunk: int) -> None:
        self._cluster = cluster
        self._inflight = inflight
        self._where = pool, name
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
            found = await self._inflight.call(self._cluster, functools.partial(_allocated, self._image,
                                                                               self._known_to, hi),
                                              "map the objects of an image", *self._where)
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


async def open_read_only(cluster: RadosSource, pool: str, name: str) -> tuple[Any, Any, int]:
    """Open the image read-only: ``(ioctx, image, size)``; the caller closes them.

    If the caller is cancelled while the pool thread opens it, the handles are closed
    when the thread is done, not leaked.
    """

    def open_() -> tuple[Any, Any, int]:
        ioctx = open_ioctx(cluster, pool)
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
        call(cluster, open_, f"open image {pool}/{name}", pool, name, timeout=None))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(functools.partial(_close_abandoned, cluster))
        raise


def _close_abandoned(cluster: RadosSource, opening: asyncio.Future[tuple[Any, Any, int]]) -> None:
    if opening.cancelled() or opening.exception() is not None:
        return
    ioctx, image, _ = opening.result()
    submit_quietly(cluster, lambda: (image.close(), ioctx.close()))



async def close_reader(cluster: RadosSource, pool: str, name: str, ioctx: Any, image: Any,
                       inflight: InFlight | None = None) -> None:
    """Close what :func:`open_read_only` opened, once the calls ``inflight`` on the image
    are done (aio cannot be cancelled: it lands first)."""
    if inflight is not None:
        await inflight.drain()

    def close() -> None:
        try:
            image.close()
        finally:
            ioctx.close()

    await call(cluster, close, f"close image {pool}/{name}", pool, name, timeout=None)
    trim_soon(cluster)

