"""Digests of a stream, computed in the handle's thread pool while its writes fly.

md5 and sha512 are two :class:`HashLane`: they run in parallel on two cores, and the
event loop never hashes.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from concurrent.futures import Executor, Future
from typing import Any

from imgstore.ceph.exceptions import ClusterUnreachable
from imgstore.ceph.rbd._common import resolve_threadsafe

__all__ = ["HashLane"]

_HASH_BATCH = 4  # chunks a hash job takes before letting other pool work in


class HashLane:
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
        job.add_done_callback(self._on_done)

    def _on_done(self, job: Future[None]) -> None:
        if job.cancelled():  # Cluster.close() cancelled it before it ran
            self._fail_all(ClusterUnreachable("the cluster handle was closed while hashing"))

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
            except BaseException as e:
                error = e
            del data  # the chunk may be reused once its future is resolved
            resolve_threadsafe(self._loop, fut, None, error)
        self._schedule()

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            items, self._queue, self._running = list(self._queue), deque(), False
        for _, fut in items:
            resolve_threadsafe(self._loop, fut, None, error)

