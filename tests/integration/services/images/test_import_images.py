"""importImages on AddCephBackupStorage, and the metadata object bs_ceph_info.json, on c1.

Pools are prepared the way ZStack leaves them: ``bak-t-<old storage uuid>`` holding RBD
images named by image uuids and ``bs_ceph_info.json``, one ImageInventory JSON per line,
written here with the admin ``rados`` and ``rbd`` CLIs.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, DevCluster, Server, wait_for
from tests.integration.services.images.test_images import MiB, added, forget_images, image_data, images

pytestmark = pytest.mark.ceph

METADATA = "bs_ceph_info.json"
TAKE_ALL = "importImages::all"  # the system tag that adopts images the metadata does not name
ZSTACK_DATE = "Jun 7, 2017 9:20:17 PM"


def put_metadata(cluster: DevCluster, pool: str, lines: list[str]) -> None:
    cluster.put_object(pool, METADATA, "".join(x + "\n" for x in lines).encode())


def metadata(cluster: DevCluster, pool: str) -> dict[str, dict]:
    """The inventories in the pool's bs_ceph_info.json, by uuid ({} when there is none)."""
    data = cluster.get_object(pool, METADATA)
    lines = [json.loads(x) for x in (data or b"").decode().splitlines() if x.strip()]
    return {x["uuid"]: x for x in lines}


