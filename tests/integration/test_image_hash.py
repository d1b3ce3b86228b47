"""No digest of every byte while an image is written; CalculateImageHash on demand, and
the digests a client asks for checked while the bytes stream (issue 15), on the real cluster.
"""
from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from tests.conftest import Api, DevCluster
from tests.integration.test_image_upload import start_upload, url_of
from tests.integration.test_images import (
    MiB,
    action,
    added,
    failed,
    image_data,
    images,
    storage,  # noqa: F401 - the fixture
)

pytestmark = pytest.mark.ceph


def uploaded(api: Api, storage: str, data: bytes, **params: object) -> dict:
    inv = start_upload(api, [storage], **params)
    r = httpx.put(url_of(inv), content=data, headers={"X-Image-Size": str(len(data))})
    assert r.status_code == 200 and r.json()["completed"], r.text
    return r.json()["inventory"]


def test_an_image_gets_its_digest_from_calculate_image_hash(api: Api, c1: DevCluster, pool: str,
                                                           storage: str) -> None:
    data = image_data(5 * MiB + 11, zero_tail=9 * MiB)
    ready = uploaded(api, storage, data)
    assert ready.get("md5Sum") is None and ready.get("sha512Sum") is None, "no digest of every byte on write"

    job = os.urandom(16).hex()
    r = api.put(f"/images/{ready['uuid']}/actions", headers={"X-Job-UUID": job},
                json={"calculateImageHash": {"backupStorageUuid": storage}})
    assert r.status_code == 202, "a job, as ZStack's: it reads the whole image"
    inv = added(api, r)
    assert inv["uuid"] == ready["uuid"] and inv["md5Sum"] == hashlib.md5(data).hexdigest()
    [ref] = inv["backupStorageRefs"]
    assert (ref["hashAlgorithm"], ref["hashValue"]) == ("MD5", hashlib.md5(data).hexdigest())
    [progress] = api.get(f"/task-progresses/{job}").json()["inventories"]
    assert progress["taskName"] == "CalculateImageHash" and progress["content"] == "100"
    assert progress["opaque"]["totalBytes"] == len(data)

    for algorithm, name in (("SHA256", "sha256"), ("sha-1", "sha1"), ("SHA512", "sha512")):
        inv = added(api, action(api, ready["uuid"], "calculateImageHash", backupStorageUuid=storage,
                                algorithm=algorithm))
        [ref] = inv["backupStorageRefs"]
        assert ref["hashValue"] == hashlib.new(name, data).hexdigest(), algorithm
    assert inv["sha512Sum"] == hashlib.sha512(data).hexdigest()
    assert inv["md5Sum"] == hashlib.md5(data).hexdigest(), "kept from the MD5 run"
    [queried] = images(api, f"uuid={ready['uuid']}")
    assert queried["backupStorageRefs"][0]["hashAlgorithm"] == "SHA512"


def test_calculate_image_hash_of_a_missing_image_changes_nothing(api: Api, c1: DevCluster, pool: str,
                                                                 storage: str) -> None:
    ready = uploaded(api, storage, image_data(MiB))
    before = images(api)
    missing = "0" * 32
    error = failed(api, action(api, missing, "calculateImageHash", backupStorageUuid=storage))
    assert error["code"] == "SYS.1003" and missing in error["details"]
    error = failed(api, action(api, ready["uuid"], "calculateImageHash", backupStorageUuid=missing))
    assert error["code"] == "SYS.1003" and "backupStorageUuid" in error["details"]
    bad = action(api, ready["uuid"], "calculateImageHash", backupStorageUuid=storage, algorithm="CRC32")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "SYS.1007"
    assert "MD5, SHA1, SHA256, SHA512" in bad.json()["error"]["details"]
    none = action(api, ready["uuid"], "calculateImageHash")
    assert none.status_code == 400 and "backupStorageUuid" in none.text
    assert images(api) == before
