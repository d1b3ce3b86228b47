"""No digest of every byte while an image is written; CalculateImageHash on demand, and
the digests a client asks for checked while the bytes stream (issue 15), on the real cluster.
"""
from __future__ import annotations

import base64
import hashlib
import os

import httpx
import pytest

from tests.conftest import Api, DevCluster
from tests.integration.services.images.test_image_upload import start_upload, url_of
from tests.integration.services.images.test_images import (
    Files,
    MiB,
    action,
    add_image,
    added,
    failed,
    files,  # noqa: F401 - the fixture
    image_data,
    images,
    storage,  # noqa: F401 - the fixture
)

pytestmark = pytest.mark.ceph


def put(url: str, **kwargs: object) -> httpx.Response:
    """A PUT to the upload URL, patient: a loaded machine takes seconds to store 8 MiB."""
    return httpx.put(url, timeout=120, **kwargs)  # type: ignore[arg-type]


def uploaded(api: Api, storage: str, data: bytes, **params: object) -> dict:
    inv = start_upload(api, [storage], **params)
    r = put(url_of(inv), content=data, headers={"X-Image-Size": str(len(data))})
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


# ---------------------------------------------------------------- digests the client asks to be checked


def b64(algorithm: str, data: bytes) -> str:
    return base64.b64encode(hashlib.new(algorithm, data).digest()).decode()


def test_an_upload_checks_the_digests_its_client_sends(api: Api, c1: DevCluster, pool: str, storage: str) -> None:
    data = image_data(3 * MiB + 5, zero_tail=4 * MiB)
    inv = start_upload(api, [storage])
    r = put(url_of(inv), content=data, headers={
        "Content-MD5": b64("md5", data), "Repr-Digest": f"sha-256=:{b64('sha256', data)}:, crc32c=:AAAAAA==:"})
    assert r.status_code == 200 and r.json()["completed"], r.text
    ready = r.json()["inventory"]
    assert ready["md5Sum"] == hashlib.md5(data).hexdigest(), "a digest checked on the way is kept"
    [ref] = ready["backupStorageRefs"]
    assert (ref["hashAlgorithm"], ref["hashValue"]) == ("SHA256", hashlib.sha256(data).hexdigest())

    inv = start_upload(api, [storage], name="digest")
    r = put(url_of(inv), content=data, headers={"Digest": f"SHA-512={b64('sha512', data)}"})
    assert r.status_code == 200 and r.json()["inventory"]["sha512Sum"] == hashlib.sha512(data).hexdigest()


@pytest.mark.parametrize("header", ["Content-MD5", "Repr-Digest", "Digest"])
def test_an_upload_whose_digest_differs_leaves_no_rbd_image(api: Api, c1: DevCluster, pool: str, storage: str,
                                                            header: str) -> None:
    data = image_data(6 * MiB + 1)
    sent = data[:-1] + b"x"  # one byte differs from what the digest was taken of
    value = {"Content-MD5": b64("md5", data), "Repr-Digest": f"sha-256=:{b64('sha256', data)}:",
             "Digest": f"sha-512={b64('sha512', data)}"}[header]
    inv = start_upload(api, [storage])
    r = put(url_of(inv), content=sent, headers={header: value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "SYS.1007" and "digest" in r.json()["error"]["details"]
    [gone] = images(api, f"uuid={inv['uuid']}")
    assert gone["status"] == "Error" and "digest" in gone["statusReason"]
    assert inv["uuid"] not in c1.images(pool), "a mismatched upload leaves no RBD image"


def test_a_resumed_upload_checks_the_whole_image_at_its_end(api: Api, c1: DevCluster, pool: str,
                                                            storage: str) -> None:
    data = image_data(8 * MiB)
    inv = start_upload(api, [storage])
    url = url_of(inv)
    digest = {"Repr-Digest": f"sha-256=:{b64('sha256', data)}:"}
    first = put(url, content=data[:5 * MiB], headers={"Content-Range": f"bytes 0-{5 * MiB - 1}/{len(data)}",
                                                            **digest})
    assert first.status_code == 200 and first.json()["offset"] == 5 * MiB
    other = put(url, content=data[5 * MiB:], headers={
        "X-Upload-Offset": str(5 * MiB), "Repr-Digest": f"sha-512=:{b64('sha512', data)}:"})
    assert other.status_code == 400 and "first bytes" in other.text, "a new digest cannot start mid-way"
    last = put(url, content=bytes(3 * MiB), headers={"X-Upload-Offset": str(5 * MiB), **digest})
    assert last.status_code == 400 and "SHA256" in last.text
    assert inv["uuid"] not in c1.images(pool)


def test_add_image_checks_its_checksum_tag(api: Api, c1: DevCluster, pool: str, storage: str,
                                          files: Files) -> None:
    data = image_data(4 * MiB + 3)
    url = files.add("tagged.raw", data)
    good = f"checksum::SHA256::{hashlib.sha256(data).hexdigest()}"
    inv = added(api, add_image(api, url, [storage], name="tagged", systemTags=[good]))
    assert inv["backupStorageRefs"][0]["hashValue"] == hashlib.sha256(data).hexdigest()

    before = c1.images(pool)
    wrong = f"checksum::md5::{hashlib.md5(b'other').hexdigest()}"
    error = failed(api, add_image(api, url, [storage], name="wrong", systemTags=[wrong]))
    assert error["code"] == "SYS.1002" and "MD5 digest" in error["cause"]["details"]
    assert images(api, "name=wrong") == [] and c1.images(pool) == before

    bad = add_image(api, url, [storage], name="bad", systemTags=["checksum::crc32::1234"])
    assert bad.status_code in (400, 202)
    error = bad.json()["error"] if bad.status_code == 400 else failed(api, bad)
    assert error["code"] == "SYS.1007" and "checksum::<algorithm>::<hex digest>" in error["details"]
    assert images(api, "name=bad") == []

    up = start_upload(api, [storage], name="tagged-upload", systemTags=[wrong])
    r = put(url_of(up), content=data)
    assert r.status_code == 400 and "MD5 digest" in r.json()["error"]["details"]
    assert up["uuid"] not in c1.images(pool)
