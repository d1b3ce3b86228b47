"""The CRC-32C of an image's objects, computed by the OSDs that hold them (``rados_checksum``).

A copy is verified without bringing its bytes back: the OSD reads each data object of
the image and answers its CRC-32C (CEPH_OSD_OP_CHECKSUM, with a stat of the object in
the same op), which is compared with the CRC-32C of the bytes meant to be there (the
``crc32c`` package, SSE4.2): the OSD still reads each byte (from its cache when the
writes asked it to keep them: ``ImageWriter(read_back=True)``), but none crosses the
network or the client's CPU twice (the figures: the README's benchmark table,
BackupStorageMigrateImage).

Debian's python3-rados 16.2 does not expose the op, and its ``Rados``/``Ioctx`` are Cython
classes whose C pointers Python cannot reach: this module opens a librados handle of its
own with ctypes on the same ``librados.so.2``, with the options of the storage's handle
(its mons, its cephx key passed with ``rados_conf_set``, never through the environment
or a file, its timeouts), and shuts it down in :meth:`ImageChecksums.close`. Its
blocking calls run in the storage's thread pool (:func:`imgstore.ceph._calls.call`).

:func:`available` is False when this librados lacks the calls (the caller then reads
the copy back instead).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import struct
from typing import Any

import crc32c
import rbd

from imgstore.ceph._calls import RadosSource, call, from_errno, host_of, open_ioctx
from imgstore.ceph.exceptions import CephCommandFailed
from imgstore.ceph.rbd._common import CALL_TIMEOUT, CHUNK_SIZE, InFlight, submit_quietly, zero_block

__all__ = ["ImageChecksums", "available"]

_LIBRADOS = "librados.so.2"
_CRC32C = 2  # LIBRADOS_CHECKSUM_TYPE_CRC32C
_CRC_INIT = struct.pack("<I", 0xFFFFFFFF)  # the OSD's seed; it does not invert the result
_ENOENT = 2
_DONTNEED = 0x20  # LIBRADOS_OP_FLAG_FADVISE_DONTNEED: the OSD need not cache what it read to sum
# The options of the storage's handle that the new one takes over (cluster.py sets them).
_COPIED = ("mon_host", "key", "keyring", "client_mount_timeout", "rados_mon_op_timeout",
           "rados_osd_op_timeout", "log_to_stderr", "err_to_stderr")

_p = ctypes.c_void_p
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "rados_create2": (ctypes.c_int, [ctypes.POINTER(_p), ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint64]),
    "rados_conf_set": (ctypes.c_int, [_p, ctypes.c_char_p, ctypes.c_char_p]),
    "rados_connect": (ctypes.c_int, [_p]),
    "rados_shutdown": (None, [_p]),
    "rados_ioctx_create": (ctypes.c_int, [_p, ctypes.c_char_p, ctypes.POINTER(_p)]),
    "rados_ioctx_destroy": (None, [_p]),
    "rados_create_read_op": (_p, []),
    "rados_release_read_op": (None, [_p]),
    "rados_read_op_stat": (None, [_p, ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_int64),
                                  ctypes.POINTER(ctypes.c_int)]),
    "rados_read_op_checksum": (None, [_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64,
                                      ctypes.c_size_t, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
                                      ctypes.POINTER(ctypes.c_int)]),
    "rados_read_op_set_flags": (None, [_p, ctypes.c_int]),
    "rados_read_op_operate": (ctypes.c_int, [_p, _p, ctypes.c_char_p, ctypes.c_int]),
}


@functools.cache
def _lib() -> Any:
    """librados with the calls typed; None when it lacks one of them."""
    try:
        lib = ctypes.CDLL(_LIBRADOS)
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
    except (OSError, AttributeError):
        return None
    return lib


def available() -> bool:
    """Can the OSDs be asked for checksums from this process?"""
    return _lib() is not None


class ImageChecksums:
    """Asks the OSDs whether each data object of one image holds given bytes.

    ::

        sums = await ImageChecksums.open(cluster, pool, name)
        try:
            same = await sums.matches(index, piece)  # object ``index``: bytes [index * 4 MiB, ...)
        finally:
            await sums.close()

    The image has the object size :data:`CHUNK_SIZE` and no striping (ImageWriter makes
    it so); its data objects may be in another pool (``rbd_default_data_pool``).
    """

    def __init__(self, cluster: RadosSource, pool: str, name: str, rados: Any, ioctx: Any, prefix: str) -> None:
        self._cluster = cluster
        self._where = pool, name
        self._rados = rados
        self._ioctx = ioctx
        self._prefix = prefix
        self._inflight = InFlight()  # the op in a pool thread

    @classmethod
    async def open(cls, cluster: RadosSource, pool: str, name: str) -> ImageChecksums:
        """Connect a handle of its own to the cluster of ``cluster`` and find the image's
        objects; ImageNotFound, PoolNotFound, or the connection's errors. A caller
        cancelled meanwhile leaves nothing open: the handle is shut down once made."""
        opening = asyncio.ensure_future(call(cluster, functools.partial(cls._open, cluster, pool, name),
                                             f"open image {pool}/{name} for OSD checksums", pool, name,
                                             timeout=CALL_TIMEOUT))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_abandoned)
            raise

    @classmethod
    def _open(cls, cluster: RadosSource, pool: str, name: str) -> ImageChecksums:
        data_pool, prefix = _layout(cluster, pool, name)
        lib = _lib()
        if lib is None:
            raise CephCommandFailed(f"{_LIBRADOS} has no rados_read_op_checksum", host_of(cluster))
        handle = cluster.handle
        rados = _p()
        _check(lib.rados_create2(ctypes.byref(rados), b"ceph", f"client.{handle.rados_id}".encode(), 0),
               "create a librados handle", cluster)
        try:
            for option in _COPIED:
                value = handle.conf_get(option)
                if value:  # (the message names the option, never its value: one is the key)
                    _check(lib.rados_conf_set(rados, option.encode(), str(value).encode()),
                           f"set {option} of a librados handle", cluster)
            _check(lib.rados_connect(rados), "connect a librados handle", cluster)
            ioctx = _p()
            _check(lib.rados_ioctx_create(rados, data_pool.encode(), ctypes.byref(ioctx)),
                   f"open pool {data_pool}", cluster, data_pool)
        except BaseException:
            lib.rados_shutdown(rados)
            raise
        return cls(cluster, pool, name, rados, ioctx, prefix)

    async def matches(self, index: int, piece: bytes) -> bool:
        """Does data object ``index`` hold ``piece`` (its bytes from the start, up to
        4 MiB; the object may end early where the rest is zeros, or be absent if all is)?"""
        if self._rados is None:
            raise RuntimeError("ImageChecksums is closed")
        # unbounded: the op keeps its thread until librados' own timeout (the handle's
        # rados_osd_op_timeout) ends it, and close() must wait for that before shutting down
        return bool(await self._inflight.call(self._cluster, functools.partial(self._matches, index, piece),
                                              f"checksum object {index} of image {'/'.join(self._where)}",
                                              *self._where))

    def _matches(self, index: int, piece: bytes) -> bool:
        found = self._stat_crc32c(f"{self._prefix}.{index:016x}")
        n = len(piece)
        if found is None:
            return piece == zero_block(n) if n == CHUNK_SIZE else piece == bytes(n)
        size, crc = found
        if size > n:
            return False
        if size < n and not piece.startswith(memoryview(zero_block(CHUNK_SIZE))[:n - size], size):
            return False  # memcmp in place: the bytes past the object's end must be zeros
        return crc == crc32c.crc32c(memoryview(piece)[:size])

    def _stat_crc32c(self, obj: str) -> tuple[int, int] | None:
        """``(size, CRC-32C of its bytes)`` of the object, in one op; None when absent."""
        lib = _lib()
        op = lib.rados_create_read_op()
        if not op:
            raise MemoryError("rados_create_read_op")
        try:
            size, mtime = ctypes.c_uint64(), ctypes.c_int64()
            stat_rv, sum_rv = ctypes.c_int(), ctypes.c_int()
            out = ctypes.create_string_buffer(8)  # le32 count, then one le32 value
            lib.rados_read_op_stat(op, ctypes.byref(size), ctypes.byref(mtime), ctypes.byref(stat_rv))
            # offset 0, length 0: the whole object; chunk 0: one value
            lib.rados_read_op_checksum(op, _CRC32C, _CRC_INIT, len(_CRC_INIT), 0, 0, 0, out, len(out),
                                       ctypes.byref(sum_rv))
            lib.rados_read_op_set_flags(op, _DONTNEED)  # (of the checksum: the last op added)
            rv = lib.rados_read_op_operate(op, self._ioctx, obj.encode(), 0)
        finally:
            lib.rados_release_read_op(op)
        if rv == -_ENOENT:
            return None
        for code in (rv, stat_rv.value, sum_rv.value):
            _check(code, f"checksum object {obj}", self._cluster, *self._where)
        count, value = struct.unpack("<II", out.raw)
        if size.value and count != 1:
            raise CephCommandFailed(f"checksum object {obj}: {count} values for one", host_of(self._cluster))
        # the OSD seeds with ~0 and does not invert: CRC-32C as everyone computes it is ~value
        return size.value, (value ^ 0xFFFFFFFF) if size.value else 0

    async def close(self) -> None:
        """Wait for the op in flight (a cancelled :meth:`matches` leaves it running), then
        shut the handle down. Safe to call twice."""
        await self._inflight.drain()
        if self._rados is not None:
            await call(self._cluster, self._close_now, "shut down a librados handle", timeout=None)

    def _close_now(self) -> None:
        rados, ioctx, self._rados, self._ioctx = self._rados, self._ioctx, None, None
        if rados is not None:
            lib = _lib()
            lib.rados_ioctx_destroy(ioctx)
            lib.rados_shutdown(rados)


def _close_abandoned(opening: asyncio.Future[ImageChecksums]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        sums = opening.result()
        submit_quietly(sums._cluster, sums._close_now)


def _layout(cluster: RadosSource, pool: str, name: str) -> tuple[str, str]:
    """The pool of the image's data objects, and their names' prefix (blocking)."""
    ioctx = open_ioctx(cluster, pool)
    try:
        with rbd.Image(ioctx, name, read_only=True) as image:
            stat = image.stat()
            if stat["obj_size"] != CHUNK_SIZE or image.stripe_count() != 1:
                raise CephCommandFailed(f"image {pool}/{name} has objects of {stat['obj_size']} bytes in stripes "
                                        f"of {image.stripe_count()}: not one object per {CHUNK_SIZE} bytes",
                                        host_of(cluster))
            data_pool_id = image.data_pool_id()
        data_pool = pool if data_pool_id == ioctx.get_pool_id() else cluster.handle.pool_reverse_lookup(data_pool_id)
        return str(data_pool), str(stat["block_name_prefix"])
    finally:
        ioctx.close()


def _check(code: int, what: str, cluster: RadosSource, pool: str | None = None, name: str | None = None) -> None:
    if code < 0:
        raise from_errno(-code, f"{what} failed", cluster, pool, name)
