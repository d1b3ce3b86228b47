"""AddImage from http and file, QueryImage, and the image lifecycle, on the real cluster.

The images come from an ``http.server`` on loopback run by the test itself (it can be
slow, cut a download halfway, or announce a size it does not have); what lands in Ceph
is checked with the admin ``rbd`` CLI.
"""
from __future__ import annotations

import hashlib
import http.server
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, DevCluster, Server, free_port, wait_for

pytestmark = pytest.mark.ceph

MiB = 1 << 20


# ---------------------------------------------------------------- an http server of the test's own


@dataclass
class Served:
    """One file of the test http server, and how it is served."""

    data: bytes
    head: bool = True  # answer HEAD with the length
    length: int | None = None  # the Content-Length announced (default: len(data))
    cut_at: int | None = None  # send this many bytes, then close the connection
    pause: float = 0.0  # seconds to wait after each 256 KiB
    gets: int = 0
    cut_when: threading.Event | None = None  # with cut_at: the cut waits for it (60 s at most)


@dataclass
class Files:
    url: str
    served: dict[str, Served] = field(default_factory=dict)

    def add(self, name: str, data: bytes, **how: object) -> str:
        self.served[name] = Served(data, **how)  # type: ignore[arg-type]
        return f"{self.url}/{name}"


def source_port() -> int:
    """A free port for the test's http server, away from the range conftest's servers
    take (a server picks its port when made, binds it later)."""
    return free_port(range(30000 + os.getpid() % 2000, 32760))


@pytest.fixture
def files() -> Iterator[Files]:
    port = source_port()
    files = Files(f"http://127.0.0.1:{port}")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _headers(self, f: Served) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(f.length if f.length is not None else len(f.data)))
            self.end_headers()

        def do_HEAD(self) -> None:
            f = files.served.get(self.path.lstrip("/"))
            if f is None or not f.head:
                self.send_response(404 if f is None else 405)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._headers(f)

        def do_GET(self) -> None:
            f = files.served.get(self.path.lstrip("/"))
            if f is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            f.gets += 1
            self._headers(f)
            body = f.data[: f.cut_at] if f.cut_at is not None else f.data
            for i in range(0, len(body), 256 * 1024):
                self.wfile.write(body[i:i + 256 * 1024])
                if f.pause:
                    self.wfile.flush()
                    time.sleep(f.pause)
            if f.cut_at is not None:
                self.wfile.flush()
                if f.cut_when is not None:
                    f.cut_when.wait(60)
                self.close_connection = True

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield files
    httpd.shutdown()
    httpd.server_close()


# ---------------------------------------------------------------- helpers


def image_data(size: int, zero_tail: int = 0, seed: int = 1) -> bytes:
    """Random-looking bytes (a hash chain: fast, repeatable), then zeros."""
    out = bytearray()
    block = hashlib.sha512(str(seed).encode()).digest() * 512  # 32 KiB
    i = 0
    while len(out) < size:
        out += hashlib.sha512(block[:64] + i.to_bytes(8, "big")).digest() + block[64:]
        i += 1
    return bytes(out[:size]) + bytes(zero_tail)


def add_storage(api: Api, cluster: DevCluster, pool: str, name: str = "images") -> str:
    r = api.add_ceph(name, [cluster.mon_url], poolName=pool)
    assert r.status_code == 200, r.text
    return r.json()["inventory"]["uuid"]


@pytest.fixture
def storage(api: Api, c1: DevCluster, pool: str) -> Iterator[str]:
    """A Ceph storage on a fresh pool; the images made on it are forgotten afterwards,
    so tests on the shared server do not see each other's images."""
    yield add_storage(api, c1, pool)
    forget_images(api)


def forget_images(api: Api) -> None:
    for inv in api.get("/images").json().get("inventories", []):
        api.delete(f"/images/{inv['uuid']}")
        api.put(f"/images/{inv['uuid']}/actions", json={"expungeImage": {}})


def add_image(api: Api, url: str, storages: list[str], **params: object) -> httpx.Response:
    body = {"params": {"name": "img", "url": url, "backupStorageUuids": storages, "format": "raw", **params}}
    return api.post("/images", json=body)


