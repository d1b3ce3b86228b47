"""Undoing an add that failed or was interrupted: nothing half-made stays.

An add records on its row each step that leaves something in the cluster, and which node
runs it (``adding_node``); so the add itself on a failure, the node on its next start,
or a survivor when the node died (services/node/membership.py ``Leftover``) can take it
all back: the key, the pool it created, the row.
"""
from __future__ import annotations

import logging

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imgstore.db.engine import rows_changed
from imgstore.db.models import CephBackupStorage, Node
from imgstore.services.catalog import tags
from imgstore.services.node.runtime import Runtime
from imgstore.services.storage.cephx import release_cluster_resources

log = logging.getLogger(__name__)


async def undo_add(rt: Runtime, uuid: str) -> None:
    """Remove what a failed or interrupted add made: the key, the pool it created, the row."""
    await rt.clusters.forget(uuid)
    async with rt.db() as db:
        row = await db.get(CephBackupStorage, uuid)
        if row is None:
            return
        await release_cluster_resources(rt, row, drop_pool=bool(row.pool_created))
        await tags.delete_tags_of(db, uuid)
        await db.delete(row)
        await db.commit()


async def clean_up_interrupted_adds(rt: Runtime) -> None:
    """At start: an add this node had not finished died with it; undo it so nothing
    half-made stays (no row stuck in Connecting, no orphan pool or key)."""
    async with rt.db() as db:
        stale = list(
            await db.scalars(
                select(CephBackupStorage.uuid).where(CephBackupStorage.adding_node == rt.node_id)
            )
        )
    for uuid in stale:
        log.warning("undoing the add of backup storage %s interrupted by a restart", uuid)
        await undo_add(rt, uuid)


async def orphan_adds(db: AsyncSession) -> list[tuple[str, str]]:
    """Adds whose node is gone from the ``node`` table: ``(uuid, that node)``."""
    rows = await db.execute(
        select(CephBackupStorage.uuid, CephBackupStorage.adding_node).where(
            CephBackupStorage.adding_node.is_not(None),
            CephBackupStorage.adding_node.not_in(select(Node.id)),
        )
    )
    return [(uuid, node) for uuid, node in rows]


async def claim_orphan_add(db: AsyncSession, uuid: str, dead: str, me: str) -> bool:
    """Compare-and-set the add's node from the dead one to this one: only one survivor
    undoes it, and if this one dies too, the add is again a dead node's."""
    result = await db.execute(
        update(CephBackupStorage)
        .where(CephBackupStorage.uuid == uuid, CephBackupStorage.adding_node == dead)
        .values(adding_node=me)
    )
    await db.commit()
    return bool(rows_changed(result))
