"""The one way a blocking Ceph call is made: an executor hop, a time bound, one error map.

librados and librbd block, so every call runs in the handle's bounded thread pool
(never on the event loop), and each await has a last-resort ``wait_for`` on top of
librados' own op timeouts. Whatever a call raises leaves as one of
``imgstore.ceph.exceptions``: :func:`translate` is the only place where a ``rados`` or
``rbd`` exception, or a negative return code, becomes one of ours.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

import rados
import rbd

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
    PoolNotFound,
)

__all__ = ["RadosSource", "call", "from_errno", "host_of", "open_ioctx", "translate"]

T = TypeVar("T")


class RadosSource(Protocol):
    """What a call needs of a storage's handle; :class:`imgstore.ceph.Cluster` is one."""

    @property
    def handle(self) -> Any:  # a connected rados.Rados
        ...

    @property
    def executor(self) -> Executor:
        ...


def host_of(cluster: RadosSource) -> str | None:
    """The mon host an error is about (errors name it; a test double may have none)."""
    return getattr(cluster, "mon_host", None) or getattr(cluster, "_mon_host", None)


def open_ioctx(cluster: RadosSource, pool: str) -> Any:
    """The pool's I/O context (blocking); PoolNotFound when the pool is not there."""
    try:
        return cluster.handle.open_ioctx(pool)
    except rados.ObjectNotFound:
        raise PoolNotFound(f"pool[{pool}] does not exist in the ceph cluster", host_of(cluster)) from None


async def call(cluster: RadosSource, fn: Callable[[], T], what: str, pool: str | None = None,
               name: str | None = None, timeout: float | None = None) -> T:
    """Run blocking ``fn`` in the cluster's pool, with rados/rbd errors translated."""
    loop = asyncio.get_running_loop()
    try:
        future = loop.run_in_executor(cluster.executor, fn)
    except RuntimeError:  # the pool was shut down by Cluster.close()
        raise ClusterUnreachable("the cluster handle is closed", host_of(cluster)) from None
    try:
        if timeout is None:
            return await future
        return await asyncio.wait_for(future, timeout)
    except (asyncio.TimeoutError, TimeoutError):
        raise CephTimeout(f"{what} timed out after {timeout:g}s", host_of(cluster)) from None
    except CephError:
        raise
    except (rados.Error, rbd.Error) as e:
        raise translate(e, what, cluster, pool, name) from None


def translate(e: BaseException, what: str, cluster: RadosSource, pool: str | None,
              name: str | None) -> CephError:
    """A rados/rbd exception as one of ours."""
    if isinstance(e, CephError):
        return e
    host = host_of(cluster)
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
    return from_errno(code if isinstance(code, int) else 0, f"{what} failed: {e or type(e).__name__}",
                      cluster)


def from_errno(code: int, message: str, cluster: RadosSource) -> CephError:
    """An errno (positive) as one of ours."""
    host = host_of(cluster)
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