def added(api: Api, response: httpx.Response, timeout: float = 120) -> dict:
    """The job's inventory; the job must succeed."""
    final = api.wait_job(response, timeout)
    assert final.status_code == 200, final.text
    return final.json()["inventory"]


def failed(api: Api, response: httpx.Response, timeout: float = 120) -> dict:
    """The job's error; the job must fail."""
    final = api.wait_job(response, timeout)
    assert final.status_code == 503, final.text
    return final.json()["error"]


def images(api: Api, *conditions: str) -> list[dict]:
    r = api.get("/images", params=[("q", c) for c in conditions])
    assert r.status_code == 200, r.text
    return r.json()["inventories"]


def action(api: Api, uuid: str, action_name: str, **params: object) -> httpx.Response:
    return api.put(f"/images/{uuid}/actions", json={action_name: params})


# ---------------------------------------------------------------- AddImage over http


def downloaded_bytes(api: Api) -> float:
    """The server's ``imgstore_image_bytes_total{direction="download"}``."""
    text = httpx.get(str(api.base_url).split("/zstack/")[0] + "/metrics").text
    line = next(x for x in text.splitlines() if x.startswith('imgstore_image_bytes_total{direction="download"}'))
    return float(line.split()[-1])


@pytest.mark.real_ceph
def test_an_http_image_streams_into_rbd_with_its_checksums(api: Api, c1: DevCluster, pool: str,
                                                           storage: str, files: Files) -> None:
    data = image_data(9 * MiB + 12345, zero_tail=8 * MiB)
    url = files.add("disk.raw", data)
    counted = downloaded_bytes(api)
    r = add_image(api, url, [storage], platform="Linux", architecture="x86_64", guestOsType="Debian 12",
                  description="a disk", systemTags=["bootMode::Legacy"], userTags=["tier::gold"])
    assert r.status_code == 202, "AddImage is a job even when the client did not ask for one"
    inv = added(api, r)
    assert inv["status"] == "Ready" and inv["state"] == "Enabled"
    assert inv.get("md5Sum") is None and inv.get("sha512Sum") is None, \
        "no digest of every byte while writing: CalculateImageHash computes one on demand"
    assert inv["size"] == inv["actualSize"] == len(data)
    assert inv["format"] == "raw" and inv["mediaType"] == "RootVolumeTemplate"
    assert (inv["platform"], inv["architecture"], inv["guestOsType"]) == ("Linux", "x86_64", "Debian 12")
    [ref] = inv["backupStorageRefs"]
    assert ref["backupStorageUuid"] == storage and ref["status"] == "Ready"
    assert ref["installPath"] == f"ceph://{pool}/{inv['uuid']}"
    assert ref.get("uploadUrl") is None
    assert c1.image_bytes(pool, inv["uuid"]) == data
    info = c1.rbd("info", "--format", "json", f"{pool}/{inv['uuid']}").stdout.decode()
    assert '"format": 2' in info or '"format":2' in info
    assert files.served["disk.raw"].gets == 1, "the source is read once"
    assert downloaded_bytes(api) - counted == len(data)
    assert [i["uuid"] for i in images(api, "__userTag__=tier::gold")] == [inv["uuid"]]


def test_progress_is_readable_while_the_download_runs(api: Api, c1: DevCluster, pool: str,
                                                      storage: str, files: Files) -> None:
    data = image_data(12 * MiB)
    url = files.add("slow.raw", data, pause=0.15)
    job_uuid = os.urandom(16).hex()
    r = api.post("/images", headers={"X-Job-UUID": job_uuid}, json={"params": {
        "name": "slow", "url": url, "backupStorageUuids": [storage], "format": "raw"}})
    assert r.status_code == 202
    assert r.json()["location"].endswith(f"/zstack/v1/api-jobs/{job_uuid}")

    def midway() -> dict | None:
        got = api.get(f"/task-progresses/{job_uuid}")
        assert got.status_code == 200, got.text
        [p] = got.json()["inventories"] or [None]
        if p and 0 < int(p["content"]) < 100 and p["opaque"]["bytes"] > 0:
            return p
        return None

    progress = wait_for(midway, 30, every=0.1)
    assert progress["taskName"] == "AddImage" and progress["type"] == "Progress"
    assert progress["opaque"]["totalBytes"] == len(data)
    downloading = [i for i in images(api, "name=slow") if i["status"] == "Downloading"]
    assert downloading, "the image shows Downloading meanwhile"
    inv = added(api, r)
    done = api.get(f"/task-progresses/{job_uuid}", params={"all": "true"}).json()
    assert done["inventories"][0]["content"] == "100"
    assert done["schema"]["inventories[0]"] == "org.zstack.header.core.progress.TaskProgressInventory"
    assert c1.image_bytes(pool, inv["uuid"]) == data


