"""bs_ceph_info.json lines and the export URL's Range header, without a cluster."""
from __future__ import annotations

import json
from datetime import datetime

import pytest

from imgstore.api.routes.exports import BadRange, parse_range
from imgstore.db.models import Image, ImageBackupStorageRef
from imgstore.services.images.metadata import (
    inventory_line,
    parse_metadata,
    split_install_path,
    zstack_metadata_pool,
)
from imgstore.wire.dates import parse_zstack_date

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
