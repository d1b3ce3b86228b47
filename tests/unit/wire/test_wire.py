"""Wire details the ZStack SDKs depend on: dates, the schema map, secrets."""
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from imgstore import crypto
from imgstore.api.envelope import JsonReply, dump, inventory_reply, rows_reply, schema_of
from imgstore.api.schemas import (
    CephBackupStorageInventory,
    CephMonInventory,
    backup_storage_inventory,
    backup_storage_inventory_class,
    tag_inventory_class,
)
from imgstore.db.models import (
    BackupStorage,
    BackupStorageZoneRef,
    Base,
    CephBackupStorage,
    CephMon,
    Image,
    ImageBackupStorageRef,
    SystemTag,
    UserTag,
)
from imgstore.db.reads import Reads
from imgstore.services.catalog import queries
from imgstore.services.catalog.tags import SYSTEM_TAG_QUERY, USER_TAG_QUERY
from imgstore.services.images.manage import IMAGE_QUERY
from imgstore.services.storage.manage import BACKUP_STORAGE_QUERY, CEPH_BACKUP_STORAGE_QUERY
from imgstore.wire.dates import parse_zstack_date, zstack_date
from imgstore.wire.inventories import ImageInventory
from imgstore.wire.query import QuerySpec, parse_query


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set the server's local zone (dates are written in it), whatever the machine's."""

    def use(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield use
    monkeypatch.undo()
    time.tzset()


def test_dates_use_the_us_form_with_an_ascii_space(local_zone: Callable[[str], None]) -> None:
    local_zone("UTC")
    assert zstack_date(datetime(2017, 6, 7, 21, 20, 17)) == "Jun 7, 2017 9:20:17 PM"
    local_zone("Asia/Shanghai")  # UTC+8: the next day, in the morning
    assert zstack_date(datetime(2017, 6, 7, 21, 20, 17)) == "Jun 8, 2017 5:20:17 AM"


def test_dates_are_in_the_offset_of_their_own_day(local_zone: Callable[[str], None]) -> None:
    """New York is UTC-5 in January and UTC-4 in July: each date gets its own offset,
    not the offset of the day the server runs."""
    local_zone("America/New_York")
    assert zstack_date(datetime(2020, 1, 2, 5, 5)) == "Jan 2, 2020 12:05:00 AM"
    assert zstack_date(datetime(2020, 7, 2, 16, 5)) == "Jul 2, 2020 12:05:00 PM"


def test_dates_around_a_change_of_offset_are_in_the_offset_of_their_second(local_zone: Callable[[str], None]) -> None:
    """Every second around the changes of New York's and Lord Howe's (30 minutes) offsets
    is written in the local time ``astimezone`` gives it: the moment the clocks move, not
    a minute before or after."""
    for zone, changes in (("America/New_York", (datetime(2020, 3, 8, 7), datetime(2020, 11, 1, 6))),
                          ("Australia/Lord_Howe", (datetime(2020, 4, 4, 15), datetime(2020, 10, 3, 15, 30)))):
        local_zone(zone)
        for change in changes:
            for second in range(-90, 90):
                stored = change + timedelta(seconds=second, microseconds=999_999)
                local = stored.replace(tzinfo=UTC).astimezone()
                expected = (f"{local:%b} {local.day}, {local.year} {local.hour % 12 or 12}:{local:%M:%S} "
                            f"{'AM' if local.hour < 12 else 'PM'}")
                assert zstack_date(stored) == expected, (zone, stored)


def test_midnight_and_noon_are_twelve(local_zone: Callable[[str], None]) -> None:
    local_zone("UTC")
    assert zstack_date(datetime(2020, 1, 2, 0, 5)) == "Jan 2, 2020 12:05:00 AM"
    assert zstack_date(datetime(2020, 1, 2, 12, 5)) == "Jan 2, 2020 12:05:00 PM"


def test_dates_read_back_as_written_whatever_the_locale(local_zone: Callable[[str], None]) -> None:
    """ZStack's form is parsed by hand (wire/dates.py): a German locale cannot matter."""
    local_zone("Asia/Shanghai")
    stored = datetime(2017, 6, 7, 13, 20, 17)
    text = zstack_date(stored)
    assert text == "Jun 7, 2017 9:20:17 PM"
    assert parse_zstack_date(text) == stored
    assert parse_zstack_date("Jun 7, 2017, 9:20:17\u202fPM") == stored  # JDK 9+'s form
    assert parse_zstack_date("Jun 31, 2017 9:20:17 PM") is None
    assert parse_zstack_date(None) is None


def _ceph_inventory() -> CephBackupStorageInventory:
    now = datetime(2020, 1, 1)
    mon = dict(mon_uuid="m" * 32, hostname="h", mon_port=6789, ssh_port=22, ssh_username="root",
               status="Connected", backup_storage_uuid="b" * 32, create_date=now, last_op_date=now)
    return CephBackupStorageInventory(
        uuid="b" * 32, name="bs", url="not used", total_capacity=1, available_capacity=1, type="Ceph",
        state="Enabled", status="Connected", create_date=now, last_op_date=now,
        mons=[CephMonInventory(**mon), CephMonInventory(**{**mon, "hostname": "h2"})], fsid="f",
    )


