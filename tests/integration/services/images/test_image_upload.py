"""AddImage(upload://) and the upload URL, on the real cluster: one PUT, resumed PUTs,
a client that hangs up mid-body, qcow2, tokens, deletion and restarts during an upload.

The PUTs are plain HTTP without a session, as a browser or curl sends them.
"""
from __future__ import annotations

import base64
import hashlib
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from imgstore.client.http import ImgstoreClient
from tests.conftest import ADMIN_PASSWORD, Api, DevCluster, Server, wait_for
from tests.integration.services.images.test_images import (
    MiB,
    add_storage,
    added,
    failed,
    image_data,
    images,
    storage,  # noqa: F401 - the fixture
)

pytestmark = pytest.mark.ceph


def start_upload(api: Api, storages: list[str], **params: object) -> dict:
    """AddImage(upload://): the job answers at once with the image waiting for its bytes."""
    body = {"params": {"name": "up", "url": "upload://", "backupStorageUuids": storages, "format": "raw",
                       **params}}
    return added(api, api.post("/images", json=body))


def b64(algorithm: str, data: bytes) -> str:
    return base64.b64encode(hashlib.new(algorithm, data).digest()).decode()


def url_of(inv: dict) -> str:
    [ref] = inv["backupStorageRefs"]
    assert ref["uploadUrl"], inv
    return ref["uploadUrl"]


