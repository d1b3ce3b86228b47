"""The one way a blocking Ceph call is made: an executor hop, a time bound, one error map.

librados and librbd block, so every call runs in the handle's bounded thread pool (never
on the event loop), and each await has a last-resort ``wait_for`` on top of librados' own
op timeouts (``cluster.py`` sets those). :func:`translate` and :func:`from_errno` are the
only places where a ``rados``/``rbd`` exception or a negative return code becomes one of
``imgstore.ceph.exceptions``; messages name what was done and the errno, never a key.

The map, by errno (or the exception class that stands for it):

=========================  =======================================================
ENOENT                     ImageNotFound when the call names an image (or librbd
                           says so), PoolNotFound when it names only a pool, else
                           CephCommandFailed
ENOSPC, EDQUOT             ImageNoSpace (the pool, or its quota, is full)
ETIMEDOUT, EINTR           CephTimeout
EACCES, EPERM              CephPermissionDenied
ENOTCONN, ESHUTDOWN,       ClusterUnreachable
ECONNREFUSED
EEXIST (rbd.ImageExists)   ImageExists
EBUSY, ENOTEMPTY           ImageBusy (rbd.ImageBusy, rbd.ImageHasSnapshots)
anything else              CephCommandFailed, with the errno's name
=========================  =======================================================
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

# Exception classes that stand for an errno when librados/librbd leave ``errno`` unset.
_CLASS_ERRNO: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int], ...] = (
    (rados.ObjectNotFound, errno.ENOENT),
    ((rados.NoSpace, rbd.NoSpace), errno.ENOSPC),
    ((rados.PermissionError, rados.PermissionDeniedError, rbd.PermissionError), errno.EACCES),
    ((rados.TimedOut, rbd.Timeout), errno.ETIMEDOUT),
    (rados.InvalidArgumentError, errno.EINVAL),
)


class RadosSource(Protocol):
    """What a call needs of a storage's handle; :class:`imgstore.ceph.Cluster` is one."""

    @property
    def handle(self) -> Any:  # a connected rados.Rados
        ...

    @property
    def executor(self) -> Executor:
        ...


def host_of(cluster: RadosSource) -> str | None:
    """The mon host an error is about (a handle without one, e.g. a test double: None)."""
    return getattr(cluster, "mon_host", None)


def open_ioctx(cluster: RadosSource, pool: str) -> Any:
    """The pool's I/O context (blocking); PoolNotFound when the pool is not there."""
    try:
        return cluster.handle.open_ioctx(pool)
    except rados.ObjectNotFound:
        raise PoolNotFound(f"pool[{pool}] does not exist in the ceph cluster", host_of(cluster)) from None


async def call(cluster: RadosSource, fn: Callable[[], T], what: str, pool: str | None = None,
               name: str | None = None, timeout: float | None = None,
               grace: float = 0.0) -> T:
    """Run blocking ``fn`` in the cluster's pool; whatever it raises leaves as a CephError.

    ``timeout`` (None: unbounded, for calls that cleanup must wait for) plus ``grace`` is
    the last-resort bound; the error names ``timeout``, the one an operator configured.
    ``pool`` and ``name`` say what the call is about, for the errno map.
    """
    loop = asyncio.get_running_loop()
    try:
        future = loop.run_in_executor(cluster.executor, fn)
    except RuntimeError:  # the pool was shut down by Cluster.close()
        raise ClusterUnreachable("the cluster handle is closed", host_of(cluster)) from None
    try:
        if timeout is None:
            return await future
        return await asyncio.wait_for(future, timeout + grace)
    except TimeoutError:
        raise CephTimeout(f"{what} timed out after {timeout:g}s", host_of(cluster)) from None
    except CephError:
        raise
    except (rados.Error, rbd.Error) as e:
        raise translate(e, what, cluster, pool, name) from None
    except ValueError as e:  # undecodable output of a mon command, a field not as expected
        raise CephCommandFailed(f"{what}: unexpected output ({e})", host_of(cluster)) from None


def translate(e: BaseException, what: str, cluster: RadosSource, pool: str | None = None,
              name: str | None = None) -> CephError:
    """A rados/rbd exception as one of ours (see the map above)."""
    if isinstance(e, CephError):
        return e
    where = f"{pool}/{name}" if name else f"in pool {pool}"
    if isinstance(e, rbd.ImageNotFound):
        return ImageNotFound(f"image {where} does not exist", host_of(cluster))
    if isinstance(e, rbd.ImageExists):
        return ImageExists(f"image {where} already exists", host_of(cluster))
    if isinstance(e, (rbd.ImageBusy, rbd.ImageHasSnapshots)):
        return ImageBusy(f"image {where} is in use: {e}", host_of(cluster))
    code = getattr(e, "errno", None)
    if not isinstance(code, int) or code <= 0:
        code = next((c for kinds, c in _CLASS_ERRNO if isinstance(e, kinds)), 0)
    return from_errno(code, f"{what} failed: {e or type(e).__name__}", cluster, pool, name)


def from_errno(code: int, message: str, cluster: RadosSource, pool: str | None = None,
               name: str | None = None) -> CephError:
    """An errno (positive, as librados' negative return codes negated) as one of ours."""
    host = host_of(cluster)
    if code == errno.ENOENT and name is not None:
        return ImageNotFound(f"image {pool}/{name} does not exist", host)
    if code == errno.ENOENT and pool is not None:
        return PoolNotFound(f"pool[{pool}] does not exist in the ceph cluster", host)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return ImageNoSpace(f"{message}: the pool is full", host)
    if code in (errno.ETIMEDOUT, errno.EINTR):
        return CephTimeout(message, host)
    if code in (errno.EACCES, errno.EPERM):
        return CephPermissionDenied(message, host)
    if code in (errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNREFUSED):
        return ClusterUnreachable(message, host)
    label = errno.errorcode.get(code, str(code))
    return CephCommandFailed(f"{message} ({label})" if code and label not in message else message, host)
