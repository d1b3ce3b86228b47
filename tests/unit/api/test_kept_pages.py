"""A page cut from a kept list is, byte for byte, the reply its handler writes."""
from __future__ import annotations

from datetime import datetime

import orjson

from imgstore.api.envelope import rows_reply
from imgstore.api.kept_pages import _reply, _written
from imgstore.api.schemas import backup_storage_inventory_class
from imgstore.db.models import BackupStorage, Image
from imgstore.wire.inventories import ImageInventory
from imgstore.wire.query import QuerySpec
from tests.unit.wire.test_wire import _stored_ceph_storage, _stored_image


def _rows() -> list[object]:
    plain = BackupStorage(uuid="d" * 32, name='"quoted" \\ é', url="u", type="BackupStorage", total_capacity=0,
                          available_capacity=0, state="Disabled", status="Connected",
                          create_date=datetime(2020, 1, 1), last_op_date=datetime(2020, 1, 1))
    ceph = [_stored_ceph_storage(with_zones=i % 2 == 0) for i in range(4)]
    return [ceph[0], plain, *ceph[1:]]


def test_every_page_of_a_kept_list_is_the_handlers_bytes() -> None:
    rows = _rows()
    kept = _written(rows, backup_storage_inventory_class)
    for start in range(len(rows) + 2):
        for limit in (0, 1, 2, 3, 100):
            for with_count in (False, True):
                spec = QuerySpec(start=start, limit=limit, reply_with_count=with_count)
                page = rows[start:start + limit]
                expected = rows_reply(page, backup_storage_inventory_class, len(rows) if with_count else None)
                assert _reply(kept.rows, spec) == orjson.dumps(expected), (start, limit, with_count)
    assert kept.size >= sum(len(orjson.dumps(rows_reply([r], backup_storage_inventory_class)["inventories"][0]))
                            for r in rows)


def test_an_amended_list_is_what_the_handler_amends() -> None:
    rows = [_stored_image("a", 2), _stored_image("b", 0), _stored_image("c", 1)]

    def amend(row: Image, item: dict) -> None:
        for ref in item["backupStorageRefs"]:
            ref["uploadUrl"] = f"http://upload/{row.name}"

    kept = _written(rows, lambda _: ImageInventory, amend)
    for start in range(len(rows)):
        spec = QuerySpec(start=start, limit=2, reply_with_count=True)
        expected = rows_reply(rows[start:start + 2], lambda _: ImageInventory, len(rows), (), amend)
        assert _reply(kept.rows, spec) == orjson.dumps(expected)
    assert b"http://upload/a" in _reply(kept.rows, QuerySpec(limit=1))
