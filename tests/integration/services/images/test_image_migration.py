"""BackupStorageMigrateImage between two clusters, GetBackupStorageCandidatesForImageMigration,
and the trash a copy leaves when it cannot finish (issue 16 points 2 and 4).

The second storage is on the second dev cluster and reaches its mon as ``localhost``:
mon hostnames are unique across storages, as in ZStack."""
from __future__ import annotations

import json
import signal
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import Api, DevCluster, Server, wait_for
from tests.integration.services.images.test_images import (  # noqa: F401 - fixtures
    Files,
    MiB,
    add_image,
    added,
    files,
    forget_images,
    image_data,
)


def localhost_url(cluster: DevCluster) -> str:
    return cluster.mon_url_with().replace("@127.0.0.1:", "@localhost:")


def add(api: Api, name: str, url: str, pool: str) -> str:
    r = api.add_ceph(name, [url], poolName=pool)
    assert r.status_code == 200, r.text
    return r.json()["inventory"]["uuid"]


@pytest.fixture
def two(api: Api, c1: DevCluster, c2: DevCluster, pool: str, pool2: str) -> Iterator[tuple[str, str]]:
    yield add(api, "src", c1.mon_url, pool), add(api, "dst", localhost_url(c2), pool2)
    forget_images(api)


def migrate(api: Api, image: str, src: str, dst: str, **headers: str):  # type: ignore[no-untyped-def]
    return api.put(f"/backup-storage/images/{image}/actions", headers=headers,
                   json={"backupStorageMigrateImage": {"srcBackupStorageUuid": src, "dstBackupStorageUuid": dst}})


def trash(api: Api, bs: str, **query: str) -> list[dict]:
    r = api.get("/backup-storage/trash", params={"uuid": bs, **query})
    assert r.status_code == 200, r.text
    return r.json()["inventories"]