def test_a_qcow2_is_converted_to_raw_and_one_with_a_backing_file_refused(
        api: Api, c1: DevCluster, pool: str, storage: str, files: Files, tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(image_data(3 * MiB, zero_tail=29 * MiB))
    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    source = qcow2.read_bytes()
    inv = added(api, add_image(api, files.add("disk.qcow2", source), [storage], format="qcow2"))
    assert inv["format"] == "raw", "stored as raw, as ZStack's agent does"
    assert inv["size"] == 32 * MiB and inv["actualSize"] == len(source)
    assert inv.get("md5Sum") is None and inv.get("sha512Sum") is None
    assert c1.image_bytes(pool, inv["uuid"]) == raw.read_bytes()

    child = tmp_path / "child.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", str(qcow2), "-F", "qcow2", str(child)],
                   check=True, capture_output=True)
    before = c1.images(pool)
    error = failed(api, add_image(api, files.add("child.qcow2", child.read_bytes()), [storage],
                                  format="qcow2", name="child"))
    assert error["code"] == "SYS.1002"
    assert error["cause"]["code"] == "SYS.1007" and "backing file" in error["cause"]["details"]
    assert images(api, "name=child") == [], "a failed download removes the image"
    assert c1.images(pool) == before


def test_a_download_cut_halfway_leaves_nothing(api: Api, c1: DevCluster, pool: str, storage: str,
                                               files: Files) -> None:
    data = image_data(16 * MiB)
    url = files.add("cut.raw", data, cut_at=7 * MiB)
    before = c1.images(pool)
    error = failed(api, add_image(api, url, [storage], name="cut"))
    assert error["code"] == "SYS.1002"
    assert "Failed to download image[name:cut] on all backup storage" in error["details"]
    assert images(api, "name=cut") == []
    assert c1.images(pool) == before


def test_a_failed_add_leaves_its_storage_as_it_was(fresh_server: Server, c1: DevCluster, pool: str) -> None:
    """A refused call changes nothing (the fuzzing holds every route to that): an add
    whose source refuses the connection leaves its storage's inventory alone, even when
    the cluster's figures moved meanwhile (other writers share it). Its failure re-read
    the capacity and rewrote the row (figures and lastOpDate): a fuzzing failure in CI.
    (No ping here either: the tracker's refresh of the figures is a change of its own.)"""
    fresh_server.env["IMGSTORE_PING_INTERVAL"] = "3600"
    api = fresh_server.start().login()
    storage = add_storage(api, c1, pool)
    before = api.get(f"/backup-storage/{storage}").json()["inventories"][0]
    stored = _pool_stored(c1, pool)
    c1.put_object(pool, "written-by-someone-else", os.urandom(16 * MiB))
    if stored is not None:  # the cluster's figures moved
        wait_for(lambda: _pool_stored(c1, pool) != stored, 30, every=0.5)
    error = failed(api, add_image(api, "http://127.0.0.1:1/closed.raw", [storage], name="refused"))
    assert error["code"] == "SYS.1002", error
    assert api.get(f"/backup-storage/{storage}").json()["inventories"][0] == before


def _pool_stored(cluster: DevCluster, pool: str) -> int | None:
    """Bytes the cluster reports stored in ``pool`` (``ceph df``; its OSDs report every few
    seconds); None where it has no CLI to ask (the fake Ceph: its figures are current)."""
    try:
        pools = cluster.ceph_json("df")["pools"]
    except NotImplementedError:
        return None
    return next((int(p["stats"]["stored"]) for p in pools if p["name"] == pool), 0)  # not reported yet: 0


