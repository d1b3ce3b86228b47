"""Storage ownership: which live node does each storage's tracker work (ping, reconnect).

Every storage that has finished being added has one row in ``backup_storage_lease``. A
node holds a storage while the row names it and ``expire_date`` is still ahead by the
database's clock. Each heartbeat (services/node/membership.py) a node renews what it holds, takes
free or expired leases up to its fair share, and gives back what it holds beyond it:
a joining node gets work, and a dead node's storages spread over the survivors.

Every change of owner is one conditional UPDATE, a compare-and-set: the row changes only
if it is still free (or still ours). On PostgreSQL under READ COMMITTED the second of two
racing UPDATEs waits for the first to commit, re-reads the row, no longer matches, and
changes nothing; the rows to take are picked ``FOR UPDATE SKIP LOCKED`` so racing nodes
pick different rows instead of queueing behind each other. No two nodes ever hold one
lease.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, exists, func, or_, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from imgstore.db.engine import db_now, rows_changed
from imgstore.db.models import BackupStorageLease as Lease
from imgstore.db.models import CephBackupStorage
from imgstore.services.node.runtime import Runtime


def fair_share(storages: int, live_nodes: int) -> int:
    """The most storages one node should hold: every storage has room somewhere."""
    return math.ceil(storages / max(live_nodes, 1))


def to_take(held: int, storages: int, live_nodes: int) -> int:
    """How many leases a node takes (> 0) or gives back (< 0) to hold its fair share."""
    return fair_share(storages, live_nodes) - held


@dataclass
class Balance:
    """What one settle did, for logs and tests."""

    held: int
    taken: int
    given_back: int


async def settle(
    db: AsyncSession, node: str, now: datetime, until: datetime, live_nodes: int, claim: bool = True
) -> Balance:
    """Renew this node's leases to ``until``, then take or give back to its fair share.
    ``claim=False`` (a node that does not ping) only renews and gives everything back."""
    await _create_missing(db)
    await renew(db, node, until)
    await db.commit()
    storages = await db.scalar(select(func.count()).select_from(Lease)) or 0
    held = await _count_held(db, node)
    want = to_take(held, storages, live_nodes) if claim else -held
    taken = given = 0
    if want > 0:
        taken = await _take(db, node, now, until, want)
    elif want < 0:
        given = await _give_back(db, node, -want)
    return Balance(held=held + taken - given, taken=taken, given_back=given)


async def renew(db: AsyncSession, node: str, until: datetime) -> None:
    """Push this node's leases to ``until``, in the caller's transaction: the heartbeat
    commits them with its node row, so a node killed between two commits never leaves
    leases that expire before its row (survivors would take its storages while it still
    counted as alive)."""
    await db.execute(update(Lease).where(Lease.owner_node == node).values(expire_date=until))


async def owned(rt: Runtime) -> list[str]:
    """The Ceph storages whose lease this node holds now."""
    async with rt.db() as db:
        now = await db_now(db)
        rows = await db.scalars(
            select(CephBackupStorage.uuid)
            .join(Lease, Lease.backup_storage_uuid == CephBackupStorage.uuid)
            .where(Lease.owner_node == rt.node_id, Lease.expire_date > now)
            .where(CephBackupStorage.adding_node.is_(None))
        )
        return list(rows)


async def release_all(db: AsyncSession, node: str) -> None:
    """On a clean stop: everything this node held is free for the others at once."""
    await db.execute(
        update(Lease).where(Lease.owner_node == node).values(owner_node=None, expire_date=None)
    )
    await db.commit()


def _free(now: datetime) -> ColumnElement[bool]:
    return or_(Lease.owner_node.is_(None), Lease.expire_date.is_(None), Lease.expire_date <= now)


async def _count_held(db: AsyncSession, node: str) -> int:
    return await db.scalar(select(func.count()).select_from(Lease).where(Lease.owner_node == node)) or 0


async def _take(db: AsyncSession, node: str, now: datetime, until: datetime, count: int) -> int:
    pick = (
        select(Lease.backup_storage_uuid)
        .where(_free(now))
        .order_by(func.random())  # racing nodes start from different rows
        .limit(count)
        .with_for_update(skip_locked=True)
        .correlate(None)
    )
    result = await db.execute(
        update(Lease)
        .where(Lease.backup_storage_uuid.in_(pick.scalar_subquery()), _free(now))
        .values(owner_node=node, expire_date=until)
    )
    await db.commit()
    return rows_changed(result)


async def _give_back(db: AsyncSession, node: str, count: int) -> int:
    pick = (
        select(Lease.backup_storage_uuid)
        .where(Lease.owner_node == node)
        .order_by(func.random())
        .limit(count)
        .with_for_update(skip_locked=True)
        .correlate(None)
    )
    result = await db.execute(
        update(Lease)
        .where(Lease.backup_storage_uuid.in_(pick.scalar_subquery()), Lease.owner_node == node)
        .values(owner_node=None, expire_date=None)
    )
    await db.commit()
    return rows_changed(result)


async def _create_missing(db: AsyncSession) -> None:
    """A free lease for every storage that has finished being added and has none yet.
    Nodes racing to create the same rows skip each other's (ON CONFLICT DO NOTHING); the
    rows go in uuid order so two such inserts cannot deadlock."""
    missing = (
        select(CephBackupStorage.uuid)
        .where(
            CephBackupStorage.adding_node.is_(None),
            ~exists().where(Lease.backup_storage_uuid == CephBackupStorage.uuid),
        )
        .order_by(CephBackupStorage.uuid)
    )
    columns = ["backup_storage_uuid"]
    if db.get_bind().dialect.name == "postgresql":
        # imported here: a SQLite node never loads PostgreSQL's dialect
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        await db.execute(pg_insert(Lease).from_select(columns, missing).on_conflict_do_nothing())
    else:
        await db.execute(sqlite.insert(Lease).from_select(columns, missing).on_conflict_do_nothing())
    await db.commit()


__all__ = ["Balance", "fair_share", "owned", "release_all", "settle", "to_take"]
