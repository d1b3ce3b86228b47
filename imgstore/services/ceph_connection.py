"""Is a Ceph backup storage reachable? Pings and reconnects (ZStack's tracker semantics).

A ping asks the mons for their quorum (each mon gets its own status), writes and removes
a test object in the pool (ZStack's ``UnableToCreateFile`` check) and refreshes capacity.
The storage is Connected when the write works and at least one of its mons is in quorum.
Everything goes through the storage's least-privilege librados handle: no SSH, so a
ping costs a few milliseconds and a dead cluster costs at most the Ceph timeout.
"""
from __future__ import annotations

import logging
import time

from imgstore import ceph
from imgstore.db.models import CephBackupStorage
from imgstore.errors import OPERATION_ERROR, ApiError
from imgstore.services import ceph_backup_storage, image_metadata
from imgstore.services.ceph_backup_storage import apply_capacity, load
from imgstore.services.clusters import ceph_error, is_ceph_error
from imgstore.services.locking import local_lock
from imgstore.services.runtime import Runtime

log = logging.getLogger(__name__)

# A fresh login proves the key is still valid (a connected handle would not notice a
# revoked one for up to an hour) but costs a librados handle: once per this many seconds
# per storage, so a revoked key shows within it while a round of pings stays cheap.
KEY_CHECK_SECONDS = 10.0
_key_checked: dict[str, float] = {}

CONNECTED, CONNECTING, DISCONNECTED = "Connected", "Connecting", "Disconnected"


async def ping(rt: Runtime, uuid: str) -> str:
    """Probe the storage once and record the outcome; returns the new status."""
    async with local_lock("backup_storage", uuid):
        row = await load(rt, uuid)
        try:
            quorum, capacity = await _probe(rt, row)
        except ApiError as e:
            await _record(rt, uuid, DISCONNECTED, e.details, quorum=None)
            return DISCONNECTED
        await _record(rt, uuid, CONNECTED, None, quorum=quorum, capacity=capacity)
        return CONNECTED


async def reconnect(rt: Runtime, uuid: str) -> CephBackupStorage:
    """ReconnectBackupStorage: a fresh librados handle, then a full check. The fsid must
    still be the storage's: mons that now answer for another cluster are refused."""
    async with local_lock("backup_storage", uuid):
        row = await load(rt, uuid)
        await _record(rt, uuid, CONNECTING, None, quorum=None, mons_too=False)
        await rt.clusters.forget(uuid)
        try:
            cluster = await _cluster_or_rekey(rt, row)
            row = await load(rt, uuid)  # the key may have been renewed
            fsid = await cluster.fsid()
            if row.fsid and fsid != row.fsid:
                raise ApiError(
                    OPERATION_ERROR,
                    f"the mons of backup storage[uuid:{uuid}] now belong to ceph cluster[fsid:{fsid}], "
                    f"not to its cluster[fsid:{row.fsid}]",
                )
            quorum, capacity = await _probe(rt, row)
        except ApiError as e:
            await _record(rt, uuid, DISCONNECTED, e.details, quorum=None)
            raise
        await _record(rt, uuid, CONNECTED, None, quorum=quorum, capacity=capacity)
    await image_metadata.rewrite(rt, uuid)  # as ZStack's reconnect does; never raises
    return await load(rt, uuid)


async def _cluster_or_rekey(rt: Runtime, row: CephBackupStorage) -> ceph.Cluster:
    """The storage's handle; when its key was revoked, ask a mon for it again over SSH
    (the operator's reconnect is the moment to repair what the tracker only reports)."""
    try:
        return await rt.clusters.get(row)
    except ApiError as e:
        if not is_ceph_error(e, ceph.CephPermissionDenied):
            raise
    log.warning("the cephx key of backup storage %s was refused; asking a mon for it again", row.uuid)
    await ceph_backup_storage.renew_key(rt, row)
    return await rt.clusters.get(await load(rt, row.uuid))


async def _probe(rt: Runtime, row: CephBackupStorage) -> tuple[set[str], ceph.Capacity]:
    cluster = await rt.clusters.get(row)
    try:
        quorum = await cluster.quorum()
        if not any(_mon_address(m) in quorum for m in row.mons):
            raise ApiError(
                OPERATION_ERROR,
                f"none of the mons of backup storage[uuid:{row.uuid}] is in the quorum of its cluster",
                status=503,
            )
        if time.monotonic() - _key_checked.get(row.uuid, 0.0) > KEY_CHECK_SECONDS:
            await cluster.check_key()
            _key_checked[row.uuid] = time.monotonic()
        await cluster.probe(row.pool_name, f"imgstore.ping.{row.uuid}")
        capacity = await cluster.capacity(row.pool_name)
    except ceph.CephError as e:
        raise ceph_error(e) from None
    return quorum, capacity


def _mon_address(mon) -> str:  # type: ignore[no-untyped-def]
    return f"{mon.mon_addr or mon.hostname}:{mon.mon_port}"


async def _record(
    rt: Runtime,
    uuid: str,
    status: str,
    reason: str | None,
    quorum: set[str] | None,
    capacity: ceph.Capacity | None = None,
    mons_too: bool = True,
) -> None:
    """Write the outcome; untouched rows keep their lastOpDate (a steady ping writes nothing)."""
    async with rt.db() as db:
        row = await db.get(CephBackupStorage, uuid)
        if row is None:
            return
        if row.status != status:
            log.info("backup storage %s: %s -> %s%s", uuid, row.status, status, f" ({reason})" if reason else "")
            row.status = status
        row.status_reason = reason
        if capacity is not None:
            apply_capacity(row, capacity)
        if mons_too:
            for mon in row.mons:
                up = quorum is not None and _mon_address(mon) in quorum
                mon.status = CONNECTED if up else DISCONNECTED
                mon.status_reason = None if up else (reason or "not in the quorum of its cluster")
        await db.commit()