def test_an_upload_in_one_put(api: Api, c1: DevCluster, pool: str, storage: str) -> None:
    inv = start_upload(api, [storage], platform="Linux")
    assert inv["status"] == "Downloading" and inv["url"] == "upload://"
    [ref] = inv["backupStorageRefs"]
    assert ref["installPath"] == f"ceph://{pool}/{inv['uuid']}" and ref["status"] == "Downloading"
    url = url_of(inv)
    assert url.startswith(f"{str(api.base_url).rstrip('/')}/images/uploads/{inv['uuid']}?token=")
    [queried] = images(api, f"uuid={inv['uuid']}")
    assert queried["backupStorageRefs"][0]["uploadUrl"] == url, "QueryImage shows where to upload"
    details = api.get(f"/images/upload-job/details/{inv['uuid']}").json()["existingJobDetails"]
    assert details == [{"longJobUuid": details[0]["longJobUuid"], "longJobState": "Waiting",
                        "imageUuid": inv["uuid"], "imageUploadUrl": url, "offset": 0}]

    data = image_data(6 * MiB + 3, zero_tail=4 * MiB)
    r = httpx.put(url, content=data, headers={"X-Image-Size": str(len(data)), "X-Image-Uuid": inv["uuid"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["completed"] is True and body["offset"] == len(data)
    ready = body["inventory"]
    assert ready["status"] == "Ready" and ready["backupStorageRefs"][0]["status"] == "Ready"
    assert ready.get("md5Sum") is None and ready.get("sha512Sum") is None, "CalculateImageHash computes them"
    assert ready["size"] == ready["actualSize"] == len(data)
    assert ready["backupStorageRefs"][0].get("uploadUrl") is None
    assert c1.image_bytes(pool, inv["uuid"]) == data
    details = api.get(f"/images/upload-job/details/{inv['uuid']}").json()["existingJobDetails"]
    assert details[0]["longJobState"] == "Succeeded" and details[0]["offset"] == len(data)
    assert details[0]["imageUploadUrl"] is None
    again = httpx.put(url, content=b"x")
    assert again.status_code == 409 and "uploaded already" in again.json()["error"]["details"]
    progress = api.get(f"/task-progresses/{details[0]['longJobUuid']}").json()["inventories"]
    assert progress[0]["content"] == "100"


def test_an_upload_resumes_from_where_it_stands(api: Api, c1: DevCluster, pool: str, storage: str) -> None:
    inv = start_upload(api, [storage])
    url = url_of(inv)
    data = image_data(10 * MiB + 777)
    total = len(data)
    cuts = [0, 3 * MiB + 5, 7 * MiB, total]
    first = httpx.put(url, content=data[:cuts[1]], headers={"Content-Range": f"bytes 0-{cuts[1] - 1}/{total}"})
    assert first.status_code == 200, first.text
    assert first.json() == {"imageUuid": inv["uuid"], "state": "Running", "offset": cuts[1], "size": total,
                            "completed": False}
    assert httpx.head(url).headers["X-Upload-Offset"] == str(cuts[1])
    [waiting] = images(api, f"uuid={inv['uuid']}")
    assert waiting["status"] == "Downloading" and waiting["backupStorageRefs"][0]["uploadUrl"] == url
    wrong = httpx.put(url, content=data[100:200], headers={"X-Upload-Offset": "100"})
    assert wrong.status_code == 409 and wrong.headers["X-Upload-Offset"] == str(cuts[1])
    second = httpx.put(url, content=data[cuts[1]:cuts[2]], headers={"X-Upload-Offset": str(cuts[1]),
                                                                    "X-Image-Size": str(total)})
    assert second.status_code == 200 and second.json()["offset"] == cuts[2]
    details = api.get(f"/images/upload-job/details/{inv['uuid']}").json()["existingJobDetails"]
    assert details[0]["offset"] == cuts[2] and details[0]["longJobState"] == "Running"
    last = httpx.put(url, content=data[cuts[2]:],
                     headers={"Content-Range": f"bytes {cuts[2]}-{total - 1}/{total}"})
    assert last.status_code == 200 and last.json()["completed"] is True
    assert last.json()["inventory"]["size"] == total
    assert c1.image_bytes(pool, inv["uuid"]) == data


def test_a_client_that_hangs_up_mid_body_resumes(api: Api, c1: DevCluster, pool: str, storage: str) -> None:
    inv = start_upload(api, [storage])
    url = url_of(inv)
    data = image_data(9 * MiB)
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port)) as s:
        s.sendall((f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                   f"Content-Length: {len(data)}\r\nContent-Type: application/octet-stream\r\n\r\n").encode())
        s.sendall(data[:5 * MiB])
        time.sleep(0.5)
    # the server keeps what arrived; the offset settles once it has read all of it
    offsets = []

    def settled() -> int | None:
        offsets.append(int(httpx.head(url).headers["X-Upload-Offset"]))
        return offsets[-1] if len(offsets) > 2 and offsets[-1] == offsets[-2] == offsets[-3] > 0 else None

    offset = wait_for(settled, 20, every=0.3)
    assert offset == 5 * MiB, "every byte that arrived is kept, the last partial 4 MiB piece too"
    r = httpx.put(url, content=data[offset:], headers={"X-Upload-Offset": str(offset)})
    assert r.status_code == 200, r.text
    assert c1.image_bytes(pool, inv["uuid"]) == data


def raw_put(url: str, length: int, *headers: str) -> socket.socket:
    """A connection that has sent a PUT's headers (``length`` announced) and no body yet."""
    parts = urlsplit(url)
    s = socket.create_connection((parts.hostname, parts.port), timeout=30)
    s.sendall((f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               f"Content-Length: {length}\r\n{''.join(h + chr(13) + chr(10) for h in headers)}\r\n").encode())
    return s


def response_of(s: socket.socket) -> tuple[bytes, bytes]:
    """The head and body of the HTTP response on ``s``, read until the server closes."""
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    return head, body


def test_a_put_that_expects_100_continue_gets_it_before_its_body(api: Api, c1: DevCluster, pool: str,
                                                                  storage: str) -> None:
    """curl sends ``Expect: 100-continue`` before a body over 1 MiB and waits for the
    interim answer (up to a second) before sending it."""
    inv = start_upload(api, [storage])
    data = image_data(9 * MiB + 11)
    with raw_put(url_of(inv), len(data), "Expect: 100-continue") as s:
        assert s.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(data)
        head, body = response_of(s)
    assert head.startswith(b"HTTP/1.1 200 ") and b'"completed":true' in body, head + body
    assert b"connection: close" in head.lower(), "the body was read past the parser: one request per connection"
    assert c1.image_bytes(pool, inv["uuid"]) == data


def test_a_put_whose_body_falls_silent_ends_and_the_upload_resumes(fresh_server: Server, c1: DevCluster,
                                                                    pool: str) -> None:
    """A client that stops sending mid-body no longer holds the upload (and its lock) for
    ever: after ``image_upload_timeout`` seconds without a byte the PUT answers with the
    offset it reached, and the client (or another) continues from there."""
    fresh_server.env["IMGSTORE_IMAGE_UPLOAD_TIMEOUT"] = "2"
    api = fresh_server.start().login()
    inv = start_upload(api, [add_storage(api, c1, pool)])
    url = url_of(inv)
    data = image_data(10 * MiB + 5)
    with raw_put(url, len(data)) as s:
        s.sendall(data[:6 * MiB + 1])
        started = time.monotonic()
        head, body = response_of(s)
    assert head.startswith(b"HTTP/1.1 200 ") and b'"offset":6291457' in body, head + body
    assert time.monotonic() - started < 15
    r = httpx.put(url, content=data[6 * MiB + 1:], headers={"X-Upload-Offset": str(6 * MiB + 1)})
    assert r.status_code == 200 and r.json()["completed"], r.text
    assert c1.image_bytes(pool, inv["uuid"]) == data


def test_the_upload_url_needs_its_token(api: Api, c1: DevCluster, pool: str, storage: str) -> None:
    inv = start_upload(api, [storage])
    url = url_of(inv)
    base, token = url.split("?token=")
    assert httpx.put(f"{base}?token={token[:-2]}xx", content=b"abc").status_code == 403
    assert httpx.put(base, content=b"abc").status_code == 403
    assert httpx.get(f"{base}?token=nope").status_code == 403
    unknown = url.replace(inv["uuid"], "0" * 32)
    r = httpx.put(unknown, content=b"abc")
    assert r.status_code == 404 and r.json()["error"]["code"] == "SYS.1003"
    assert httpx.get(url).json()["offset"] == 0
    [still] = images(api, f"uuid={inv['uuid']}")
    assert still["status"] == "Downloading"
    two = api.post("/images", json={"params": {"name": "two", "url": "upload://", "format": "raw",
                                               "backupStorageUuids": [storage, "1" * 32]}})
    error = failed(api, two)
    assert error["code"] == "SYS.1007" and "one backup storage" in error["details"]


def test_a_qcow2_upload_is_converted_and_a_backing_file_refused(
        api: Api, c1: DevCluster, pool: str, storage: str, tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(image_data(2 * MiB, zero_tail=14 * MiB))
    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    inv = start_upload(api, [storage], format="qcow2")
    r = httpx.put(url_of(inv), content=qcow2.read_bytes())
    assert r.status_code == 200, r.text
    ready = r.json()["inventory"]
    assert ready["format"] == "raw" and ready["size"] == 16 * MiB
    assert c1.image_bytes(pool, inv["uuid"]) == raw.read_bytes()

    child = tmp_path / "child.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", str(qcow2), "-F", "qcow2", str(child)],
                   check=True, capture_output=True)
    bad = start_upload(api, [storage], format="qcow2", name="child")
    before = c1.images(pool)
    r = httpx.put(url_of(bad), content=child.read_bytes())
    assert r.status_code == 400 and "backing file" in r.json()["error"]["details"]
    [error] = images(api, f"uuid={bad['uuid']}")
    assert error["status"] == "Error" and "backing file" in error["statusReason"]
    assert c1.images(pool) == before
    r = httpx.put(url_of(bad), content=b"more")
    assert r.status_code == 409 and "failed" in r.json()["error"]["details"]


