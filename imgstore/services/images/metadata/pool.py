"""The storage's pool as the metadata object sees it: the storage and its handle, and
whether an inventory's RBD image is there."""
from __future__ import annotations

import logging
from typing import Any

from imgstore import ceph
from imgstore.db.models import CephBackupStorage
from imgstore.errors import ApiError
from imgstore.services.images.metadata.lines import install_path_of, split_install_path
from imgstore.services.node.runtime import Runtime

log = logging.getLogger(__name__)


async def storage_and_cluster(rt: Runtime, bs_uuid: str) -> tuple[CephBackupStorage, ceph.Cluster] | None:
    """The Ceph storage and its handle; None when it is gone or not Ceph."""
    async with rt.db() as db:
        storage = await db.get(CephBackupStorage, bs_uuid, populate_existing=True)
    if storage is None or not storage.pool_name:
        return None
    return storage, await rt.clusters.get(storage)


def reason(e: Exception) -> str:
    """What to log of a failure here (they are logged, never raised)."""
    return e.details if isinstance(e, ApiError) else str(e)


async def image_size(cluster: ceph.Cluster, install_path: str) -> int | None:
    """The size of the RBD image at ``install_path``; None (logged) when it is not there
    or the storage's key may not read it."""
    where = split_install_path(install_path)
    if where is None:
        return None
    try:
        return await ceph.image_size(cluster, *where)
    except ceph.ImageNotFound:
        log.info("import: %s has no RBD image: skipped", install_path)
    except (ceph.PoolNotFound, ceph.CephPermissionDenied) as e:
        log.info("import: %s cannot be read with the storage's key: skipped (%s)", install_path, e)
    return None


async def bits_exist(cluster: ceph.Cluster, inventory: dict[str, Any], pool: str) -> bool:
    """Is the inventory's RBD image in the cluster? True when that cannot be told now."""
    path = install_path_of(inventory, pool)
    if path is None:
        return False
    try:
        return await image_size(cluster, path) is not None
    except ceph.CephError:  # cannot tell now: keep the line
        return True