@pytest.mark.real_ceph
def test_a_failed_download_whose_image_cannot_be_removed_leaves_it_in_the_trash(
        api: Api, c1: DevCluster, pool: str, storage: str, files: Files) -> None:
    """A snapshot someone took of the partial RBD image makes its removal fail: the
    failed add's bits are not forgotten but listed as the storage's trash (trashType
    AddImage), and cleaned up once the snapshot is gone."""
    cut = threading.Event()
    r = add_image(api, files.add("held.raw", image_data(16 * MiB), cut_at=6 * MiB, cut_when=cut), [storage],
                  name="held")
    uuid = wait_for(lambda: next(iter(c1.images(pool)), None), 30)
    wait_for(lambda: c1.rbd("info", f"{pool}/{uuid}").returncode == 0, 10)  # listed before it opens
    assert c1.rbd("snap", "create", f"{pool}/{uuid}@kept").returncode == 0
    cut.set()
    assert failed(api, r)["code"] == "SYS.1002"
    assert images(api, "name=held") == [] and uuid in c1.images(pool)

    def trash() -> list[dict]:
        got = api.get("/backup-storage/trash", params={"uuid": storage})
        assert got.status_code == 200, got.text
        return got.json()["inventories"]

    def clean_up() -> list[str]:
        done = api.put(f"/backup-storage/{storage}/trash/actions", json={"cleanUpTrashOnBackupStorage": {}})
        assert done.status_code == 200, done.text
        return done.json()["result"]["resourceUuids"]

    [entry] = trash()
    assert entry["installPath"] == f"ceph://{pool}/{uuid}" and entry["trashType"] == "AddImage"
    assert entry["resourceUuid"] == uuid and entry["resourceType"] == "ImageVO"
    assert entry["size"] == 16 * MiB, "the size of the RBD image left behind"
    assert clean_up() == [] and trash() == [entry]  # the snapshot still holds it
    assert c1.rbd("snap", "purge", f"{pool}/{uuid}").returncode == 0
    assert clean_up() == [uuid]
    assert uuid not in c1.images(pool) and trash() == []
    again = api.put(f"/backup-storage/{storage}/trash/actions",
                    json={"cleanUpTrashOnBackupStorage": {"trashId": entry["trashId"]}})
    assert again.status_code == 200, "a trashId no longer there is nothing to clean up, as ZStack answers"
    assert again.json()["results"] == [{"resourceUuid": None, "trashId": entry["trashId"], "size": 0,
                                        "success": True, "error": None}]
    assert again.json()["result"] == {"resourceUuids": [], "details": [], "size": 0}


def test_an_image_bigger_than_the_storage_is_refused_before_a_byte_is_read(
        api: Api, c1: DevCluster, pool: str, storage: str, files: Files) -> None:
    url = files.add("huge.raw", b"", length=1 << 40)  # HEAD says 1 TiB
    error = failed(api, add_image(api, url, [storage], name="huge"))
    assert error["code"] == "SYS.1002"
    assert "not enough capacity" in error["cause"]["details"]
    assert files.served["huge.raw"].gets == 0, "refused on HEAD's Content-Length, before the GET"
    assert images(api, "name=huge") == []


def test_a_source_without_head_still_gets_its_size_checked(api: Api, c1: DevCluster, pool: str,
                                                           storage: str, files: Files) -> None:
    data = image_data(2 * MiB + 7)
    inv = added(api, add_image(api, files.add("nohead.raw", data, head=False), [storage]))
    assert inv["size"] == len(data) and c1.image_bytes(pool, inv["uuid"]) == data


# ---------------------------------------------------------------- checks in ZStack's words


