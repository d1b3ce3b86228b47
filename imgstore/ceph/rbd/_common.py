"""What the writer, the reader and the management calls of RBD images share: the object
size, the shared zero block, and ``aio_*`` calls whose completions come back to the event
loop through ``call_soon_threadsafe`` (librbd calls back in its own thread)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from imgstore import memory
from imgstore.ceph._calls import RadosSource, call, host_of
from imgstore.ceph.exceptions import ClusterUnreachable

__all__ = ["CALL_TIMEOUT", "CHUNK_SIZE", "InFlight", "MiB", "aio", "resolve_threadsafe", "submit_quietly", "trim_soon",
           "zero_block"]

MiB = 1 << 20
CHUNK_SIZE = 4 * MiB
"""RBD object size of new images, and the unit of writes and reads."""
CALL_TIMEOUT = 120.0  # last resort: librados' own op timeouts (cluster.py) come first


@functools.lru_cache(maxsize=4)
def zero_block(size: int) -> bytes:
    return bytes(size)


def submit_quietly(cluster: RadosSource, fn: Callable[[], Any]) -> None:
    """Run ``fn`` in the cluster's pool without waiting for it (nothing if the pool is gone)."""
    try:
        cluster.executor.submit(fn)
    except RuntimeError:  # pool shut down: the handle is going away with everything on it
        pass


class InFlight:
    """What runs on one open image that its close must wait for: aio calls and blocking
    calls in a pool thread.

    A waiter cancelled inside ``await`` (a client that hangs up) does not stop librbd: the
    call goes on in its thread, and an image closed under it is freed memory in use (a test
    server died in a messenger thread so). The calls are tracked here and :meth:`drain`
    waits for every one of them before the image may be closed."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    def track(self, task: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """``task``, tracked until it is done."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def call(self, cluster: RadosSource, fn: Callable[[], Any], what: str, pool: str,
                   name: str) -> Any:
        """``fn`` in the cluster's pool (``_calls.call``, unbounded: librados' op timeouts
        bound it), tracked; a cancelled waiter leaves it running to its end, not orphaned."""
        task = self.track(asyncio.ensure_future(call(cluster, fn, what, pool, name, timeout=None)))
        return await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait until nothing is in flight (what is started meanwhile included)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


TRIM_DELAY = 1.0
"""Seconds between a stream's end and the trim of the heap it leaves (see trim_soon)."""
_trim: asyncio.TimerHandle | None = None  # the trim this process has scheduled, if any


def trim_soon(cluster: RadosSource) -> None:
    """Hand the buffers a stream of image bytes freed back to the kernel, a moment after
    it ended (``memory.trim_heap`` in the cluster's pool).

    A stream's 4 MiB buffers (the writer's, the body's, librbd's reads) come from glibc's
    arenas, and an arena gives back only what is free at its top: each upload, export or
    CalculateImageHash left its buffers resident for good (the README's bench_images row
    has the figures). The last buffers are dropped by whoever held them (the route, a hash
    lane) after the stream closed, hence the delay; one trim pending per process at most,
    so a run of short streams (Range requests) costs one. The collector's full pass goes
    first, so that the trim finds what the stream's cyclic garbage held free."""
    global _trim
    loop = asyncio.get_running_loop()
    if _trim is None or _trim.when() <= loop.time():
        _trim = loop.call_later(TRIM_DELAY, _collect_and_trim, cluster)


def _collect_and_trim(cluster: RadosSource) -> None:
    """The stream's cyclic garbage first (``memory.collect_old_garbage``, in the loop's
    thread, where its objects' finalizers expect to run), then the heap they held."""
    memory.collect_old_garbage()
    submit_quietly(cluster, memory.trim_heap)


def _completion(loop: asyncio.AbstractEventLoop,
                held: tuple[Any, ...] = ()) -> tuple[asyncio.Future[Any], Callable[..., None]]:
    """A future and the rbd aio callback that resolves it (called in librbd's thread).

    The result is the completion's return value, or ``(return value, data)`` for an
    ``aio_read``, whose callback also gets the bytes read (None on error). The callback
    holds ``held`` until librbd has called it: the binding keeps the callback that long,
    whatever happens to the future (a cancelled waiter included)."""
    fut: asyncio.Future[Any] = loop.create_future()
    return fut, functools.partial(_completed, loop, fut, held)


def _completed(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], _held: tuple[Any, ...],
               completion: Any, *data: Any) -> None:
    rv = completion.get_return_value()
    resolve_threadsafe(loop, fut, (rv, data[0] or b"") if data else rv)


def resolve_threadsafe(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], result: Any,
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


def aio(cluster: RadosSource, loop: asyncio.AbstractEventLoop, method: Callable[..., Any],
        *args: Any) -> asyncio.Future[Any]:
    """Start an rbd ``aio_*`` call; a future of its completion's result.

    The call is made from a pool thread, not the loop: librados may block the caller
    when its in-flight throttle is full. The arguments (an ``aio_write``'s bytes) are held
    until the completion: librbd writes from them without a copy (the handle's
    ``rbd_disable_zero_copy_writes`` is off, cluster.py) and completes only once it has
    let go of them.
    """
    done, callback = _completion(loop, args)
    try:
        submitted = loop.run_in_executor(cluster.executor, functools.partial(method, *args, callback))
    except RuntimeError:  # the pool was shut down by Cluster.close()
        done.set_exception(ClusterUnreachable("the cluster handle is closed", host_of(cluster)))
        return done
    return asyncio.ensure_future(_after_submit(submitted, done))


async def _after_submit(submitted: asyncio.Future[Any], done: asyncio.Future[Any]) -> Any:
    """The aio result once both the submission (in a thread) and the completion happened.

    If the submission itself failed, librbd will never call back: the error is the result.
    """
    await submitted
    return await done

