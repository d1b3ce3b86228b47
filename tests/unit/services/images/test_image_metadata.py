"""bs_ceph_info.json lines and the export URL's Range header, without a cluster."""
from __future__ import annotations

import json
from datetime import datetime

import pytest

from imgstore.api.envelope import dump
from imgstore.api.routes.exports import BadRange, parse_range
from imgstore.db.models import Image, ImageBackupStorageRef
from imgstore.services.images.metadata import (
    inventory_line,
    parse_metadata,
    split_install_path,
    zstack_metadata_pool,
)
from imgstore.wire.dates import parse_zstack_date, zstack_date
from imgstore.wire.inventories import ImageInventory
from imgstore.wire.masking import without_credentials

UUID = "0123456789abcdef0123456789abcdef"


def test_zstack_reads_the_metadata_of_bak_t_and_the_last_token_of_the_pool_name() -> None:
    assert zstack_metadata_pool("bak-t-" + UUID) == "bak-t-" + UUID
    assert zstack_metadata_pool("images-" + UUID) == "bak-t-" + UUID
    assert zstack_metadata_pool("images") == "bak-t-images"


def test_install_paths_are_ceph_pool_slash_image() -> None:
    assert split_install_path(f"ceph://pool/{UUID}") == ("pool", UUID)
    for bad in ("", "ceph://pool", "ceph:///x", "rbd://p/x", "ceph://p/a/b"):
        assert split_install_path(bad) is None, bad


def test_a_line_is_a_compact_zstack_image_inventory_with_this_storages_ref() -> None:
    when = datetime(2017, 6, 7, 21, 20, 17)
    image = Image(uuid=UUID, name="disk", state="Enabled", status="Ready", size=10, actual_size=10,
                  md5_sum=None, url="upload://", media_type="RootVolumeTemplate", type="zstack", format="raw",
                  system=False, virtio=True, create_date=when, last_op_date=when)
    ref = ImageBackupStorageRef(id=3, image_uuid=UUID, backup_storage_uuid="b" * 32, install_path=f"ceph://p/{UUID}",
                                status="Ready", export_url="http://x/?token=secret", export_token="hash",
                                create_date=when, last_op_date=when)
    line = inventory_line(image, ref)
    assert "\n" not in line and ": " not in line
    inv = json.loads(line)
    assert "md5Sum" not in inv and "description" not in inv, "nulls are left out, as Gson does"
    assert inv["backupStorageRefs"] == [{
        "id": 3, "imageUuid": UUID, "backupStorageUuid": "b" * 32, "installPath": f"ceph://p/{UUID}",
        "status": "Ready", "createDate": inv["createDate"], "lastOpDate": inv["lastOpDate"]}]
    assert "secret" not in line and "hash" not in line
    assert parse_zstack_date(inv["createDate"]) == when, "dates go out and come back in ZStack's format"


def _full_image() -> tuple[Image, ImageBackupStorageRef]:
    """An image with every field set (imgstore's too) and refs on two storages."""
    when = datetime(2017, 6, 7, 21, 20, 17)
    image = Image(uuid=UUID, name='disque é "q"', description="d\n2", state="Enabled", status="Ready",
                  status_reason="why", size=10, actual_size=9, md5_sum="m" * 32, sha512_sum="s" * 128,
                  url="http://u:p@h/x.qcow2", media_type="RootVolumeTemplate", guest_os_type="Linux",
                  type="zstack", platform="Linux", architecture="x86_64", format="qcow2", system=False,
                  virtio=True, create_date=when, last_op_date=when)
    ref = ImageBackupStorageRef(id=3, image_uuid=UUID, backup_storage_uuid="b" * 32, install_path=f"ceph://p/{UUID}",
                                status="Ready", export_url="http://x/?token=secret", export_token="hash",
                                export_md5_sum="e" * 32, hash_algorithm="SHA256", hash_value="h" * 64,
                                create_date=when, last_op_date=when)
    other = ImageBackupStorageRef(id=4, image_uuid=UUID, backup_storage_uuid="c" * 32, install_path=f"ceph://q/{UUID}",
                                  status="Ready", create_date=when, last_op_date=when)
    image.backup_storage_refs = [other, ref]
    return image, ref


def test_a_line_keeps_the_bytes_zstack_reads_key_for_key() -> None:
    """The line as imgstore wrote it before the inventory was shared with the API."""
    image, ref = _full_image()
    date = zstack_date(image.create_date)
    assert inventory_line(image, ref) == (
        f'{{"uuid":"{UUID}","name":"disque é \\"q\\"","description":"d\\n2","state":"Enabled","status":"Ready",'
        f'"size":10,"actualSize":9,"md5Sum":"{"m" * 32}","url":"http://h/x.qcow2","mediaType":"RootVolumeTemplate",'
        f'"guestOsType":"Linux","type":"zstack","platform":"Linux","architecture":"x86_64","format":"qcow2",'
        f'"system":false,"virtio":true,"createDate":"{date}","lastOpDate":"{date}",'
        f'"backupStorageRefs":[{{"id":3,"imageUuid":"{UUID}","backupStorageUuid":"{"b" * 32}",'
        f'"installPath":"ceph://p/{UUID}","status":"Ready","exportMd5Sum":"{"e" * 32}",'
        f'"createDate":"{date}","lastOpDate":"{date}"}}],"sha512Sum":"{"s" * 128}"}}'
    )


def test_a_line_and_the_api_inventory_agree_on_every_field_the_line_carries() -> None:
    image, ref = _full_image()
    line = json.loads(inventory_line(image, ref))
    api = dump(ImageInventory.model_validate(image))
    [api_ref] = [r for r in api.pop("backupStorageRefs") if r["backupStorageUuid"] == ref.backup_storage_uuid]
    [line_ref] = line.pop("backupStorageRefs")
    assert line.pop("url") == without_credentials(api.pop("url"))
    assert line == {k: v for k, v in api.items() if k in line}
    assert line_ref == {k: v for k, v in api_ref.items() if k in line_ref}
    assert set(api) - set(line) == {"statusReason"}, "imgstore's status reason stays out of the pool"
    assert set(api_ref) - set(line_ref) == {"exportUrl", "uploadUrl", "hashAlgorithm", "hashValue"}


def test_parsing_skips_bad_lines_and_the_last_line_of_a_uuid_wins() -> None:
    data = b"\n".join([
        json.dumps({"uuid": UUID, "name": "old"}).encode(),
        b"garbage",
        json.dumps({"name": "no uuid"}).encode(),
        json.dumps({"uuid": UUID, "name": "new"}).encode(),
        b"",
    ])
    assert parse_metadata(data) == {UUID: {"uuid": UUID, "name": "new"}}


@pytest.mark.parametrize("header, expected", [
    (None, None),
    ("bytes=0-0", (0, 0)),
    ("bytes=10-", (10, 99)),
    ("bytes=-10", (90, 99)),
    ("bytes=-1000", (0, 99)),
    ("bytes=5-500", (5, 99)),
    ("Bytes = 1 - 2", (1, 2)),
])
def test_one_range_of_bytes_is_served(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=5-4", "bytes=-0", "bytes=-", "bytes=0-1,3-4",
                                    "items=0-1", "bytes=a-b"])
def test_other_ranges_are_not_satisfiable(header: str) -> None:
    with pytest.raises(BadRange):
        parse_range(header, 100)
