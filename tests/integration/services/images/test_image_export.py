"""ExportImageFromBackupStorage and DeleteExportedImageFromBackupStorage on the real cluster.

The image is put in the pool the way ZStack would find it: an RBD image named by a uuid,
written with the admin ``rbd import``, adopted by AddCephBackupStorage(importImages=true).
The export URL is then fetched as a third party does: plain HTTP, no session.
"""
from __future__ import annotations

import hashlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import Api, DevCluster, wait_for
from tests.integration.services.images.test_images import (
    MiB,
    added,
    forget_images,
    image_data,
    images,
)

pytestmark = pytest.mark.ceph


def rbd_import(cluster: DevCluster, path: Path, pool: str, name: str) -> None:
    cluster.import_image(pool, name, path)


def adopt_pool(api: Api, cluster: DevCluster, pool: str, *uuids: str) -> str:
    """Add a storage on ``pool`` with importImages=true (and the system tag that adopts
    images no metadata names); wait for the images to be Ready."""
    params = {"name": "exports", "monUrls": [cluster.mon_url], "poolName": pool, "importImages": True}
    r = api.post("/backup-storage/ceph", json={"params": params, "systemTags": ["importImages::all"]})
    assert r.status_code == 200, r.text
    bs = r.json()["inventory"]["uuid"]
    for u in uuids:
        wait_for(lambda u=u: [i for i in images(api, f"uuid={u}") if i["status"] == "Ready"], 30)
    return bs


def export(api: Api, bs: str, image_uuid: str, **params: object) -> httpx.Response:
    return api.put(f"/backup-storage/{bs}/actions",
                   json={"exportImageFromBackupStorage": {"imageUuid": image_uuid, **params}})


@pytest.fixture
def exported(api: Api, c1: DevCluster, pool: str, tmp_path: Path) -> Iterator[tuple[str, str, bytes]]:
    """(storage uuid, image uuid, its bytes): an odd-sized image, random then zeros."""
    data = image_data(9 * MiB + 4321, zero_tail=5 * MiB)
    path = tmp_path / "disk.raw"
    path.write_bytes(data)
    image_uuid = uuid.uuid4().hex
    rbd_import(c1, path, pool, image_uuid)
    bs = adopt_pool(api, c1, pool, image_uuid)
    yield bs, image_uuid, data
    forget_images(api)


def test_the_export_url_serves_the_image_byte_for_byte(api: Api, exported: tuple[str, str, bytes],
                                                      pool: str) -> None:
    bs, image_uuid, data = exported
    r = export(api, bs, image_uuid, exportFormat="raw")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    assert body["exportMd5Sum"] == hashlib.md5(data).hexdigest(), "computed once by reading the image"
    url = body["imageUrl"]
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == str(api.base_url).split("/zstack/")[0]
    assert parts.path == f"/zstack/v1/exports/{pool}/{image_uuid}-{image_uuid}"
    assert len(parse_qs(parts.query)["token"][0]) >= 40

    with httpx.stream("GET", url, timeout=60) as got:  # no session: the token is the credential
        assert got.status_code == 200
        assert got.headers["content-type"] == "application/octet-stream"
        assert got.headers["content-length"] == str(len(data))
        assert got.headers["accept-ranges"] == "bytes"
        assert f'filename="{image_uuid}.raw"' in got.headers["content-disposition"]
        digest = hashlib.sha512()
        for piece in got.iter_bytes():
            digest.update(piece)
    assert digest.hexdigest() == hashlib.sha512(data).hexdigest()

    head = httpx.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data)) and not head.content

    again = export(api, bs, image_uuid)
    assert again.json() == body, "a second export answers the same URL (ZStack)"
    [inv] = images(api, f"uuid={image_uuid}")
    [ref] = inv["backupStorageRefs"]
    assert ref["exportUrl"] == url and ref["exportMd5Sum"] == body["exportMd5Sum"]
    assert "exportToken" not in ref, "only the URL shows the token; the stored hash never leaves"


def test_range_requests_resume_a_download(api: Api, exported: tuple[str, str, bytes]) -> None:
    bs, image_uuid, data = exported
    url = export(api, bs, image_uuid).json()["imageUrl"]
    size = len(data)
    cases = {
        "bytes=0-0": (0, 0),
        "bytes=100-4194403": (100, 4194403),  # across an object boundary
        f"bytes={size - 10}-": (size - 10, size - 1),
        "bytes=-4096": (size - 4096, size - 1),
        f"bytes=5-{size + 100}": (5, size - 1),  # clipped to the end
    }
    for header, (first, last) in cases.items():
        r = httpx.get(url, headers={"Range": header}, timeout=60)
        assert r.status_code == 206, (header, r.text[:200])
        assert r.headers["content-range"] == f"bytes {first}-{last}/{size}", header
        assert r.headers["content-length"] == str(last - first + 1)
        assert r.content == data[first:last + 1], header
    for bad in (f"bytes={size}-", "bytes=10-5", "bytes=0-1,5-6", "items=0-1", "bytes=-0"):
        r = httpx.get(url, headers={"Range": bad})
        assert r.status_code == 416, bad
        assert r.headers["content-range"] == f"bytes */{size}"
        assert r.json()["error"]["code"] == "SYS.1007"


