"""A page cut from a kept list is, byte for byte, the reply its handler writes; the list
is kept deflated, and a build notices rows that moved under it."""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from imgstore.api import kept_pages
from imgstore.api.envelope import rows_reply
from imgstore.api.kept_pages import (
    BLOCK_ROWS,
    BUILD_ROWS,
    KeptPages,
    _Changed,
    _List,
    _packed,
    _Packer,
    _reply,
    _Source,
)
from imgstore.api.schemas import backup_storage_inventory_class
from imgstore.db.models import BackupStorage, Image
from imgstore.wire.inventories import ImageInventory
from imgstore.wire.query import QuerySpec
from tests.unit.wire.test_wire import _stored_ceph_storage, _stored_image

#: rows enough for three blocks, the last one short
ROWS = 2 * BLOCK_ROWS + 5


def _storages(n: int = ROWS) -> list[Any]:
    """Ceph storages with and without zones, and a plain one with a name to escape."""
    rows: list[Any] = []
    for i in range(n):
        if i % 5 == 1:
            rows.append(BackupStorage(uuid=f"{i:032x}", name=f'"quoted" \\ é {i}', url="u", type="BackupStorage",
                                      total_capacity=0, available_capacity=i, state="Disabled", status="Connected",
                                      create_date=datetime(2020, 1, 1), last_op_date=datetime(2020, 1, 1)))
        else:
            ceph = _stored_ceph_storage(with_zones=i % 2 == 0)
            ceph.uuid, ceph.name = f"{i:032x}", f"bs-{i}"
            rows.append(ceph)
    return rows


def _kept(rows: Sequence[Any], inventory_class: Callable[[Any], Any], amend: Any = None) -> _List:
    packer = _Packer(budget=1 << 30)
    assert packer.add(rows, inventory_class, amend)
    return packer.done()


def test_every_page_of_a_kept_list_is_the_handlers_bytes() -> None:
    rows = _storages()
    kept = _kept(rows, backup_storage_inventory_class)
    assert len(kept.blocks) == 3
    for start in range(len(rows) + 2):
        for limit in (0, 1, 2, BLOCK_ROWS - 1, BLOCK_ROWS, BLOCK_ROWS + 1, 20, 100):
            for with_count in (False, True):
                spec = QuerySpec(start=start, limit=limit, reply_with_count=with_count)
                page = rows[start:start + limit]
                expected = rows_reply(page, backup_storage_inventory_class, len(rows) if with_count else None)
                assert _reply(kept, spec) == orjson.dumps(expected), (start, limit, with_count)


def test_an_amended_list_is_what_the_handler_amends() -> None:
    rows = [_stored_image("a", 2), _stored_image("b", 0), _stored_image("c", 1)]

    def amend(row: Image, item: dict) -> None:
        for ref in item["backupStorageRefs"]:
            ref["uploadUrl"] = f"http://upload/{row.name}"

    kept = _kept(rows, lambda _: ImageInventory, amend)
    for start in range(len(rows)):
        spec = QuerySpec(start=start, limit=2, reply_with_count=True)
        expected = rows_reply(rows[start:start + 2], lambda _: ImageInventory, len(rows), (), amend)
        assert _reply(kept, spec) == orjson.dumps(expected)
    assert b"http://upload/a" in _reply(kept, QuerySpec(limit=1))


def test_a_list_of_alike_rows_is_kept_in_a_fraction_of_its_json() -> None:
    rows = []
    for i in range(500):
        image = _stored_image("a", 1 + i % 2)
        image.uuid, image.name, image.size = f"{i:032x}", f"image-{i}", i << 20
        rows.append(image)
    kept = _kept(rows, lambda _: ImageInventory)
    json_bytes = len(orjson.dumps(rows_reply(rows, lambda _: ImageInventory)["inventories"]))
    assert kept.size < json_bytes / 4, (kept.size, json_bytes)
    assert len({id(schema) for schema in kept.schemas}) == 2  # rows of one shape share their entries


def _reader(rows: list[Any], moved: set[str] = frozenset()) -> Callable[[list[Any]], Any]:
    """Reads rows by key, as ``catalog.rows_of`` does; the rows of ``moved`` keys are gone."""
    by_key = {row.uuid: row for row in rows}
    batches: list[list[Any]] = []

    async def read(keys: list[Any]) -> tuple[list[Any], None]:
        batches.append(keys)
        return [by_key[k] for k in keys if k not in moved], None

    read.batches = batches  # type: ignore[attr-defined]  # what the test asks of it
    return read