def test_add_image_checks_its_request(api: Api, c1: DevCluster, storage: str, files: Files) -> None:
    url = files.add("small.raw", image_data(MiB))
    unknown = "0" * 32
    error = failed(api, add_image(api, url, [unknown]))
    assert error["code"] == "SYS.1003" and unknown in error["details"]
    error = failed(api, add_image(api, url, [storage], mediaType="Floppy"))
    assert error["code"] == "SYS.1007"
    assert error["details"] == ("valid value for field[mediaType] are [RootVolumeTemplate, ISO, "
                                "DataVolumeTemplate], but Floppy found")
    error = failed(api, add_image(api, url, [storage], format="vhdx"))
    assert error["code"] == "SYS.1007" and "unknown format[vhdx]" in error["details"]
    error = failed(api, add_image(api, "ftp://example.invalid/x.img", [storage]))
    assert error["code"] == "SYS.1007" and "ftp://" in error["details"]
    error = failed(api, add_image(api, "/etc/passwd", [storage]))
    assert error["code"] == "SYS.1007" and "allow-list" in error["details"], "file:// is off by default"
    r = api.post("/images", json={"params": {"name": "x", "backupStorageUuids": [storage], "format": "raw"}})
    assert r.status_code == 400 and "field[params.url] is mandatory" in r.json()["error"]["details"]
    # a disabled storage cannot take images
    r = api.put(f"/backup-storage/{storage}/actions", json={"changeBackupStorageState": {"stateEvent": "disable"}})
    assert r.status_code == 200, r.text
    error = failed(api, add_image(api, url, [storage]))
    assert error["code"] == "SYS.1006"
    assert error["details"].startswith(f"no backup storage specified in uuids['{storage}'] is available")
    assert images(api, "name=img") == []


# ---------------------------------------------------------------- QueryImage