def test_deleting_an_image_during_its_upload_stops_it(api: Api, c1: DevCluster, pool: str,
                                                      storage: str) -> None:
    inv = start_upload(api, [storage])
    url = url_of(inv)
    data = image_data(8 * MiB)
    r = httpx.put(url, content=data[:5 * MiB], headers={"Content-Range": f"bytes 0-{5 * MiB - 1}/{len(data)}"})
    assert r.status_code == 200 and inv["uuid"] in c1.images(pool)
    assert api.delete(f"/images/{inv['uuid']}").status_code == 200
    assert images(api, f"uuid={inv['uuid']}") == []
    assert inv["uuid"] not in c1.images(pool)
    r = httpx.put(url, content=data[5 * MiB:], headers={"X-Upload-Offset": str(5 * MiB)})
    assert r.status_code == 404


def test_the_cli_client_uploads_a_file(api: Api, c1: DevCluster, pool: str, storage: str, server: Server,
                                       tmp_path: Path) -> None:
    path = tmp_path / "cli.raw"
    data = image_data(3 * MiB + 11)
    path.write_bytes(data)
    with ImgstoreClient(server.url) as client:
        client.login("admin", ADMIN_PASSWORD)
        inv = client.upload_image(path, [storage], name="cli", format="raw")
        ready = client.wait_image(inv["uuid"], timeout=60)
    assert ready["status"] == "Ready"
    assert c1.image_bytes(pool, inv["uuid"]) == data


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_an_upload_continues_after_its_server_restarts(fresh_server: Server, c1: DevCluster, pool: str,
                                                       sig: int) -> None:
    api = fresh_server.start().login()
    bs = add_storage(api, c1, pool)
    inv = start_upload(api, [bs])
    url = url_of(inv)
    data = image_data(10 * MiB + 5, zero_tail=2 * MiB)
    sent = 9 * MiB + 3
    r = httpx.put(url, content=data[:sent], headers={"Content-Range": f"bytes 0-{sent - 1}/{len(data)}",
                                                     "Repr-Digest": f"sha-256=:{b64('sha256', data)}:"})
    assert r.status_code == 200 and r.json()["offset"] == sent and inv["uuid"] in c1.images(pool)
    fresh_server.stop(sig)
    api = fresh_server.start().login()
    held = int(httpx.head(url).headers["X-Upload-Offset"])
    assert held == 8 * MiB, "what RBD holds: whole 4 MiB objects, every write acknowledged"
    [waiting] = images(api, f"uuid={inv['uuid']}")
    assert waiting["status"] == "Downloading" and waiting["backupStorageRefs"][0]["uploadUrl"] == url
    wrong = httpx.put(url, content=data[sent:], headers={"X-Upload-Offset": str(sent)})
    assert wrong.status_code == 409 and wrong.headers["X-Upload-Offset"] == str(held)
    # a killed server's watch (and its exclusive lock) lasts until the OSD times it out (~30 s)
    rest = httpx.put(url, content=data[held:], headers={"X-Upload-Offset": str(held)}, timeout=120)
    assert rest.status_code == 200 and rest.json()["completed"], rest.text
    ready = rest.json()["inventory"]
    assert ready["status"] == "Ready" and ready["size"] == len(data)
    assert ready["backupStorageRefs"][0]["hashValue"] == hashlib.sha256(data).hexdigest(), \
        "the digest sent with the first bytes is checked over the bytes read back and the rest"
    assert c1.image_bytes(pool, inv["uuid"]) == data
