"""librados handles of the storages this node serves, made once and leased by streams."""
from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

from imgstore import ceph
from imgstore.errors import OPERATION_ERROR, ApiError
from imgstore.services.node.ceph_errors import ceph_error

if TYPE_CHECKING:  # rows are read, never made here: the pinger child uses this without a database
    from imgstore.db.models import CephBackupStorage

log = logging.getLogger(__name__)

def mon_host_of(row: CephBackupStorage) -> str:
    """The librados ``mon_host`` of a storage: every known mon, connected ones first."""
    mons = sorted(row.mons, key=lambda m: m.status != "Connected")
    return ",".join(m.mon_host or f"v1:{m.mon_addr or m.hostname}:{m.mon_port}" for m in mons)


def require_key(row: CephBackupStorage) -> tuple[str, str]:
    """The storage's cephx client and (sealed) key; 409 when it has none to connect with
    (an add that did not finish)."""
    if not row.ceph_key or not row.ceph_client:
        raise ApiError(
            OPERATION_ERROR,
            f"backup storage[uuid:{row.uuid}] has no cephx key yet; reconnect it",
            status=409,
        )
    return row.ceph_client, row.ceph_key


Identity = tuple[str, str]  # (mon_host, key as stored): what a handle was made from


class Lease:
    """A hold on one handle for as long as a stream (an export, an upload) uses it.

    A Reconnect, a Delete or a mon change replaces the registry's handle at once (new
    calls get the new one) but the old one is closed only when its last lease ends, so
    a stream under way finishes on the handle it started with instead of being cut.
    ``release`` is idempotent, and a lease dropped without one is released when it is
    garbage-collected: a response that never started its stream cannot pin a handle.
    """

    def __init__(self, cluster: ceph.Cluster, release: Callable[[], None]) -> None:
        self.cluster = cluster
        self._release = weakref.finalize(self, release)
        self._release.atexit = False

    def release(self) -> None:
        self._release()