def test_query_image_with_refs_and_relations(api: Api, c1: DevCluster, pool: str, storage: str,
                                             files: Files) -> None:
    url = files.add("q.raw", image_data(MiB))
    one = added(api, add_image(api, url, [storage], name="query-one"))
    two = added(api, add_image(api, url, [storage], name="query-two", mediaType="DataVolumeTemplate"))
    found = {i["uuid"] for i in images(api, f"backupStorageRefs.backupStorageUuid={storage}")}
    assert {one["uuid"], two["uuid"]} <= found
    assert [i["uuid"] for i in images(api, "name~=query-%", "mediaType=DataVolumeTemplate")] == [two["uuid"]]
    assert {i["uuid"] for i in images(api, "backupStorage.name=images", "name~=query-%")} == {one["uuid"], two["uuid"]}
    r = api.get(f"/images/{one['uuid']}")
    body = r.json()
    assert [i["uuid"] for i in body["inventories"]] == [one["uuid"]]
    assert body["schema"]["inventories[0]"] == "org.zstack.header.image.ImageInventory"
    assert body["schema"]["inventories[0].backupStorageRefs[0]"] == \
        "org.zstack.header.image.ImageBackupStorageRefInventory"
    r = api.get("/images", params={"q": "name~=query-%", "count": "true"})
    assert r.json() == {"total": 2}
    r = api.get("/images", params={"q": "nosuchfield=1"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "SYS.1007"


# ---------------------------------------------------------------- delete, recover, expunge


def test_delete_is_delayed_then_recover_then_expunge(api: Api, c1: DevCluster, pool: str, storage: str,
                                                      files: Files) -> None:
    inv = added(api, add_image(api, files.add("d.raw", image_data(2 * MiB)), [storage]))
    uuid = inv["uuid"]
    r = api.delete(f"/images/{uuid}")
    assert r.status_code == 200 and r.json() == {}
    [deleted] = images(api, f"uuid={uuid}")
    assert deleted["status"] == "Deleted" and deleted["backupStorageRefs"][0]["status"] == "Deleted"
    assert uuid in c1.images(pool), "Delay keeps the bits"
    r = action(api, uuid, "recoverImage")
    assert r.status_code == 200, r.text
    assert r.json()["inventory"]["status"] == "Ready"
    assert r.json()["inventory"]["backupStorageRefs"][0]["status"] == "Ready"
    r = action(api, uuid, "expungeImage")
    assert r.status_code == 409 and "not deleted" in r.json()["error"]["details"]
    assert api.delete(f"/images/{uuid}").status_code == 200
    r = action(api, uuid, "expungeImage", backupStorageUuids=[storage])
    assert r.status_code == 200 and r.json() == {}
    assert images(api, f"uuid={uuid}") == []
    assert uuid not in c1.images(pool)
    assert api.delete(f"/images/{uuid}").status_code == 200, "deleting an unknown image succeeds"


@pytest.mark.real_ceph
def test_expunging_an_image_with_clones_is_a_conflict_not_a_leak(api: Api, c1: DevCluster, pool: str,
                                                                 storage: str, files: Files) -> None:
    inv = added(api, add_image(api, files.add("c.raw", image_data(MiB)), [storage]))
    uuid = inv["uuid"]
    for args in (("snap", "create", f"{pool}/{uuid}@base"), ("snap", "protect", f"{pool}/{uuid}@base"),
                 ("clone", f"{pool}/{uuid}@base", f"{pool}/vm-disk")):
        assert c1.rbd(*args).returncode == 0
    assert api.delete(f"/images/{uuid}").status_code == 200
    r = action(api, uuid, "expungeImage")
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "SYS.1006" and "clones" in error["details"] and f"{pool}/vm-disk" in error["details"]
    [still] = images(api, f"uuid={uuid}")
    assert still["status"] == "Deleted", "the image stays, its bits known"
    for args in (("rm", f"{pool}/vm-disk"), ("snap", "unprotect", f"{pool}/{uuid}@base"),
                 ("snap", "rm", f"{pool}/{uuid}@base")):
        assert c1.rbd(*args).returncode == 0
    assert action(api, uuid, "expungeImage").status_code == 200
    assert uuid not in c1.images(pool)


def test_state_update_and_size_sync(api: Api, c1: DevCluster, pool: str, storage: str, files: Files) -> None:
    inv = added(api, add_image(api, files.add("s.raw", image_data(MiB)), [storage]))
    uuid = inv["uuid"]
    r = action(api, uuid, "changeImageState", stateEvent="disable")
    assert r.status_code == 200 and r.json()["inventory"]["state"] == "Disabled"
    r = action(api, uuid, "changeImageState", stateEvent="Disable")
    assert r.status_code == 400 and "valid value for field[stateEvent]" in r.json()["error"]["details"]
    r = action(api, uuid, "updateImage", name="renamed", platform="Windows", guestOsType="Windows 11",
               virtio=False)
    assert r.status_code == 200, r.text
    got = r.json()["inventory"]
    assert (got["name"], got["platform"], got["guestOsType"], got["virtio"]) == \
        ("renamed", "Windows", "Windows 11", False)
    r = action(api, uuid, "updateImage", architecture="sparc")
    assert r.status_code == 400
    c1.resize_image(pool, uuid, 8 * MiB)
    r = action(api, uuid, "syncImageSize")
    assert r.status_code == 200 and r.json()["inventory"]["size"] == 8 * MiB
    r = api.put(f"/images/{uuid}/actions", json={"frobnicateImage": {}})
    assert r.status_code == 400 and "expungeImage" in r.json()["error"]["details"]


# ---------------------------------------------------------------- servers of their own: settings


def test_file_urls_are_read_only_inside_the_allow_list(fresh_server: Server, c1: DevCluster, pool: str,
                                                       tmp_path: Path) -> None:
    allowed = tmp_path / "images"
    allowed.mkdir()
    data = image_data(3 * MiB + 1)
    (allowed / "disk.raw").write_bytes(data)
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"not for you" * 1000)
    (allowed / "link.raw").symlink_to(secret)
    fresh_server.env["IMGSTORE_FILE_ALLOW_DIRS"] = str(allowed)
    api = fresh_server.start().login()
    storage = add_storage(api, c1, pool)
    inv = added(api, add_image(api, f"file://{allowed}/disk.raw", [storage]))
    assert c1.image_bytes(pool, inv["uuid"]) == data
    inv = added(api, add_image(api, f"{allowed}/disk.raw", [storage], name="bare-path"))
    assert inv["url"] == f"file://{allowed}/disk.raw", "a bare path is a file:// url"
    sparse = allowed / "sparse.raw"  # pieces of holes, of data and holes, of data
    with sparse.open("wb") as f:
        f.truncate(13 * MiB + 5)
        for at, n in ((MiB, 100_000), (6 * MiB, 2 * MiB), (8 * MiB, 4 * MiB), (13 * MiB, 5)):
            os.pwrite(f.fileno(), image_data(n), at)
    want = sparse.read_bytes()
    inv = added(api, add_image(api, f"file://{sparse}", [storage], name="sparse"))
    assert c1.image_bytes(pool, inv["uuid"]) == want
    tag = f"checksum::SHA256::{hashlib.sha256(want).hexdigest()}"  # read as its bytes
    inv = added(api, add_image(api, f"file://{sparse}", [storage], name="sparse-checked", systemTags=[tag]))
    assert c1.image_bytes(pool, inv["uuid"]) == want
    for url in (f"file://{allowed}/../secret.raw", f"file://{allowed}/link.raw", f"file://{allowed}",
                f"file://{allowed}/missing.raw"):
        error = failed(api, add_image(api, url, [storage], name="refused"))
        assert error["code"] == "SYS.1007", (url, error)
    assert images(api, "name=refused") == []


def test_direct_deletion_removes_the_bits_at_once(fresh_server: Server, c1: DevCluster, pool: str,
                                                  files: Files) -> None:
    fresh_server.env["IMGSTORE_IMAGE_DELETION_POLICY"] = "Direct"
    api = fresh_server.start().login()
    storage = add_storage(api, c1, pool)
    inv = added(api, add_image(api, files.add("x.raw", image_data(MiB)), [storage]))
    assert inv["uuid"] in c1.images(pool)
    assert api.delete(f"/images/{inv['uuid']}").status_code == 200
    assert images(api, f"uuid={inv['uuid']}") == []
    assert inv["uuid"] not in c1.images(pool)


def test_deleted_images_are_expunged_after_the_period(fresh_server: Server, c1: DevCluster, pool: str,
                                                      files: Files) -> None:
    fresh_server.env.update({"IMGSTORE_IMAGE_EXPUNGE_PERIOD": "1", "IMGSTORE_IMAGE_EXPUNGE_INTERVAL": "0.5"})
    api = fresh_server.start().login()
    storage = add_storage(api, c1, pool)
    inv = added(api, add_image(api, files.add("e.raw", image_data(MiB)), [storage]))
    assert api.delete(f"/images/{inv['uuid']}").status_code == 200
    wait_for(lambda: images(api, f"uuid={inv['uuid']}") == [], 15)
    assert inv["uuid"] not in c1.images(pool)


def test_an_image_goes_to_several_storages_from_one_read(api: Api, c1: DevCluster, c2: DevCluster,
                                                         pool: str, files: Files) -> None:
    pool2 = c2.create_pool(f"t-{os.urandom(5).hex()}")
    try:
        one = add_storage(api, c1, pool, "one")
        r = api.add_ceph("two", [c2.mon_url.replace("@127.0.0.1", "@localhost")], poolName=pool2)
        assert r.status_code == 200, r.text
        two = r.json()["inventory"]["uuid"]
        data = image_data(5 * MiB)
        inv = added(api, add_image(api, files.add("two.raw", data), [one, two]))
        assert {r["backupStorageUuid"] for r in inv["backupStorageRefs"]} == {one, two}
        assert files.served["two.raw"].gets == 1
        assert c1.image_bytes(pool, inv["uuid"]) == data
        assert c2.image_bytes(pool2, inv["uuid"]) == data
        assert api.delete(f"/images/{inv['uuid']}").status_code == 200
        assert action(api, inv["uuid"], "expungeImage").status_code == 200
        assert inv["uuid"] not in c2.images(pool2)
    finally:
        forget_images(api)
        for s in api.storages():
            api.delete(f"/backup-storage/{s['uuid']}")
        c2.delete_pool(pool2)


def test_a_server_killed_during_a_download_leaves_nothing_after_its_restart(
        fresh_server: Server, c1: DevCluster, pool: str, files: Files) -> None:
    api = fresh_server.start().login()
    storage = add_storage(api, c1, pool)
    url = files.add("killed.raw", image_data(12 * MiB), pause=0.3)
    r = add_image(api, url, [storage], name="killed")
    assert r.status_code == 202
    [image] = wait_for(lambda: [i for i in images(api, "name=killed") if i["uuid"] in c1.images(pool)], 30)
    fresh_server.stop(signal.SIGKILL)
    api = fresh_server.start().login()
    wait_for(lambda: images(api, "name=killed") == [], 120, every=1)  # the dead client's watch lasts ~30 s
    assert image["uuid"] not in c1.images(pool)
