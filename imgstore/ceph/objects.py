"""Small RADOS objects of a pool: read, write, append, remove, and an advisory lock.

ZStack keeps the inventories of a Ceph backup storage's images in the RADOS object
``bs_ceph_info.json``; imgstore reads and keeps it with these. The
calls take the storage's handle (:class:`imgstore.ceph.Cluster`, or anything with its
``handle`` and ``executor``), run in its bounded thread pool, and raise
``imgstore.ceph.exceptions`` only. Objects are expected to be small (a few MiB at most):
they are read whole.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import rados

from imgstore.ceph._calls import RadosSource, call, host_of, open_ioctx
from imgstore.ceph.exceptions import CephTimeout

__all__ = ["append_object", "object_lock", "read_object", "remove_object", "write_object"]

T = TypeVar("T")
_TIMEOUT = 60.0  # last resort: librados' own op timeouts (cluster.py) come first
_READ_PIECE = 4 << 20
_LOCK_NAME = "imgstore"
_LOCK_RETRY = 0.2


async def read_object(cluster: RadosSource, pool: str, name: str) -> bytes | None:
    """The whole object, or None when there is no such object (PoolNotFound: no pool)."""

    def read(ioctx: Any) -> bytes | None:
        parts = []
        offset = 0
        try:
            while True:
                piece = ioctx.read(name, _READ_PIECE, offset)
                parts.append(piece)
                offset += len(piece)
                if len(piece) < _READ_PIECE:
                    return b"".join(parts)
        except rados.ObjectNotFound:
            return None

    return await _with_ioctx(cluster, pool, read, f"read object {pool}/{name}")


async def write_object(cluster: RadosSource, pool: str, name: str, data: bytes) -> None:
    """Replace the object's content with ``data`` (atomically: readers see old or new)."""
    await _with_ioctx(cluster, pool, lambda ioctx: ioctx.write_full(name, data),
                      f"write object {pool}/{name}")


async def append_object(cluster: RadosSource, pool: str, name: str, data: bytes) -> None:
    """Append ``data`` to the object, creating it if needed."""
    await _with_ioctx(cluster, pool, lambda ioctx: ioctx.append(name, data),
                      f"append to object {pool}/{name}")


async def remove_object(cluster: RadosSource, pool: str, name: str) -> bool:
    """Remove the object; False when there was none."""

    def remove(ioctx: Any) -> bool:
        try:
            return bool(ioctx.remove_object(name))
        except rados.ObjectNotFound:
            return False

    return await _with_ioctx(cluster, pool, remove, f"remove object {pool}/{name}")


@asynccontextmanager
async def object_lock(cluster: RadosSource, pool: str, name: str, *, duration: int = 60,
                 wait: float = 30.0) -> AsyncIterator[None]:
    """Hold the exclusive advisory lock of object ``pool/name`` (cls_lock) for the block.

    Serialises read-modify-write of the object among imgstore nodes (and anything else
    honouring the lock). The lock expires after ``duration`` seconds, so a node that died
    holding it blocks the others for that long at most. Taking a lock creates the object
    (empty) if it is missing. CephTimeout when it cannot be had within ``wait`` seconds.
    """
    cookie = uuid.uuid4().hex
    what = f"lock object {pool}/{name}"

    def try_lock(ioctx: Any) -> bool:
        try:
            ioctx.lock_exclusive(name, _LOCK_NAME, cookie, "imgstore metadata update", duration, 0)
            return True
        except (rados.ObjectBusy, rados.ObjectExists):
            return False

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while not await _with_ioctx(cluster, pool, try_lock, what):
        if loop.time() > deadline:
            raise CephTimeout(f"{what}: still held by another client after {wait:g}s", host_of(cluster))
        await asyncio.sleep(_LOCK_RETRY)
    try:
        yield
    finally:

        def unlock(ioctx: Any) -> None:
            try:
                ioctx.unlock(name, _LOCK_NAME, cookie)
            except (rados.ObjectNotFound, rados.ObjectBusy):
                pass  # expired, or the object was removed with its lock

        await asyncio.shield(_with_ioctx(cluster, pool, unlock, f"unlock object {pool}/{name}"))


# ---------------------------------------------------------------------- plumbing


async def _with_ioctx(cluster: RadosSource, pool: str, fn: Callable[[Any], T], what: str) -> T:
    """``fn(ioctx)`` on ``pool`` in the cluster's pool of threads, errors translated."""

    def run() -> T:
        ioctx = open_ioctx(cluster, pool)
        try:
            return fn(ioctx)
        finally:
            ioctx.close()

    return await call(cluster, run, what, timeout=_TIMEOUT)