def test_a_list_is_built_a_batch_at_a_time_and_pages_across_batches() -> None:
    rows = _storages()
    read = _reader(rows)
    kept = asyncio.run(_packed([r.uuid for r in rows], read, backup_storage_inventory_class, 1 << 30, batch=7))
    assert kept is not None
    assert [len(b) for b in read.batches] == [7] * 5 + [2]  # type: ignore[attr-defined]
    expected = rows_reply(rows[3:3 + 30], backup_storage_inventory_class, len(rows))
    assert _reply(kept, QuerySpec(start=3, limit=30, reply_with_count=True)) == orjson.dumps(expected)


def test_a_build_whose_rows_moved_under_it_is_not_kept() -> None:
    rows = _storages()
    read = _reader(rows, moved={rows[20].uuid})
    with pytest.raises(_Changed):
        asyncio.run(_packed([r.uuid for r in rows], read, backup_storage_inventory_class, 1 << 30, batch=7))


def test_a_list_past_its_budget_is_not_kept() -> None:
    rows = _storages()
    keys = [r.uuid for r in rows]
    assert asyncio.run(_packed(keys, _reader(rows), backup_storage_inventory_class, 100, batch=BLOCK_ROWS)) is None
    assert asyncio.run(_packed(keys, _reader(rows), backup_storage_inventory_class, 1 << 20)) is not None


class _Changes:
    async def version(self) -> int:
        return 1


class _Routes:
    """What KeptPages asks of a list route (``route_shapes.QueryRoutes``)."""

    queryable = object()
    amend = None

    @staticmethod
    def inventory_class(row: Any) -> Any:
        return backup_storage_inventory_class(row)


class _Database:
    """``catalog.keys`` and ``catalog.rows_of`` over ``rows``, counting the rows each read
    asks for; with ``hold``, the build's second read waits for it (``first_batch`` is set)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, rows: list[Any], hold: asyncio.Event | None = None) -> None:
        self.rows, self.hold, self.reads = rows, hold, list[int]()
        self.first_batch = asyncio.Event()
        monkeypatch.setattr(kept_pages.catalog, "keys", self.keys)
        monkeypatch.setattr(kept_pages.catalog, "rows_of", self.rows_of)
        self.rt: Any = SimpleNamespace(changes=_Changes())
        self.scope: dict[str, Any] = {"path": "/zstack/v1/backup-storage",
                                      "query_string": b"start=5&limit=20&replyWithCount=true",
                                      "app": SimpleNamespace(state=SimpleNamespace(runtime=self.rt))}
        self.page = orjson.dumps(rows_reply(rows[5:25], backup_storage_inventory_class, len(rows)))

    async def keys(self, rt: Any, queryable: Any, spec: QuerySpec, limit: int) -> list[str]:
        return [row.uuid for row in self.rows]

    async def rows_of(self, rt: Any, queryable: Any, keys: list[str], sort: Any) -> list[Any]:
        self.reads.append(len(keys))
        if len(self.reads) == 2 and self.hold is not None:
            self.first_batch.set()
            await self.hold.wait()
        by_key = {row.uuid: row for row in self.rows}
        return [by_key[k] for k in keys]

    def pages(self, **limits: int) -> KeptPages:
        pages = KeptPages(**limits)
        routes: Any = _Routes()
        pages._sources[self.scope["path"]] = _Source("the route", routes)
        pages.forget_all(1)
        return pages


def test_a_long_list_answers_its_pages_by_key_while_its_rows_are_written(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        second_batch = asyncio.Event()
        db = _Database(monkeypatch, _storages(3 * BUILD_ROWS), hold=second_batch)
        pages = db.pages()
        build = asyncio.create_task(pages.missed(db.scope, db.rt, 1, seconds=10.0))
        await db.first_batch.wait()
        page = await asyncio.wait_for(pages.page(db.scope, 1), 1.0)  # the build is held up: by key, not waiting
        assert page == (db.page, "the route")
        assert db.reads[2:] == [20]  # the page's own read, by its keys
        second_batch.set()
        await build
        db.reads.clear()
        assert await pages.page(db.scope, 1) == (db.page, "the route")
        assert db.reads == []  # the rows' JSON now: no read

    asyncio.run(scenario())


def test_a_list_past_what_the_lists_may_hold_keeps_its_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        db = _Database(monkeypatch, _storages(100))
        pages = db.pages(max_bytes=100 * kept_pages.KEY_BYTES + 1000)  # its keys, not its JSON
        await pages.missed(db.scope, db.rt, 1, seconds=10.0)
        db.reads.clear()
        assert await pages.page(db.scope, 1) == (db.page, "the route")
        assert db.reads == [20]  # by its keys

    asyncio.run(scenario())
