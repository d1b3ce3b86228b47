"""Plain reads on the driver (db/reads.py): what queries read through them is what the
database holds, as the ORM would read it, and nothing else."""
from __future__ import annotations

import dataclasses
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from imgstore.db.engine import create_engine
from imgstore.db.models import Base, Zone
from imgstore.db.reads import Reading, Reads, Rows, compile_select

WHEN = datetime(2021, 3, 4, 5, 6, 7)


@pytest.fixture(params=["file", "memory", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A database with two zones: SQLite in a file (read by Reads' own threads), SQLite in
    memory or PostgreSQL (read through the engine)."""
    url = {"file": f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", "memory": "sqlite+aiosqlite://"}.get(request.param)
    if url is None:
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{_pg_database(request)}"
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(insert(Zone), [
            dict(uuid="a" * 32, name="a", state="Enabled", type="zstack", is_default=True, create_date=WHEN,
                 last_op_date=WHEN),
            dict(uuid="b" * 32, name="b", state="Enabled", type="zstack", is_default=False,
                 create_date=WHEN.replace(year=2022), last_op_date=WHEN)])
    yield engine
    await engine.dispose()


def _pg_database(request: pytest.FixtureRequest) -> str:
    """A throw-away database on the local PostgreSQL, dropped after the test; skipped
    when there is none."""
    try:
        admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True, connect_timeout=2)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    name = f"reads_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE DATABASE {name}")

    def drop() -> None:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()

    request.addfinalizer(drop)
    return name


def _one(statement: Any, reads: Reads, **given: Any) -> Reading[Rows]:
    rows = yield compile_select(statement, reads.dialect), given
    return rows


@pytest.mark.anyio
async def test_rows_come_back_typed_as_the_model_reads_them(engine: AsyncEngine) -> None:
    """SQLite keeps dates as text and booleans as integers: a reading answers datetimes
    and bools, as the mapped objects have them."""
    reads = Reads(engine)
    try:
        rows = await reads.run(_one(select(Zone.uuid, Zone.create_date, Zone.is_default).order_by(Zone.uuid), reads))
        assert rows == [("a" * 32, WHEN, True), ("b" * 32, WHEN.replace(year=2022), False)]
    finally:
        reads.close()


@pytest.mark.anyio
async def test_a_date_in_a_condition_matches_the_date_stored(engine: AsyncEngine) -> None:
    """``createDate=<date>`` finds the row stored with that date: SQLite compares the
    text SQLAlchemy wrote (with microseconds), so the date is bound in that form."""
    reads = Reads(engine)
    try:
        assert await reads.run(_one(select(Zone.name).where(Zone.create_date == WHEN), reads)) == [("a",)]
    finally:
        reads.close()


@pytest.mark.anyio
async def test_a_reading_sees_one_snapshot_and_cannot_write(tmp_path: Path) -> None:
    """A page and its collections are read at one moment: a commit between two of its
    statements is not half seen. And a reading never changes the database."""
    path = tmp_path / "r.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")  # WAL, as imgstore's database
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    reads = Reads(engine)
    count = select(func.count()).select_from(Zone)

    def twice() -> Reading[tuple[int, int]]:
        before = yield compile_select(count, reads.dialect), {}
        with sqlite3.connect(path) as other:  # another writer commits meanwhile
            other.execute("INSERT INTO zone (uuid, name, state, type, is_default, create_date, last_op_date) "
                          "VALUES ('c', 'c', 'Enabled', 'zstack', 0, '2021-01-01', '2021-01-01')")
        after = yield compile_select(count, reads.dialect), {}
        return before[0][0], after[0][0]

    def write() -> Reading[None]:
        yield dataclasses.replace(compile_select(count, reads.dialect), text="DELETE FROM zone"), {}

    try:
        assert await reads.run(twice()) == (0, 0)
        assert (await reads.run(_one(count, reads)))[0][0] == 1  # the next reading sees it
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await reads.run(write())
        assert (await reads.run(_one(count, reads)))[0][0] == 1
    finally:
        reads.close()
        await engine.dispose()


def _compiled(statement: Any, reads: Reads) -> Reading[Rows]:
    rows = yield reads.compiled(statement)
    return rows


@pytest.mark.anyio
async def test_selects_of_one_shape_answer_their_own_values(engine: AsyncEngine) -> None:
    """A select compiled once for its shape (get by uuid, ``name?=a,b``, a date) answers
    each later select of that shape with that select's own values, IN lists of any
    length included, and is compiled once per shape."""
    reads = Reads(engine)
    by_uuid = [select(Zone.name).where(Zone.uuid == u) for u in ("a" * 32, "b" * 32, "c" * 32)]
    members = [select(Zone.name).where(Zone.name.in_(names)).order_by(Zone.name)
               for names in (["a"], ["b", "x"], ["x", "y", "b"], ["a", "b"])]
    since = [select(Zone.name).where(Zone.create_date > when) for when in (WHEN, WHEN.replace(year=2000))]
    try:
        assert [await reads.run(_compiled(s, reads)) for s in by_uuid] == [[("a",)], [("b",)], []]
        assert [await reads.run(_compiled(s, reads)) for s in members] == [
            [("a",)], [("b",)], [("b",)], [("a",), ("b",)]]
        assert [await reads.run(_compiled(s, reads)) for s in since] == [[("b",)], [("a",), ("b",)]]
        assert len(reads._compiled) == 1 + 3 + 1  # one per shape; an IN list's per length
    finally:
        reads.close()
