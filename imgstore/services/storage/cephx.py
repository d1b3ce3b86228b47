"""The storage's footprint in its cluster, kept right over SSH: its cephx key renewed,
its key (and the pool imgstore made) removed when it goes.
"""
from __future__ import annotations

import logging

from imgstore import ceph
from imgstore.db.models import CephBackupStorage
from imgstore.errors import OPERATION_ERROR, ApiError
from imgstore.services.node.ceph_errors import ceph_error
from imgstore.services.node.runtime import Runtime
from imgstore.services.storage.mon_hosts import mon_url_of, pin_host_key, shell_for
from imgstore.services.storage.rows import save

log = logging.getLogger(__name__)


async def release_cluster_resources(rt: Runtime, row: CephBackupStorage, drop_pool: bool) -> str | None:
    """Delete the storage's cephx key (and its pool when asked) through any mon that
    answers; None when done, else why no mon did, by host (the caller decides whether
    that blocks a delete). The reasons name no secret (``ceph.exceptions``)."""
    if not row.ceph_client and not drop_pool:
        return None
    errors = []
    for mon in row.mons:
        try:
            async with shell_for(rt, mon_url_of(rt, mon)) as shell:
                await pin_host_key(rt, mon, shell)
                if row.ceph_client:
                    await shell.delete_key(row.ceph_client)
                if drop_pool and row.pool_name:
                    await shell.delete_pool(row.pool_name)
            return None
        except ceph.CephError as e:
            errors.append(f"{mon.hostname}: {e}")
    log.warning(
        "could not remove cephx key %s%s of backup storage %s: %s",
        row.ceph_client,
        f" and pool {row.pool_name}" if drop_pool else "",
        row.uuid,
        "; ".join(errors) or "no mon",
    )
    return "; ".join(errors) or "no mon"


async def renew_key(rt: Runtime, row: CephBackupStorage) -> None:
    """Get (or re-create) the storage's cephx key through the first mon that answers."""
    errors = []
    for mon in row.mons:
        try:
            async with shell_for(rt, mon_url_of(rt, mon)) as shell:
                await pin_host_key(rt, mon, shell)
                key = await shell.get_or_create_key(row.ceph_client or f"imgstore.{row.uuid}", row.pool_name)
        except ceph.CephError as e:
            errors.append(ceph_error(e, mon.hostname))
            continue
        await save(rt, row.uuid, ceph_key=rt.secrets.seal(key), ceph_client=row.ceph_client or f"imgstore.{row.uuid}")
        await rt.clusters.forget(row.uuid)
        return
    raise ApiError(
        OPERATION_ERROR,
        f"cannot renew the cephx key of backup storage[uuid:{row.uuid}]: no mon answered over SSH: "
        + "; ".join(e.details for e in errors),
        causes=errors or None,
        status=503,
    )
