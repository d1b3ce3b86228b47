"""Issue 13 point 9: handles outlive no stream, and no stream outlives its handle.

A 64 MiB export is read slowly by a plain HTTP client while the operator reconnects or
deletes the storage: the download must end with every byte (a Reconnect replaces the
node's handle, but the stream keeps the one it started on until it ends) or, for a
Delete, be refused cleanly; never be cut short under a 200. And once a storage is
deleted, the pinger child must stop using its (deleted) cephx key within seconds, not
at its next round.
"""
from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import Api, DevCluster, Server, wait_for
from tests.integration.services.images.test_images import (  # noqa: F401 - files is a fixture
    Files,
    MiB,
    add_image,
    add_storage,
    added,
    files,
    forget_images,
    image_data,
    images,
)
from tests.integration.services.images.test_import_images import put_metadata, rbd_write, zstack_line

pytestmark = pytest.mark.ceph

SIZE = 64 * MiB
HELD_BACK_AT = 8 * MiB  # the client stops reading here while the operator acts


@pytest.fixture
def big_export(api: Api, c1: DevCluster, pool: str, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(storage uuid, export URL, md5 of the 64 MiB): an image named in the pool's metadata."""
    data = image_data(SIZE, seed=9)
    image_uuid = uuid.uuid4().hex
    rbd_write(c1, tmp_path, pool, image_uuid, data)
    put_metadata(c1, pool, [zstack_line(image_uuid, pool, "big", SIZE)])
    r = api.add_ceph("handles", [c1.mon_url], poolName=pool, importImages=True)
    assert r.status_code == 200, r.text
    bs = r.json()["inventory"]["uuid"]
    wait_for(lambda: [i for i in images(api, f"uuid={image_uuid}") if i["status"] == "Ready"], 30)
    r = api.put(f"/backup-storage/{bs}/actions", json={"exportImageFromBackupStorage": {"imageUuid": image_uuid}})
    assert r.status_code == 200, r.text
    yield bs, r.json()["imageUrl"], hashlib.md5(data).hexdigest()
    forget_images(api)


def slow_download(url: str, operator_acts: threading.Event, operator_done: threading.Event) -> tuple[int, int, str]:
    """(status, bytes received, md5): reads HELD_BACK_AT bytes, lets the operator act
    while holding the rest back, then reads on to the end (or until the server stops)."""
    digest, got = hashlib.md5(), 0
    with httpx.stream("GET", url, timeout=60) as r:
        try:
            for piece in r.iter_bytes(256 * 1024):
                digest.update(piece)
                got += len(piece)
                if got >= HELD_BACK_AT and not operator_acts.is_set():
                    operator_acts.set()
                    assert operator_done.wait(60)
                    time.sleep(1.0)  # the old handle would be closed by now
        except httpx.HTTPError:
            pass  # cut short: what the assertions below catch
        return r.status_code, got, digest.hexdigest()


def download_while(url: str, act) -> tuple[int, int, str]:  # type: ignore[no-untyped-def]
    acts, done = threading.Event(), threading.Event()
    result: list[tuple[int, int, str]] = []
    reader = threading.Thread(target=lambda: result.append(slow_download(url, acts, done)))
    reader.start()
    try:
        assert acts.wait(60), "the download did not start"
        act()
    finally:
        done.set()
        reader.join(120)
    assert result, "the download thread failed"
    return result[0]


def test_an_export_under_way_survives_a_reconnect(api: Api, big_export: tuple[str, str, str]) -> None:
    bs, url, md5 = big_export

    def reconnect() -> None:
        r = api.put(f"/backup-storage/{bs}/actions", json={"reconnectBackupStorage": {}})
        assert r.status_code == 200, r.text

    status, got, digest = download_while(url, reconnect)
    assert (status, got) == (200, SIZE), "the stream must finish on the handle it started with"
    assert digest == md5
    # and the next download takes the new handle, whole
    with httpx.stream("GET", url, timeout=60) as r:
        assert r.status_code == 200
        assert hashlib.md5(r.read()).hexdigest() == md5


def test_an_export_under_way_ends_whole_or_refused_when_its_storage_is_deleted(
    api: Api, big_export: tuple[str, str, str]
) -> None:
    bs, url, md5 = big_export

    def delete() -> None:
        assert api.delete(f"/backup-storage/{bs}").status_code == 200

    status, got, digest = download_while(url, delete)
    assert status == 200
    assert (got, digest) == (SIZE, md5), "a 200 promised 64 MiB: every byte, or no 200"
    assert httpx.get(url, timeout=10).status_code == 404, "the storage is gone: so is its export"


# ---------------------------------------------------------------- the pinger child


def pinger_of(server: Server) -> psutil.Process:
    """The server's pinger child (services/health/pinger.py)."""
    for child in psutil.Process(server.proc.pid).children():  # type: ignore[union-attr]
        if "imgstore.services.health.pinger" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no pinger child")


def mon_connections(proc: psutil.Process, cluster: DevCluster) -> int:
    ports = {int(cluster.env["CEPH_MON_PORT"]), int(cluster.env["CEPH_MON_V2_PORT"])}
    return sum(1 for c in proc.net_connections(kind="tcp") if c.raddr and c.raddr.port in ports)


@pytest.fixture
def slow_tracked_server(fresh_server: Server) -> Server:
    """A server whose rounds are 30 s apart: a deleted storage's handle must not wait for one."""
    fresh_server.env.update({"IMGSTORE_PING_INTERVAL": "30", "IMGSTORE_CEPH_TIMEOUT": "3"})
    return fresh_server.start()


@pytest.mark.real_ceph
def test_a_deleted_storage_key_is_dropped_by_the_pinger_at_once(
    slow_tracked_server: Server, c1: DevCluster, pool: str
) -> None:
    api = slow_tracked_server.login()
    r = api.add_ceph("pinged", [c1.mon_url], poolName=pool)
    assert r.status_code == 200, r.text
    inv = r.json()["inventory"]
    client = f"client.imgstore.{inv['uuid']}"
    child = wait_for(lambda: _pinger_or_none(slow_tracked_server), 30)
    wait_for(lambda: mon_connections(child, c1) > 0, 45)  # the first round pinged it

    assert api.delete(f"/backup-storage/{inv['uuid']}").status_code == 200
    assert client not in c1.clients(), "the key is deleted from the cluster"
    deleted_at = time.monotonic()
    wait_for(lambda: mon_connections(child, c1) == 0, 3, every=0.1)
    assert time.monotonic() - deleted_at < 3
    assert child.is_running(), "the child stays for the other storages; only the handle goes"
    time.sleep(2)
    assert mon_connections(child, c1) == 0, "and nothing reconnects with the deleted key"


def _pinger_or_none(server: Server) -> psutil.Process | None:
    try:
        return pinger_of(server)
    except AssertionError:
        return None


# ---------------------------------------------------------------- an upload across a Reconnect


def test_an_upload_resumed_after_a_reconnect_ends_on_its_handle(api: Api, c1: DevCluster, pool: str) -> None:
    bs = api.add_ceph("upload-handles", [c1.mon_url], poolName=pool).json()["inventory"]["uuid"]
    body = {"params": {"name": "up", "url": "upload://", "backupStorageUuids": [bs], "format": "raw"}}
    r = api.post("/images", json=body)
    inv = api.wait_job(r).json()["inventory"]
    url = inv["backupStorageRefs"][0]["uploadUrl"]
    data = image_data(12 * MiB, seed=4)
    half = 6 * MiB
    try:
        first = httpx.put(url, content=data[:half], headers={"Content-Range": f"bytes 0-{half - 1}/{len(data)}"},
                          timeout=60)
        assert first.status_code == 200 and first.json()["offset"] == half, first.text
        r = api.put(f"/backup-storage/{bs}/actions", json={"reconnectBackupStorage": {}})
        assert r.status_code == 200, r.text
        time.sleep(1.0)  # the replaced handle would be closed by now
        rest = httpx.put(url, content=data[half:], timeout=60,
                         headers={"Content-Range": f"bytes {half}-{len(data) - 1}/{len(data)}"})
        assert rest.status_code == 200, rest.text
        ready = rest.json()["inventory"]
        assert ready["status"] == "Ready" and ready["size"] == len(data)
    finally:
        forget_images(api)


def test_a_url_download_under_way_survives_a_reconnect(api: Api, c1: DevCluster, pool: str,
                                                       files: Files) -> None:
    """AddImage from a URL writes through the storage's handle for as long as the source
    takes; a Reconnect in the middle must not close that handle under the writer."""
    data = image_data(12 * MiB, seed=11)
    url = files.add("slow-under-reconnect.raw", data, pause=0.1)
    bs = add_storage(api, c1, pool)
    try:
        r = add_image(api, url, [bs], name="under-reconnect")
        wait_for(lambda: [i for i in images(api, "name=under-reconnect") if i["status"] == "Downloading"], 30,
                 every=0.05)
        time.sleep(0.5)  # some pieces are written through the handle by now
        rc = api.put(f"/backup-storage/{bs}/actions", json={"reconnectBackupStorage": {}})
        assert rc.status_code == 200, rc.text
        inv = added(api, r)
        assert inv["status"] == "Ready"
        assert c1.image_bytes(pool, inv["uuid"]) == data
    finally:
        forget_images(api)
