"""Serialising changes to one resource: on this node, and across nodes sharing PostgreSQL.

:func:`locked_row` holds two locks for the length of one transaction:

* an ``asyncio.Lock`` per (table, uuid) in this process, so two calls on one node queue
  instead of racing (on SQLite this is the only lock that matters: SQLite serves one
  node, and its transactions only take the write lock at the first write, too late for a
  read-decide-write);
* ``SELECT ... FOR UPDATE`` on the row, so on PostgreSQL a call on another node waits
  for this transaction to commit and then reads what it wrote. SQLite ignores it.

Keep the work inside short (database only): a row lock held across a Ceph call would
stall every other node's change to that resource for as long as the cluster is slow.
"""
from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import inspect, select
from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:  # the Runtime holds a RowLocks: it imports this module
    from imgstore.services.node.runtime import Runtime

T = TypeVar("T")


class RowLocks:
    """This node's ``asyncio.Lock`` per row, made on first use (``Runtime.locks``)."""

    def __init__(self) -> None:
        # weak values: a lock lives as long as someone holds or waits for it
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()

    def of(self, table: str, key: str) -> asyncio.Lock:
        """The lock of one row of ``table``."""
        lock = self._locks.get((table, key))
        if lock is None:
            lock = asyncio.Lock()
            self._locks[(table, key)] = lock
        return lock


def local_lock(rt: Runtime, table: str, key: str) -> asyncio.Lock:
    """This node's lock of one row."""
    return rt.locks.of(table, key)


@asynccontextmanager
async def locked_row(rt: Runtime, entity: type[T], key: str) -> AsyncIterator[tuple[AsyncSession, T | None]]:
    """A session whose transaction holds ``entity``'s row ``key`` locked, and the row
    (``None`` when there is none). Commit inside; leaving without commit rolls back."""
    mapper: Any = inspect(entity)
    lock = local_lock(rt, mapper.local_table.name, key)
    async with lock:
        async with rt.db() as db:
            [pk] = mapper.primary_key
            row = await db.scalar(select(entity).where(pk == key).with_for_update())
            yield db, row


async def commit_row(db: AsyncSession, row: T) -> T:
    """Commit, answering the row as this transaction wrote it (not as a later one may have
    left it): the reply of each serialised change is its own."""
    await db.flush()
    await db.refresh(row)
    await db.commit()
    return row
