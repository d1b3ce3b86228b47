"""The database's version, which kept replies are checked against (db/changes.py)."""
from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Hashable
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from imgstore.db.changes import ChangeWatch, SharedReads, SqliteWatch, watch


class Reads:
    """A read that counts itself and waits to be let go, like a round trip in flight."""

    def __init__(self) -> None:
        self.started = 0
        self.go = asyncio.Event()

    async def __call__(self) -> int:
        self.started += 1
        n = self.started
        await self.go.wait()
        self.go.clear()
        return n

    async def in_flight(self, n: int) -> None:
        while self.started < n:  # noqa: ASYNC110  # a test double: yield until the readers started
            await asyncio.sleep(0)


async def read_in_flight() -> tuple[Reads, SharedReads, asyncio.Task[Hashable | None]]:
    """Shared reads whose first caller's read has begun and waits to be let go."""
    reads = Reads()
    shared = SharedReads(reads)
    first = asyncio.create_task(shared.next())
    await reads.in_flight(1)
    return reads, shared, first


@pytest.mark.anyio
async def test_callers_during_a_read_wait_for_the_next_one() -> None:
    reads, shared, first = await read_in_flight()
    later = [asyncio.create_task(shared.next()) for _ in range(5)]
    await asyncio.sleep(0)
    reads.go.set()
    assert await first == 1
    await reads.in_flight(2)
    reads.go.set()
    assert [await t for t in later] == [2] * 5  # one read began after all five asked, and answered them
    assert reads.started == 2


@pytest.mark.anyio
async def test_a_failed_read_is_no_version() -> None:
    async def broken() -> int:
        raise OSError("connection reset")

    shared = SharedReads(broken)
    assert await asyncio.gather(shared.next(), shared.next()) == [None, None]


@pytest.mark.anyio
async def test_closing_answers_the_waiting_callers() -> None:
    _, shared, in_flight = await read_in_flight()
    waiting = asyncio.create_task(shared.next())
    await asyncio.sleep(0)
    await shared.close()  # the read in flight is cancelled: both callers are answered
    assert (await in_flight, await waiting) == (None, None)


@pytest.mark.anyio
async def test_sqlite_version_moves_with_every_commit_of_another_connection(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t (x INTEGER)")
    version = watch(make_url(f"sqlite+aiosqlite:///{path}"))
    assert isinstance(version, SqliteWatch)
    before = await version.version()
    writer.execute("SELECT * FROM t").fetchall()
    assert await version.version() == before  # reads change nothing
    writer.execute("INSERT INTO t VALUES (1)")
    after = await version.version()
    assert after is not None and after != before
    assert await version.version() == after
    await version.close()
    writer.close()


def test_a_database_no_other_connection_sees_has_no_version() -> None:
    assert type(watch(make_url("sqlite+aiosqlite://"))) is ChangeWatch
    assert type(watch(make_url("sqlite+aiosqlite:///:memory:"))) is ChangeWatch
