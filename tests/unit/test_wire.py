"""Wire details the ZStack SDKs depend on: dates, the schema map, secrets."""
from datetime import datetime, timezone

from imgstore import crypto
from imgstore.api.envelope import inventories_reply, inventory_reply
from imgstore.api.schemas import CephBackupStorageInventory, CephMonInventory
from imgstore.dates import zstack_date


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
