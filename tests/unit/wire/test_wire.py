"""Wire details the ZStack SDKs depend on: dates, the schema map, secrets."""
from datetime import datetime, timezone

from fastapi.responses import JSONResponse

from imgstore import crypto
from imgstore.api.envelope import JsonReply, inventories_reply, inventory_reply, rows_reply
from imgstore.api.schemas import CephBackupStorageInventory, CephMonInventory, ImageInventory
from imgstore.api.schemas import backup_storage_inventory, backup_storage_inventory_class
from imgstore.db.models import BackupStorage, BackupStorageZoneRef, CephBackupStorage, CephMon, Image
from imgstore.db.models import ImageBackupStorageRef
from imgstore.wire.dates import zstack_date


def test_dates_use_the_us_form_with_an_ascii_space() -> None:
    utc = datetime(2017, 6, 7, 21, 20, 17)
    text = zstack_date(utc)
    local = utc.replace(tzinfo=timezone.utc).astimezone()
    assert text is not None and text.endswith(" PM" if local.hour >= 12 else " AM")
    assert "\u202f" not in text
    assert text.startswith(("Jun 7, 2017", "Jun 8, 2017", "Jun 6, 2017"))


def test_midnight_and_noon_are_twelve() -> None:
    now = datetime.now(timezone.utc).astimezone()
    offset = now.utcoffset()
    for hour, suffix in ((0, "12:05:00 AM"), (12, "12:05:00 PM")):
        local = datetime(2020, 1, 2, hour, 5, 0)
        utc = local - offset
        assert zstack_date(utc).endswith(suffix)


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


def test_query_reply_always_has_a_schema_and_projects_fields() -> None:
    body = inventories_reply([_ceph_inventory()], total=1, fields=("uuid", "name"))
    assert body["inventories"] == [{"uuid": "b" * 32, "name": "bs"}]
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


def test_json_reply_writes_the_bytes_fastapi_would() -> None:
    body = inventories_reply([backup_storage_inventory(_stored_ceph_storage())], 1)
    body["inventories"][0]["poolDiskUtilization"] = float("nan")  # FastAPI answers null for it
    fast = JsonReply(body)
    assert fast.headers["content-type"] == JSONResponse({}).headers["content-type"]
    body["inventories"][0]["poolDiskUtilization"] = None
    assert fast.body == JSONResponse(body).body