def rbd_write(cluster: DevCluster, tmp_path: Path, pool: str, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    cluster.import_image(pool, name, path)
    path.unlink()


def rbd_create(cluster: DevCluster, pool: str, name: str, size_mib: int) -> None:
    cluster.create_image(pool, name, size_mib * MiB)


def zstack_line(image_uuid: str, pool: str, name: str, size: int, *, fmt: str = "raw",
                media: str = "RootVolumeTemplate", status: str = "Ready") -> str:
    """An ImageInventory line as ZStack's management node writes it (Gson, compact)."""
    old_bs = "5f2c9d0e1b7a4c38a6e2d1f0c9b8a7e6"
    return json.dumps({
        "uuid": image_uuid, "name": name, "description": f"{name} from zstack", "state": "Enabled",
        "status": status, "size": size, "actualSize": size // 2, "md5Sum": "not calculated",
        "url": f"http://images.example.com/{name}", "mediaType": media, "guestOsType": "CentOS 7",
        "type": "zstack", "platform": "Linux", "architecture": "x86_64", "format": fmt, "system": False,
        "virtio": True, "createDate": ZSTACK_DATE, "lastOpDate": ZSTACK_DATE,
        "backupStorageRefs": [{
            "id": 12, "imageUuid": image_uuid, "backupStorageUuid": old_bs,
            "installPath": f"ceph://{pool}/{image_uuid}", "status": "Ready",
            "exportUrl": f"http://10.0.0.5:7761/ceph/export/{pool}/{name}-{image_uuid}?token=x",
            "exportMd5Sum": "0123456789abcdef0123456789abcdef",
            "createDate": ZSTACK_DATE, "lastOpDate": ZSTACK_DATE,
        }],
    }, separators=(",", ":"))


@pytest.fixture
def make_pool(api: Api, c1: DevCluster) -> Iterator[Callable[[str], str]]:
    """Make pools of given names on c1; afterwards the images imported are forgotten and
    the pools removed (the api fixture then deletes the storages)."""
    made: list[str] = []

    def make(name: str) -> str:
        made.append(c1.create_pool(name))
        return name

    yield make
    forget_images(api)
    for name in made:
        c1.delete_pool(name)


def add_importing(api: Api, cluster: DevCluster, pool: str, name: str = "imported", take_all: bool = False) -> str:
    """Add a storage with importImages=true; ``take_all``: with the system tag that adopts
    the RBD images the metadata does not name too."""
    params = {"name": name, "monUrls": [cluster.mon_url], "poolName": pool, "importImages": True}
    r = api.post("/backup-storage/ceph", json={"params": params, "systemTags": [TAKE_ALL] if take_all else []})
    assert r.status_code == 200, r.text
    return r.json()["inventory"]["uuid"]


def ready(api: Api, *uuids: str) -> dict[str, dict]:
    """Wait until every image is Ready (the import runs after the add answered)."""
    def all_ready() -> dict[str, dict] | None:
        found = {i["uuid"]: i for i in images(api, f"uuid?={','.join(uuids)}") if i["status"] == "Ready"}
        return found if len(found) == len(uuids) else None

    return wait_for(all_ready, 30)


def test_a_pool_written_by_zstack_is_adopted_with_names_and_formats(
        api: Api, c1: DevCluster, make_pool: Callable[[str], str], tmp_path: Path) -> None:
    old_bs = uuid.uuid4().hex
    pool = make_pool(f"bak-t-{old_bs}")  # ZStack's default pool name of its old storage
    disk, iso, missing, deleted, unlisted = (uuid.uuid4().hex for _ in range(5))
    disk_data = image_data(4 * MiB + 1, zero_tail=MiB)
    rbd_write(c1, tmp_path, pool, disk, disk_data)
    rbd_create(c1, pool, iso, 2)
    rbd_create(c1, pool, deleted, 1)
    rbd_create(c1, pool, unlisted, 1)
    put_metadata(c1, pool, [
        zstack_line(disk, pool, "centos7-disk", len(disk_data)),
        zstack_line(iso, pool, "installer.iso", 2 * MiB, fmt="iso", media="ISO"),
        zstack_line(missing, pool, "gone", MiB),  # its RBD image is not there
        zstack_line(deleted, pool, "deleted", MiB, status="Deleted"),
        "not json at all",
    ])

    bs = add_importing(api, c1, pool)
    adopted = ready(api, disk, iso)

    one = adopted[disk]
    assert (one["name"], one["format"], one["mediaType"]) == ("centos7-disk", "raw", "RootVolumeTemplate")
    assert one["size"] == len(disk_data) and one["actualSize"] == len(disk_data) // 2
    assert (one["platform"], one["guestOsType"], one["architecture"]) == ("Linux", "CentOS 7", "x86_64")
    assert one["md5Sum"] == "not calculated" and one["url"] == "http://images.example.com/centos7-disk"
    assert one["createDate"] == ZSTACK_DATE and one["state"] == "Enabled"
    [ref] = one["backupStorageRefs"]
    assert ref["backupStorageUuid"] == bs and ref["installPath"] == f"ceph://{pool}/{disk}"
    assert ref["status"] == "Ready" and ref["exportUrl"] is None, "the old agent's export URL is not kept"
    two = adopted[iso]
    assert (two["name"], two["format"], two["mediaType"], two["size"]) == ("installer.iso", "iso", "ISO", 2 * MiB)
    assert images(api, f"uuid?={missing},{deleted},{unlisted}") == [], \
        "lines without an RBD image, or not Ready, and images without a line are not adopted"

    # the object is rewritten for the new storage, in ZStack's format
    def rewritten() -> dict[str, dict] | None:
        try:
            m = metadata(c1, pool)
        except ValueError:  # still ZStack's object, with its line that is not JSON
            return None
        return m if m and m[disk]["backupStorageRefs"][0]["backupStorageUuid"] == bs else None

    lines = wait_for(rewritten, 20)
    assert set(lines) == {disk, iso, deleted}, "ZStack's line of a Deleted image with bits stays; the gone one goes"
    assert lines[disk]["name"] == "centos7-disk" and lines[disk]["status"] == "Ready"
    assert lines[iso]["backupStorageRefs"][0]["installPath"] == f"ceph://{pool}/{iso}"

    exported = api.put(f"/backup-storage/{bs}/actions", json={"exportImageFromBackupStorage": {"imageUuid": disk}})
    assert httpx.get(exported.json()["imageUrl"], timeout=60).content == disk_data


def test_a_pool_without_metadata_adopts_images_named_by_uuids_when_asked_to_take_all(
        api: Api, c1: DevCluster, server: Server, make_pool: Callable[[str], str], tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    pool = make_pool(f"imgs-{token}")
    zstack_pool = make_pool(f"bak-t-{token}")  # where ZStack would look: another pool, denied to the key
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    data = image_data(3 * MiB + 17)
    rbd_write(c1, tmp_path, pool, first, data)
    rbd_create(c1, pool, second, 5)
    rbd_create(c1, pool, "not-an-image-uuid", 1)
    rbd_create(c1, pool, uuid.uuid4().hex.upper(), 1)
    put_metadata(c1, zstack_pool, [zstack_line(first, pool, "named-by-zstack", len(data))])

    bs = add_importing(api, c1, pool, take_all=True)
    adopted = ready(api, first, second)

    assert {u: (i["name"], i["format"], i["size"], i["status"]) for u, i in adopted.items()} == {
        first: (first, "raw", len(data), "Ready"),
        second: (second, "raw", 5 * MiB, "Ready"),
    }
    assert adopted[first]["backupStorageRefs"][0]["installPath"] == f"ceph://{pool}/{first}"
    on_storage = [i["uuid"] for i in images(api) if any(r["backupStorageUuid"] == bs for r in i["backupStorageRefs"])]
    assert sorted(on_storage) == sorted([first, second]), "only lowercase 32-hex names are image uuids"
    assert f"cannot read {METADATA} of pool {zstack_pool}" in server.log(), \
        "the storage's key may read its own pool only: ZStack's pool is skipped, with a log line"
    lines = wait_for(lambda: metadata(c1, pool), 20)
    assert set(lines) == {first, second}
    assert lines[first]["backupStorageRefs"][0]["backupStorageUuid"] == bs
    assert metadata(c1, zstack_pool)[first]["name"] == "named-by-zstack", "ZStack's pool is left alone"


def test_importing_again_revives_the_images_of_a_deleted_storage(
        api: Api, c1: DevCluster, make_pool: Callable[[str], str]) -> None:
    pool = make_pool(f"t-{uuid.uuid4().hex[:10]}")
    image_uuid = uuid.uuid4().hex
    rbd_create(c1, pool, image_uuid, 1)
    first_bs = add_importing(api, c1, pool, "first", take_all=True)
    ready(api, image_uuid)
    assert api.delete(f"/images/{image_uuid}").status_code == 200  # Delay: the bits stay
    assert api.delete(f"/backup-storage/{first_bs}").status_code == 200  # DeleteReference
    [gone] = images(api, f"uuid={image_uuid}")
    assert gone["status"] == "Deleted" and gone["backupStorageRefs"] == []

    second_bs = add_importing(api, c1, pool, "second", take_all=True)
    revived = ready(api, image_uuid)[image_uuid]
    assert revived["name"] == image_uuid
    assert [r["backupStorageUuid"] for r in revived["backupStorageRefs"]] == [second_bs]


def test_the_metadata_object_follows_images(api: Api, c1: DevCluster, pool: str) -> None:
    r = api.add_ceph("followed", [c1.mon_url], poolName=pool)
    assert r.status_code == 200, r.text
    bs = r.json()["inventory"]["uuid"]
    uploaded = []
    try:
        for n in range(2):
            body = {"params": {"name": f"disk-{n}", "url": "upload://", "backupStorageUuids": [bs],
                               "format": "raw", "platform": "Linux"}}
            inv = added(api, api.post("/images", json=body))
            put = httpx.put(inv["backupStorageRefs"][0]["uploadUrl"], content=image_data(MiB + n, seed=n), timeout=60)
            assert put.status_code == 200 and put.json()["completed"], put.text
            uploaded.append(inv["uuid"])
        lines = metadata(c1, pool)
        assert set(lines) == set(uploaded), "a line per image that turned Ready"
        line = lines[uploaded[0]]
        assert (line["name"], line["status"], line["format"], line["size"]) == ("disk-0", "Ready", "raw", MiB)
        assert line["backupStorageRefs"] == [{
            "id": line["backupStorageRefs"][0]["id"], "imageUuid": uploaded[0], "backupStorageUuid": bs,
            "installPath": f"ceph://{pool}/{uploaded[0]}", "status": "Ready",
            "createDate": line["backupStorageRefs"][0]["createDate"],
            "lastOpDate": line["backupStorageRefs"][0]["lastOpDate"],
        }]
        assert "platform" in line and "exportUrl" not in line["backupStorageRefs"][0]
        assert line.get("md5Sum") is None, "no digest is taken while writing (CalculateImageHash makes one)"

        put_metadata(c1, pool, ["garbage", json.dumps({"uuid": uploaded[0], "name": "stale"})])
        reconnect = api.put(f"/backup-storage/{bs}/actions", json={"reconnectBackupStorage": {}})
        assert reconnect.status_code == 200, reconnect.text
        lines = metadata(c1, pool)
        assert set(lines) == set(uploaded) and lines[uploaded[0]]["name"] == "disk-0", "reconnect rewrites it all"

        assert api.delete(f"/images/{uploaded[0]}").status_code == 200
        assert api.put(f"/images/{uploaded[0]}/actions", json={"expungeImage": {}}).status_code == 200
        assert set(metadata(c1, pool)) == {uploaded[1]}, "an expunged image's line goes"
    finally:
        forget_images(api)
