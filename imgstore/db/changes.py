"""The database's version: a value that stays equal exactly while nothing is committed.

A reply computed from the database can be served again for as long as the version read
before computing it is still the version now: nothing was committed in between, on this
node or any other that shares the database, so the same query would read the same rows.
Both databases keep such a value already, at no cost to writers (no trigger, no hot row):

* SQLite: ``PRAGMA data_version`` on a connection of its own, which never writes. It
  moves on every commit by any other connection, in this process or another.
* PostgreSQL: ``pg_current_snapshot()``. Two equal snapshots see the same committed
  transactions, hence the same rows; any transaction that writes takes a transaction id
  and moves it when it ends. Reads take none and leave it alone.

:meth:`ChangeWatch.version` always answers with a version read *after* it was called.
On PostgreSQL that is a round trip; callers that arrive while one is in flight share
the next one, so a busy node asks once per batch of requests, not once per request.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

#: after a failed read, how long PostgreSQL is not asked again (requests go to their handlers)
RETRY_SECONDS = 1.0


class ChangeWatch:
    """The version of one database, or ``None`` when it cannot be read (then nothing
    may be assumed unchanged)."""

    async def version(self) -> Hashable | None:
        return None

    async def close(self) -> None:
        return None


def watch(url: URL) -> ChangeWatch:
    """The watch for the database at ``url`` (an engine's URL); a plain
    :class:`ChangeWatch` (never a version) for a database no other connection can see."""
    backend = url.get_backend_name()
    if backend == "sqlite" and url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        return SqliteWatch(url.database)
    if backend == "postgresql":
        return PostgresWatch(url.set(drivername="postgresql").render_as_string(hide_password=False))
    return ChangeWatch()


class SqliteWatch(ChangeWatch):
    """``PRAGMA data_version`` on a private connection: a few microseconds, read inline."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    async def version(self) -> Hashable | None:
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            version: int = self._conn.execute("PRAGMA data_version").fetchone()[0]
            return version
        except sqlite3.Error as e:
            log.warning("cannot read the SQLite data version: %s", e)
            await self.close()
            return None

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresWatch(ChangeWatch):
    """``pg_current_snapshot()`` on a connection of its own, one read per batch of callers."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn: psycopg.AsyncConnection | None = None
        self._reads = SharedReads(self._read)
        self._retry_at = 0.0

    async def version(self) -> Hashable | None:
        return await self._reads.next()

    async def _read(self) -> Hashable | None:
        # psycopg (9 MiB resident) is loaded by the nodes that use PostgreSQL only
        import psycopg

        if time.monotonic() < self._retry_at:
            return None  # the database failed a moment ago: no version, and no wait for it
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, connect_timeout=5)
            cur = await self._conn.execute("SELECT pg_current_snapshot()::text")
            row = await cur.fetchone()
            return row[0] if row else None
        except psycopg.Error as e:
            log.warning("cannot read the PostgreSQL snapshot: %s", e.__class__.__name__)
            self._retry_at = time.monotonic() + RETRY_SECONDS
            await self._drop_connection()
            return None

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def close(self) -> None:
        await self._reads.close()
        await self._drop_connection()


class SharedReads:
    """Reads of a value, each caller answered by a read that began after it called.

    Callers that arrive while a read is in flight wait for the next one, which starts
    as soon as that read ends and answers all of them at once.
    """

    def __init__(self, read: Callable[[], Awaitable[Hashable | None]]) -> None:
        self._read = read
        self._waiting: list[asyncio.Future[Hashable | None]] = []
        self._worker: asyncio.Task[None] | None = None

    async def next(self) -> Hashable | None:
        future: asyncio.Future[Hashable | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._serve(), name="shared-reads")
        return await future

    async def _serve(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                value = await self._read()
            except asyncio.CancelledError:
                _answer(batch, None)
                raise
            except Exception:
                log.exception("reading the database version failed")
                value = None
            _answer(batch, value)

    async def close(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        _answer(self._waiting, None)
        self._waiting = []


def _answer(futures: list[asyncio.Future[Hashable | None]], value: Hashable | None) -> None:
    for future in futures:
        if not future.done():  # a caller that gave up (cancelled) wants nothing
            future.set_result(value)