def test_schema_names_parents_before_children() -> None:
    body = inventory_reply(_ceph_inventory(), with_schema=True)
    schema = list(body["schema"].items())
    assert schema[0] == ("inventory", "org.zstack.storage.ceph.backup.CephBackupStorageInventory")
    assert ("inventory.mons[0]", "org.zstack.storage.ceph.backup.CephBackupStorageMonInventory") in schema
    assert ("inventory.mons[1]", "org.zstack.storage.ceph.backup.CephBackupStorageMonInventory") in schema


def test_inventory_keys_are_camel_case_and_carry_no_password() -> None:
    inv = inventory_reply(_ceph_inventory(), with_schema=False)["inventory"]
    assert {"totalCapacity", "availableCapacity", "attachedZoneUuids", "poolName", "mons"} <= set(inv)
    assert "schema" not in inventory_reply(_ceph_inventory(), with_schema=False)
    assert set(inv["mons"][0]) >= {"monUuid", "hostname", "monAddr", "monPort", "sshPort", "sshUsername", "status"}
    assert not any("password" in k.lower() for k in inv["mons"][0])


def inventories_reply(items: list, total: int | None = None, fields: tuple[str, ...] = ()) -> dict:
    """The reference of a query reply, from the inventory models (pydantic's own dump):
    what rows_reply must write."""
    body: dict = {"inventories": [dump(i, fields) for i in items]}
    if total is not None:
        body["total"] = total
    schema = dict(schema_of(items, "inventories"))
    if fields:
        schema = {p: c for p, c in schema.items() if p.count(".") == 0 or p.split(".")[1].split("[")[0] in fields}
    body["schema"] = schema
    return body


def test_query_reply_always_has_a_schema_and_projects_fields() -> None:
    body = rows_reply([_stored_ceph_storage()], backup_storage_inventory_class, 1, ("uuid", "name"))
    assert body == inventories_reply([backup_storage_inventory(_stored_ceph_storage())], 1, ("uuid", "name"))
    assert body["inventories"] == [{"uuid": "c" * 32, "name": "bs-é"}]
    assert body["total"] == 1
    assert body["schema"] == {"inventories[0]": "org.zstack.storage.ceph.backup.CephBackupStorageInventory"}


def test_passwords_are_stored_salted() -> None:
    digest = crypto.sha512_hex("password")
    a, b = crypto.hash_password(digest), crypto.hash_password(digest)
    assert a != b and digest not in a
    assert crypto.verify_password(digest, a) and not crypto.verify_password("password", a)


def test_secret_box_round_trip(tmp_path) -> None:
    box = crypto.SecretBox.from_settings(None, tmp_path)
    sealed = box.seal("cephx-key")
    assert "cephx-key" not in sealed and box.open(sealed) == "cephx-key"
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
    assert crypto.SecretBox.from_settings(None, tmp_path).open(sealed) == "cephx-key"


# ---------------------------------------------------------------- query replies read straight from rows


def _stored_ceph_storage(with_zones: bool = True) -> CephBackupStorage:
    when = datetime(2021, 3, 4, 5, 6, 7)
    mons = [CephMon(uuid=f"{i}" * 32, hostname=f"mon{i}", mon_addr="10.0.0.1" if i else None, mon_port=6789,
                    ssh_port=22, ssh_username="root", ssh_password="sealed", status="Connected",
                    backup_storage_uuid="c" * 32, create_date=when, last_op_date=when) for i in range(2)]
    refs = [BackupStorageZoneRef(zone_uuid="z" * 32)] if with_zones else []
    return CephBackupStorage(
        uuid="c" * 32, name="bs-é", url="not used", description=None, total_capacity=10 << 40,
        available_capacity=5 << 40, state="Enabled", status="Disconnected", status_reason="no mon answered",
        create_date=when, last_op_date=when, fsid="f", pool_name="p", pool_disk_utilization=0.25,
        ceph_key="sealed", mons=mons, zone_refs=refs,
    )


def _stored_image(name: str, refs: int) -> Image:
    when = datetime(2022, 1, 2, 13, 4, 5)
    return Image(
        uuid=name * 32, name=name, state="Enabled", status="Downloading", size=1 << 30, actual_size=0,
        url="upload://", media_type="RootVolumeTemplate", type="zstack", format="raw", system=False, virtio=True,
        create_date=when, last_op_date=when, backup_storage_refs=[ImageBackupStorageRef(
            id=i, image_uuid=name * 32, backup_storage_uuid=f"{i}" * 32, install_path=f"ceph://p/{i}",
            status="Ready", export_token="hashed", create_date=when, last_op_date=when) for i in range(refs)],
    )