class ClusterRegistry:
    """One connected ``ceph.Cluster`` per storage, made on first use and kept.

    A handle is remade when the storage's mons or key change, so a reconnect after
    an operator fixes the mon list takes effect at once. Callers that want the same
    handle while it connects share that one connection attempt instead of queueing for
    their own, and a replaced handle is shut down in the background (against dead mons
    a shutdown waits out the Ceph timeout): whoever asks waits one Ceph timeout at most.

    Streams hold their handle with a :class:`Lease` (``lease``, ``take``, ``hold``): a
    replaced handle that is leased is closed when its last lease ends, one that is not
    at once; short calls use ``get`` and a replaced handle's calls in flight end on
    their own timeouts.

    ``open_key`` turns a key as the registry is given it into the cephx key: the node's
    registry is given sealed keys (``SecretBox.open``), the pinger's keys already opened.
    """

    def __init__(self, open_key: Callable[[str], str], timeout: float) -> None:
        self._open_key = open_key
        self._timeout = timeout
        self._clusters: dict[str, tuple[Identity, ceph.Cluster]] = {}
        self._connecting: dict[str, tuple[Identity, asyncio.Task[ceph.Cluster]]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._leases: Counter[ceph.Cluster] = Counter()  # handle -> leases not yet released
        self._retired: set[ceph.Cluster] = set()  # replaced handles waiting for their last lease

    @asynccontextmanager
    async def lease(self, row: CephBackupStorage) -> AsyncIterator[ceph.Cluster]:
        """The storage's handle for an ``async with`` block: not closed before it ends."""
        lease = await self.take(row)
        try:
            yield lease.cluster
        finally:
            lease.release()

    async def take(self, row: CephBackupStorage) -> Lease:
        """A lease on the storage's handle, for a stream that outlives one block."""
        return self.hold(await self.get(row))

    def hold(self, cluster: ceph.Cluster) -> Lease:
        """A lease on ``cluster``, a handle this registry gave out (call it right after
        the ``get``, with no await between: a replaced handle without leases closes)."""
        self._leases[cluster] += 1
        return Lease(cluster, partial(_let_go, asyncio.get_running_loop(), self._released, cluster))

    def _released(self, cluster: ceph.Cluster) -> None:
        self._leases[cluster] -= 1
        if self._leases[cluster] > 0:
            return
        del self._leases[cluster]
        if cluster in self._retired:
            self._retired.discard(cluster)
            self._close(cluster)

    async def get(self, row: CephBackupStorage) -> ceph.Cluster:
        client, key = require_key(row)
        return await self.connected(row.uuid, mon_host_of(row), client, key)

    async def connected(self, uuid: str, mon_host: str, client: str, key: str) -> ceph.Cluster:
        """Storage ``uuid``'s handle, made from these unless the kept one already was."""
        identity = (mon_host, key)
        known = self._clusters.get(uuid)
        if known and known[0] == identity:
            return known[1]
        pending = self._connecting.get(uuid)
        if pending is None or pending[0] != identity:
            task = asyncio.create_task(self._connect(uuid, identity, client))
            task.add_done_callback(_consume_error)
            pending = self._connecting[uuid] = (identity, task)
        return await asyncio.shield(pending[1])

    async def _connect(self, uuid: str, identity: Identity, client: str) -> ceph.Cluster:
        """Connect, then keep the handle, unless a forget or a newer identity came first."""
        cluster = ceph.Cluster(identity[0], client, self._open_key(identity[1]), self._timeout)
        try:
            await cluster.connect()
        except ceph.CephError as e:
            await cluster.close()
            raise ceph_error(e) from None
        except BaseException:
            await cluster.close()
            raise
        finally:
            pending = self._connecting.get(uuid)
            superseded = pending is None or pending[1] is not asyncio.current_task()
            if not superseded:
                del self._connecting[uuid]
        if superseded:
            self._retire(cluster)
            raise ApiError(
                OPERATION_ERROR,
                f"the connection of backup storage[uuid:{uuid}] was renewed meanwhile; try again",
                status=503,
            )
        self._keep(uuid, identity, cluster)
        return cluster

    async def adopt(self, uuid: str, identity: Identity, cluster: ceph.Cluster) -> None:
        """Keep a handle an onboarding already connected."""
        self._connecting.pop(uuid, None)
        self._keep(uuid, identity, cluster)

    async def forget(self, uuid: str) -> None:
        """Drop the storage's handle (and any connection under way): the next get makes a new one."""
        self._connecting.pop(uuid, None)
        known = self._clusters.pop(uuid, None)
        if known:
            self._retire(known[1])

    async def close_all(self) -> None:
        for uuid in list(self._clusters) + list(self._connecting):
            await self.forget(uuid)
        for cluster in list(self._retired):  # the node stops: its streams end with it
            self._retired.discard(cluster)
            self._close(cluster)
        await asyncio.gather(*self._closing)

    def _keep(self, uuid: str, identity: Identity, cluster: ceph.Cluster) -> None:
        old = self._clusters.get(uuid)
        if old and old[1] is not cluster:
            self._retire(old[1])
        self._clusters[uuid] = (identity, cluster)

    def _retire(self, cluster: ceph.Cluster) -> None:
        """A replaced handle: closed when its last lease ends, at once when it has none."""
        if self._leases[cluster] > 0:
            log.info("%r replaced; closed when its %d stream(s) end", cluster, self._leases[cluster])
            self._retired.add(cluster)
        else:
            self._leases.pop(cluster, None)
            self._close(cluster)

    def _close(self, cluster: ceph.Cluster) -> None:
        """Shut ``cluster`` down without waiting for it (its calls already in flight
        end on their own timeouts)."""
        task = asyncio.create_task(cluster.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _let_go(loop: asyncio.AbstractEventLoop, released: Callable[[ceph.Cluster], None],
            cluster: ceph.Cluster) -> None:
    """A lease's end, on its registry's loop (a garbage collection may run in any thread)."""
    if loop.is_closed():
        return
    try:
        if asyncio.get_running_loop() is loop:
            released(cluster)
            return
    except RuntimeError:
        pass
    loop.call_soon_threadsafe(released, cluster)


def _consume_error(task: asyncio.Task[ceph.Cluster]) -> None:
    """A connection whose every waiter was cancelled must not log 'exception never retrieved'."""
    if not task.cancelled():
        task.exception()