def used_bytes(cluster: DevCluster, pool: str, name: str) -> int:
    out = subprocess.run(["rbd", "-c", cluster.env["CEPH_CONF"], "du", "--format", "json", f"{pool}/{name}"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return sum(i["used_size"] for i in json.loads(out)["images"])


def test_candidates_are_the_other_usable_storages(api: Api, two: tuple[str, str]) -> None:
    src, dst = two
    r = api.get(f"/backup-storage/{src}/migration-candidates")
    assert r.status_code == 200, r.text
    assert [i["uuid"] for i in r.json()["inventories"]] == [dst]
    api.put(f"/backup-storage/{dst}/actions", json={"changeBackupStorageState": {"stateEvent": "disable"}})
    assert api.get(f"/backup-storage/{src}/migration-candidates").json()["inventories"] == []
    assert api.get(f"/backup-storage/{uuid.uuid4().hex}/migration-candidates").status_code == 404


@pytest.mark.real_ceph
def test_migrate_copies_the_bits_thin_and_verified(api: Api, c1: DevCluster, c2: DevCluster, pool: str,
                                                   pool2: str, two: tuple[str, str], files: Files) -> None:
    src, dst = two
    data = image_data(3 * MiB, zero_tail=29 * MiB)  # 32 MiB, 29 of them a hole
    inv = added(api, add_image(api, files.add("m.raw", data), [src]))
    job = uuid.uuid4().hex
    done = api.wait_job(migrate(api, inv["uuid"], src, dst, **{"X-Job-UUID": job}))
    assert done.status_code == 200, done.text
    refs = {r["backupStorageUuid"]: r for r in done.json()["inventory"]["backupStorageRefs"]}
    assert set(refs) == {src, dst}
    assert refs[dst]["status"] == "Ready" and refs[dst]["installPath"] == f"ceph://{pool2}/{inv['uuid']}"
    assert c2.image_bytes(pool2, inv["uuid"]) == data
    assert used_bytes(c2, pool2, inv["uuid"]) <= 8 * MiB  # the hole was not written
    [progress] = api.get(f"/task-progresses/{job}").json()["inventories"]
    assert progress["content"] == "100"
    assert trash(api, dst) == []
    # again: already there
    r = migrate(api, inv["uuid"], src, dst)
    assert r.status_code == 409 and "already on" in r.json()["error"]["details"]
    r = migrate(api, inv["uuid"], src, src)  # the same storage: the image is there already
    assert r.status_code == 409 and "already on" in r.json()["error"]["details"]
    r = migrate(api, uuid.uuid4().hex, src, dst)
    assert r.status_code == 404


@pytest.mark.real_ceph
def test_a_failed_copy_leaves_nothing_on_the_destination(api: Api, c1: DevCluster, c2: DevCluster, pool: str,
                                                         pool2: str, two: tuple[str, str], files: Files) -> None:
    """From the second cluster to the first: the source's OSD stops mid-copy, its reads
    time out, and the partial image on the destination goes."""
    dst, src = two
    # big enough that the copy outlasts stopping the OSD on an idle machine (128 MiB did not)
    inv = added(api, add_image(api, files.add("f.raw", image_data(512 * MiB)), [src]), timeout=300)
    job = uuid.uuid4().hex
    r = migrate(api, inv["uuid"], src, dst, **{"X-Job-UUID": job})

    def copying() -> bool:
        rows = api.get(f"/task-progresses/{job}").json().get("inventories", [])
        return bool(rows) and (rows[0].get("opaque") or {}).get("copied", 0) > 0

    wait_for(copying, 120, every=0.05)
    c2.devcluster("daemon-stop", "osd")
    try:
        done = api.wait_job(r, timeout=120)
    finally:
        c2.devcluster("daemon-start", "osd")
    assert done.status_code == 503, done.text
    assert inv["uuid"] not in c1.images(pool)
    refs = api.get(f"/images/{inv['uuid']}").json()["inventories"][0]["backupStorageRefs"]
    assert [ref["backupStorageUuid"] for ref in refs] == [src]
    assert trash(api, dst) == []
    [progress] = api.get(f"/task-progresses/{job}").json()["inventories"]
    assert progress["opaque"]["stage"] == "Failed"


def test_trash_arguments_are_checked(api: Api, two: tuple[str, str]) -> None:
    src, _ = two
    assert api.get("/backup-storage/trash").status_code == 400
    r = api.get("/backup-storage/trash", params={"uuid": src, "resourceUuid": uuid.uuid4().hex})
    assert r.status_code == 400 and "together" in r.json()["error"]["details"]
    r = api.get("/backup-storage/trash", params={"uuid": src, "trashType": "Other"})
    assert r.status_code == 400
    assert api.get("/backup-storage/trash", params={"uuid": uuid.uuid4().hex}).status_code == 404
    r = api.put(f"/backup-storage/{src}/trash/actions", json={"cleanUpTrashOnBackupStorage": {}})
    assert r.status_code == 200 and r.json()["result"] == {"resourceUuids": [], "details": [], "size": 0}


@pytest.mark.real_ceph
def test_a_copy_cut_by_a_kill_is_trash_at_the_next_start(fresh_server: Server, c1: DevCluster, c2: DevCluster,
                                                         pool: str, pool2: str, files: Files) -> None:
    fresh_server.start()
    api = fresh_server.login()
    src, dst = add(api, "src", c1.mon_url, pool), add(api, "dst", localhost_url(c2), pool2)
    inv = added(api, add_image(api, files.add("k.raw", image_data(192 * MiB)), [src]), timeout=300)
    job = uuid.uuid4().hex
    r = migrate(api, inv["uuid"], src, dst, **{"X-Job-UUID": job})
    assert r.status_code == 202, r.text

    def copying() -> bool:
        rows = api.get(f"/task-progresses/{job}").json().get("inventories", [])
        return bool(rows) and (rows[0].get("opaque") or {}).get("copied", 0) > 0

    wait_for(copying, 120, every=0.05)
    fresh_server.stop(signal.SIGKILL)
    assert inv["uuid"] in c2.images(pool2)  # the partial copy the dead process left
    fresh_server.start()
    api = fresh_server.login()
    [entry] = trash(api, dst)
    assert entry["installPath"] == f"ceph://{pool2}/{inv['uuid']}"
    assert entry["resourceUuid"] == inv["uuid"] and entry["resourceType"] == "ImageVO"
    assert entry["trashType"] == "MigrateImage" and entry["size"] == 192 * MiB
    assert trash(api, dst, resourceUuid=inv["uuid"], resourceType="ImageVO") == [entry]
    assert trash(api, src) == []

    def cleaned() -> dict | None:  # the dead writer's watch holds the image ~30 s
        r = api.put(f"/backup-storage/{dst}/trash/actions",
                    json={"cleanUpTrashOnBackupStorage": {"trashId": entry["trashId"]}})
        assert r.status_code == 200, r.text
        return r.json() if r.json()["result"]["resourceUuids"] else None

    body = wait_for(cleaned, 90, every=3)
    assert body["result"] == {"resourceUuids": [inv["uuid"]], "details": [], "size": 192 * MiB}
    assert inv["uuid"] not in c2.images(pool2)
    assert trash(api, dst) == []
    api.close()