def test_a_query_read_from_rows_answers_what_the_inventory_models_answer() -> None:
    plain = BackupStorage(uuid="d" * 32, name="other", url="u", type="BackupStorage", total_capacity=0,
                          available_capacity=0, state="Disabled", status="Connected",
                          create_date=datetime(2020, 1, 1), last_op_date=datetime(2020, 1, 1))
    rows = [_stored_ceph_storage(), _stored_ceph_storage(with_zones=False), plain]
    for fields in ((), ("uuid", "mons", "attachedZoneUuids"), ("name",)):
        expected = inventories_reply([backup_storage_inventory(r) for r in rows], 3, fields)
        assert rows_reply(rows, backup_storage_inventory_class, 3, fields) == expected
    body = rows_reply(rows, backup_storage_inventory_class)
    assert "total" not in body and list(body["schema"])[:2] == ["inventories[0]", "inventories[0].mons[0]"]
    assert "sshPassword" not in body["inventories"][0]["mons"][0] and "cephKey" not in body["inventories"][0]


def test_an_image_query_read_from_rows_can_amend_each_inventory() -> None:
    rows = [_stored_image("a", 2), _stored_image("b", 0)]
    models = [ImageInventory.model_validate(r) for r in rows]
    for ref in models[0].backup_storage_refs:
        ref.upload_url = "http://upload/a"

    def amend(row: Image, item: dict) -> None:
        if row.uuid == "a" * 32:
            for ref in item["backupStorageRefs"]:
                ref["uploadUrl"] = "http://upload/a"

    assert rows_reply(rows, lambda _: ImageInventory, None, (), amend) == inventories_reply(models)
    assert "exportToken" not in str(rows_reply(rows, lambda _: ImageInventory))


@pytest.mark.anyio
@pytest.mark.parametrize("in_file", [True, False], ids=["file: SQLite threads", "memory: through the engine"])
async def test_a_page_read_without_the_orm_answers_what_the_mapped_objects_answer(
        in_file: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """services/catalog/queries.py reads plain rows into records: the reply is the one the
    mapped objects give, for every kind of row (a base-class query returns Ceph rows whole;
    a SystemTag query never returns user tags), pages and conditions alike, read by either
    of db/reads.py's ways (in a file, the collections of one owner per SELECT)."""
    if in_file:
        monkeypatch.setattr(queries, "MAX_OWNERS", 1)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}" if in_file else "sqlite+aiosqlite://")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    db = async_sessionmaker(engine, expire_on_commit=False)
    when = datetime(2021, 3, 4, 5, 6, 7)
    plain = BackupStorage(uuid="d" * 32, name="other", url="u", type="BackupStorage", total_capacity=0,
                          available_capacity=0, state="Disabled", status="Connected", create_date=when,
                          last_op_date=when)
    tags = [kind(uuid=f"{i}" * 32, resource_uuid="c" * 32, resource_type="BackupStorageVO", tag=f"t{i}",
                 create_date=when, last_op_date=when) for i, kind in enumerate((SystemTag, UserTag, SystemTag))]
    async with db() as session:
        session.add_all([_stored_ceph_storage(), plain, _stored_image("a", 2), _stored_image("b", 0), *tags])
        await session.commit()
    rt = SimpleNamespace(db=db, reads=Reads(engine))
    cases = [(BACKUP_STORAGE_QUERY, backup_storage_inventory_class), (CEPH_BACKUP_STORAGE_QUERY,
             backup_storage_inventory_class), (IMAGE_QUERY, lambda _: ImageInventory),
             (SYSTEM_TAG_QUERY, tag_inventory_class), (USER_TAG_QUERY, tag_inventory_class)]
    for queryable, inventory_class in cases:
        for spec in (QuerySpec(), parse_query([("q", "uuid!=x"), ("limit", "5")])):
            records, _ = await queries.run(rt, queryable, spec)  # type: ignore[arg-type]
            async with db() as session:
                key = queryable.entity.uuid
                objects = (await session.scalars(select(queryable.entity).order_by(key))).all()
                expected = inventories_reply([inventory_class(o).model_validate(o) for o in objects])
            assert sorted(r.uuid for r in records) == [o.uuid for o in objects]
            records.sort(key=lambda r: r.uuid)
            assert rows_reply(records, inventory_class) == expected, queryable.label
    rt.reads.close()
    await engine.dispose()


def test_json_reply_writes_the_bytes_fastapi_would() -> None:
    body = inventories_reply([backup_storage_inventory(_stored_ceph_storage())], 1)
    body["inventories"][0]["poolDiskUtilization"] = float("nan")  # FastAPI answers null for it
    fast = JsonReply(body)
    assert fast.headers["content-type"] == JSONResponse({}).headers["content-type"]
    body["inventories"][0]["poolDiskUtilization"] = None
    assert fast.body == JSONResponse(body).body
