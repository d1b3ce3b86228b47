"""Is a Ceph backup storage reachable? Pings and reconnects (ZStack's tracker semantics).

A ping asks the mons for their quorum (each mon gets its own status), writes and removes
a test object in the pool (ZStack's ``UnableToCreateFile`` check) and refreshes capacity.
The storage is Connected when the write works and at least one of its mons is in quorum.
Everything goes through the storage's least-privilege librados handle: no SSH, so a
ping costs a few milliseconds and a dead cluster costs at most the Ceph timeout. The
tracker's pings use the pinger process's handle (services/health/pinger.py), a Reconnect the
node's own.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgstore import ceph
from imgstore.db.models import CephBackupStorage
from imgstore.errors import OPERATION_ERROR, ApiError
from imgstore.services.health.checks import health_of, mon_address, problem
from imgstore.services.node.ceph_errors import is_ceph_error
from imgstore.services.node.locking import local_lock
from imgstore.services.node.runtime import Runtime
from imgstore.services.storage.cephx import renew_key
from imgstore.services.storage.rows import capacity_columns, load, rows_of
from imgstore.wire.enums import StorageStatus

if TYPE_CHECKING:
    from imgstore.services.health.pinger import Pinger

log = logging.getLogger(__name__)

CONNECTED, CONNECTING, DISCONNECTED = StorageStatus.CONNECTED, StorageStatus.CONNECTING, StorageStatus.DISCONNECTED


def generation(rt: Runtime, uuid: str) -> int:
    """How many times a Reconnect of the storage began or ended on this node
    (``Node.reconnects``): a probe that started before one ended must not record over it
    (nor use the row it loaded, whose key the Reconnect may have renewed)."""
    return rt.node.reconnects[uuid]


def _next_generation(rt: Runtime, uuid: str) -> int:
    """Make every probe begun so far stale. A Reconnect does it as it begins and again
    as it ends: a ping begun meanwhile still holds the key the Reconnect renewed."""
    rt.node.reconnects[uuid] += 1
    return generation(rt, uuid)


@dataclass(frozen=True)
class Outcome:
    """What one probe of a storage found, to be written by :func:`record`."""

    uuid: str
    status: str
    reason: str | None = None
    quorum: frozenset[str] | None = None
    capacity: ceph.Capacity | None = None
    mons_too: bool = True  # False: a key check, which says nothing about the mons
    generation: int = 0
    # the mons answered but the pool did not: a handle that lived through an OSD restart
    # may keep timing out where a fresh one works; renewing it against dead mons only
    # spends a librados handle's threads to wait out the same timeout
    renew_handle: bool = False


async def probe(pinger: Pinger, row: CephBackupStorage, gen: int) -> Outcome:
    """Ask the cluster (never the database) how the storage is: the tracker's ping,
    through the pinger process's handle. PingerLost when that process failed."""
    try:
        health = await pinger.health(row)
    except ApiError as e:
        return Outcome(row.uuid, DISCONNECTED, e.details, generation=gen)
    trouble = problem(row, health)
    if trouble is not None:
        renew = health.pool_error is not None
        return Outcome(row.uuid, DISCONNECTED, trouble.details, generation=gen, renew_handle=renew)
    return Outcome(row.uuid, CONNECTED, None, health.quorum, health.capacity, generation=gen)


async def record(rt: Runtime, outcomes: Iterable[Outcome]) -> None:
    """Write many outcomes in one transaction.

    Only what changed is written (an unchanged row keeps its lastOpDate, so a steady
    ping writes nothing), and an outcome older than a Reconnect of its storage is
    dropped: the Reconnect's own result is newer."""
    current = {o.uuid: o for o in outcomes if o.generation == generation(rt, o.uuid)}
    if not current:
        return
    async with rt.db() as db:
        for row in await rows_of(db, list(current)):
            outcome = current[row.uuid]
            if row.status != outcome.status:
                why = f" ({outcome.reason})" if outcome.reason else ""
                log.info("backup storage %s: %s -> %s%s", row.uuid, row.status, outcome.status, why)
            apply(row, outcome)
        await db.commit()


async def reconnect(rt: Runtime, uuid: str) -> CephBackupStorage:
    """ReconnectBackupStorage: a fresh librados handle, then a full check. The fsid must
    still be the storage's: mons that now answer for another cluster are refused."""
    async with local_lock(rt, "backup_storage", uuid):
        gen = _next_generation(rt, uuid)
        row = await load(rt, uuid)
        await record(rt, [Outcome(uuid, CONNECTING, mons_too=False, generation=gen)])
        await rt.clusters.forget(uuid)
        if rt.node.tracker is not None:
            await rt.node.tracker.forget(uuid)  # the pings' handle too: the next ping starts afresh
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
            health = await _health(rt, row)
            trouble = problem(row, health)
            if trouble is not None:
                raise trouble
        except ApiError as e:
            await record(rt, [Outcome(uuid, DISCONNECTED, e.details, generation=_next_generation(rt, uuid))])
            raise
        gen = _next_generation(rt, uuid)
        await record(rt, [Outcome(uuid, CONNECTED, None, health.quorum, health.capacity, generation=gen)])
    await rt.events.tell_reconnected(uuid)  # bs_ceph_info.json rewritten, as ZStack's reconnect does
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
    await renew_key(rt, row)
    return await rt.clusters.get(await load(rt, row.uuid))


async def _health(rt: Runtime, row: CephBackupStorage) -> ceph.Health:
    """One trip to the cluster through the node's handle (a Reconnect's check)."""
    return await health_of(await rt.clusters.get(row), row.pool_name, row.uuid)


def apply(row: CephBackupStorage, outcome: Outcome) -> bool:
    """Set what ``outcome`` says on ``row`` (and its mons); True if anything changed."""
    changed = _put(row, {"status": outcome.status, "status_reason": outcome.reason})
    if outcome.capacity is not None:
        changed |= _put(row, capacity_columns(outcome.capacity))
    if outcome.mons_too:
        for mon in row.mons:
            up = outcome.quorum is not None and mon_address(mon) in outcome.quorum
            reason = None if up else (outcome.reason or "not in the quorum of its cluster")
            changed |= _put(mon, {"status": CONNECTED if up else DISCONNECTED, "status_reason": reason})
    return changed


def _put(obj: object, values: dict[str, object]) -> bool:
    """Set the attributes that differ; True if there were any."""
    differ = {k: v for k, v in values.items() if getattr(obj, k) != v}
    for k, v in differ.items():
        setattr(obj, k, v)
    return bool(differ)