def test_a_wrong_token_is_refused_and_a_revoked_export_is_gone(api: Api,
                                                              exported: tuple[str, str, bytes]) -> None:
    bs, image_uuid, data = exported
    url = export(api, bs, image_uuid).json()["imageUrl"]
    base, token = url.split("?token=")
    for wrong in (f"{base}?token={token[:-2]}xx", base, f"{base}?token="):
        r = httpx.get(wrong)
        assert r.status_code == 403, wrong
        assert r.json()["error"]["code"] == "ID.1002"
    assert httpx.get(f"{base.rsplit('/', 1)[0]}/other-{uuid.uuid4().hex}?token={token}").status_code == 404

    r = api.delete(f"/backup-storage/{bs}/exported-images/{image_uuid}")
    assert r.status_code == 200 and r.json() == {}
    assert httpx.get(url).status_code == 404
    [inv] = images(api, f"uuid={image_uuid}")
    assert inv["backupStorageRefs"][0]["exportUrl"] is None
    again = api.delete(f"/backup-storage/{bs}/exported-images/{image_uuid}", headers={"Prefer": "respond-async"})
    assert api.wait_job(again).json() == {}, "nothing exported: success"

    job = api.put(f"/backup-storage/{bs}/actions", headers={"Prefer": "respond-async"},
                  json={"exportImageFromBackupStorage": {"imageUuid": image_uuid, "exportFormat": "qcow2"}})
    fresh = api.wait_job(job)
    assert fresh.status_code == 200, fresh.text
    new_url = fresh.json()["imageUrl"]
    assert new_url != url and fresh.json()["exportMd5Sum"] == hashlib.md5(data).hexdigest()
    assert httpx.get(new_url, headers={"Range": "bytes=0-9"}).content == data[:10]
    assert httpx.get(url).status_code == 403, "the old token stays dead: a new export has a new token"


def test_export_checks_its_request(api: Api, exported: tuple[str, str, bytes], c2: DevCluster) -> None:
    bs, image_uuid, _ = exported
    missing = export(api, bs, uuid.uuid4().hex)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "SYS.1003"
    bad_format = export(api, bs, image_uuid, exportFormat="vmdk")
    assert bad_format.status_code == 400 and "exportFormat" in bad_format.json()["error"]["details"]
    no_bs = export(api, uuid.uuid4().hex, image_uuid)
    assert no_bs.status_code == 404 and no_bs.json()["error"]["code"] == "SYS.1003"
    r = api.put(f"/backup-storage/{bs}/actions", json={"exportImageFromBackupStorage": {}})
    assert r.status_code == 400 and "imageUuid" in r.json()["error"]["details"]

    p2 = c2.create_pool(f"t-{uuid.uuid4().hex[:10]}")
    try:
        other = api.add_ceph("other-cluster", [c2.mon_url.replace("@127.0.0.1", "@localhost")], poolName=p2)
        assert other.status_code == 200, other.text
        other_bs = other.json()["inventory"]
        wrong_storage = export(api, other_bs["uuid"], image_uuid)
        api.delete(f"/backup-storage/{other_bs['uuid']}")
    finally:
        c2.delete_pool(p2)
    assert wrong_storage.status_code == 409
    error = wrong_storage.json()["error"]
    assert error["code"] == "SYS.1006"
    assert error["details"] == (f"image[uuid: {image_uuid}] is not on backup storage"
                                f"[uuid:{other_bs['uuid']}, name:other-cluster]")


@pytest.mark.real_ceph
def test_an_uploaded_image_exports_with_the_md5_calculate_image_hash_kept(api: Api, exported: tuple[str, str, bytes],
                                                                c1: DevCluster, pool: str) -> None:
    bs, _, _ = exported
    data = image_data(3 * MiB + 5, seed=7)
    body = {"params": {"name": "uploaded disk", "url": "upload://", "backupStorageUuids": [bs], "format": "raw"}}
    inv = added(api, api.post("/images", json=body))
    r = httpx.put(inv["backupStorageRefs"][0]["uploadUrl"], content=data, timeout=60)
    assert r.status_code == 200 and r.json()["completed"] is True, r.text
    md5 = hashlib.md5(data).hexdigest()
    assert r.json()["inventory"].get("md5Sum") is None
    hashed = api.wait_job(api.put(f"/images/{inv['uuid']}/actions",
                                  json={"calculateImageHash": {"backupStorageUuid": bs}}))
    assert hashed.json()["inventory"]["md5Sum"] == md5

    exported_now = export(api, bs, inv["uuid"]).json()
    assert exported_now["exportMd5Sum"] == md5
    assert "/uploaded%20disk-" in exported_now["imageUrl"]
    got = httpx.get(exported_now["imageUrl"], timeout=60)
    assert got.content == data
    assert 'filename="uploaded disk.raw"' in got.headers["content-disposition"]

    listed = subprocess.run(["rados", "-c", c1.env["CEPH_CONF"], "-p", pool, "get", "bs_ceph_info.json", "-"],
                            capture_output=True, text=True, timeout=30)
    assert inv["uuid"] in listed.stdout, "the metadata object follows the new image"
