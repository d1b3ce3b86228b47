"""What a ping asks a cluster, and what its answer says about a storage.

Shared by the node (a Reconnect's check, through its own handle) and the pinger child
(the tracker's pings): it needs only ``imgstore.ceph`` and the Ceph → ZStack error map,
so the child, which imports it, loads nothing of the database.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from imgstore import ceph
from imgstore.errors import OPERATION_ERROR, ApiError
from imgstore.services.node.ceph_errors import ceph_error

if TYPE_CHECKING:
    from imgstore.db.models import CephBackupStorage, CephMon


async def health_of(cluster: ceph.Cluster, pool: str, uuid: str) -> ceph.Health:
    """The storage's health as ``cluster`` sees it; ApiError when its mons cannot be asked."""
    try:
        return await cluster.health(pool, f"imgstore.ping.{uuid}")
    except ceph.CephError as e:
        raise ceph_error(e) from None


def problem(row: CephBackupStorage, health: ceph.Health) -> ApiError | None:
    """Why the storage is not well, as the mons answered; None when it is."""
    if not any(mon_address(m) in health.quorum for m in row.mons):
        return ApiError(
            OPERATION_ERROR,
            f"none of the mons of backup storage[uuid:{row.uuid}] is in the quorum of its cluster",
            status=503,
        )
    if health.pool_error is not None:
        return ceph_error(health.pool_error)
    return None


def mon_address(mon: CephMon) -> str:
    """How the mon appears in its cluster's quorum: ``addr:port``."""
    return f"{mon.mon_addr or mon.hostname}:{mon.mon_port}"
