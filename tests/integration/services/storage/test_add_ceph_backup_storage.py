"""AddCephBackupStorage against the real dev clusters, through real SSH (the seed's call)."""
from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.conftest import Api, DevCluster

pytestmark = pytest.mark.ceph

SEED_FIELDS = {"uuid", "name", "url", "description", "totalCapacity", "availableCapacity", "type",
               "state", "status", "createDate", "lastOpDate", "attachedZoneUuids"}
CEPH_FIELDS = {"mons", "fsid", "poolName", "poolAvailableCapacity", "poolUsedCapacity",
               "poolReplicatedSize", "poolDiskUtilization", "poolSecurityPolicy"}


def osd_figures(cluster: DevCluster, pool: str) -> tuple[int, int, int]:
    """(total, available, size) of the pool as ZStack computes them from `ceph osd df`."""
    size = next(p["size"] for p in cluster.ceph_json("osd", "dump")["pools"] if p["pool_name"] == pool)
    nodes = cluster.ceph_json("osd", "df")["nodes"]
    total = sum(n["kb"] * 1024 for n in nodes) / size
    avail = sum(n["kb_avail"] * 1024 for n in nodes) / size
    return int(total), int(avail), size


@pytest.mark.real_ceph
def test_the_seeds_request_gives_a_connected_ceph_storage(api: Api, c1: DevCluster, pool: str) -> None:
    resource_uuid = uuid.uuid4().hex
    body = {"params": {"monUrls": [c1.mon_url], "poolName": pool, "url": "ignored", "name": "My Backup Storage",
                       "description": "Public Backup Storage", "type": "Ceph", "importImages": False,
                       "resourceUuid": resource_uuid},
            "systemTags": ["backupStorage::data::network::cidr::127.0.0.0/8"], "userTags": ["tier::gold"]}
    r = api.post("/backup-storage/ceph", json=body,
                 headers={"Content-Type": "application/json;charset=UTF-8"})
    assert r.status_code == 200, r.text
    inv = r.json()["inventory"]
    assert SEED_FIELDS | CEPH_FIELDS <= set(inv)
    assert inv["uuid"] == resource_uuid and inv["name"] == "My Backup Storage"
    assert inv["url"] == "not used" and inv["type"] == "Ceph"
    assert inv["state"] == "Enabled" and inv["status"] == "Connected"
    assert inv["fsid"] == c1.fsid and inv["poolName"] == pool
    assert inv["attachedZoneUuids"] == []
    assert inv["createDate"].endswith((" AM", " PM"))
    [mon] = inv["mons"]
    assert mon["hostname"] == "127.0.0.1" and mon["status"] == "Connected"
    assert mon["monPort"] == int(c1.env["CEPH_MON_PORT"]) and mon["sshPort"] == int(c1.env["SSH_PORT"])
    assert c1.env["SSH_PASSWORD"] not in r.text
    total, avail, size = osd_figures(c1, pool)
    assert inv["poolReplicatedSize"] == size and inv["poolSecurityPolicy"] == "Copy"
    assert inv["totalCapacity"] == total
    assert abs(inv["availableCapacity"] - avail) < 64 * 1024**2  # the OSD keeps writing its own metadata
    # the storage is queryable, as a Ceph inventory, on both query paths
    for path in (f"/backup-storage/{resource_uuid}", f"/backup-storage/ceph/{resource_uuid}"):
        q = api.get(path)
        assert q.status_code == 200
        [found] = q.json()["inventories"]
        assert found["fsid"] == c1.fsid
        assert q.json()["schema"]["inventories[0]"].endswith("CephBackupStorageInventory")
    # tags are stored
    assert [i["uuid"] for i in api.storages(q="__userTag__=tier::gold")] == [resource_uuid]


def test_the_reply_carries_a_schema_when_asked(api: Api, c1: DevCluster, pool: str) -> None:
    r = api.add_ceph("schema", [c1.mon_url], poolName=pool)
    assert "schema" not in r.json()
    api.delete(f"/backup-storage/{r.json()['inventory']['uuid']}")
    r = api.post("/backup-storage/ceph", json={"params": {"name": "s2", "monUrls": [c1.mon_url], "poolName": pool}},
                 headers={"X-JSON-Schema": "true"})
    schema = r.json()["schema"]
    assert next(iter(schema)) == "inventory"
    assert schema["inventory.mons[0]"].endswith("CephBackupStorageMonInventory")


@pytest.mark.real_ceph
def test_a_missing_pool_is_created_and_removed_by_nobody_but_its_owner(api: Api, c1: DevCluster) -> None:
    r = api.add_ceph("auto-pool", [c1.mon_url])
    assert r.status_code == 200, r.text
    inv = r.json()["inventory"]
    assert inv["poolName"] == f"bak-t-{inv['uuid']}"
    assert inv["poolName"] in c1.pools()
    app = c1.ceph_json("osd", "pool", "application", "get", inv["poolName"])
    assert "rbd" in app
    client = f"client.imgstore.{inv['uuid']}"
    assert client in c1.clients()
    assert api.delete(f"/backup-storage/{inv['uuid']}").status_code == 200
    assert client not in c1.clients()          # the key it made is gone
    assert inv["poolName"] in c1.pools()       # the images' pool stays (ZStack's DeleteReference)
    assert api.storages(q=f"uuid={inv['uuid']}") == []
    c1.delete_pool(inv["poolName"])


@pytest.mark.real_ceph
def test_the_key_is_least_privilege(api: Api, c1: DevCluster, pool: str) -> None:
    inv = api.add_ceph("caps", [c1.mon_url], poolName=pool).json()["inventory"]
    caps = c1.ceph_json("auth", "get", f"client.imgstore.{inv['uuid']}")[0]["caps"]
    assert "allow *" not in caps.values()
    assert pool in caps["osd"]


def test_same_cluster_twice_is_refused(api: Api, c1: DevCluster, pool: str) -> None:
    first = api.add_ceph("first", [c1.mon_url], poolName=pool)
    assert first.status_code == 200, first.text
    second = api.add_ceph("second", [c1.mon_url.replace("@127.0.0.1", "@localhost")], poolName=pool)
    assert second.status_code == 409, second.text
    err = second.json()["error"]
    assert err["code"] == "SYS.1002" and c1.fsid in err["cause"]["details"]
    assert [i["name"] for i in api.storages()] == ["first"]


def test_same_mon_host_twice_is_refused_before_touching_anything(api: Api, c1: DevCluster, pool: str) -> None:
    assert api.add_ceph("first", [c1.mon_url], poolName=pool).status_code == 200
    r = api.add_ceph("again", [c1.mon_url], poolName=pool)
    assert r.status_code == 400 and "127.0.0.1" in r.json()["error"]["details"]


def test_two_different_clusters_both_work(api: Api, c1: DevCluster, c2: DevCluster, pool: str) -> None:
    p2 = c2.create_pool(f"t-{uuid.uuid4().hex[:10]}")
    try:
        a = api.add_ceph("one", [c1.mon_url], poolName=pool)
        b = api.add_ceph("two", [c2.mon_url.replace("@127.0.0.1", "@localhost")], poolName=p2)
        assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
        assert {a.json()["inventory"]["fsid"], b.json()["inventory"]["fsid"]} == {c1.fsid, c2.fsid}
    finally:
        for inv in api.storages():
            api.delete(f"/backup-storage/{inv['uuid']}")
        c2.delete_pool(p2)


def assert_failed_cleanly(api: Api, cluster: DevCluster, r: httpx.Response, resource_uuid: str,
                          *words: str) -> dict:
    """SYS.1002 naming what went wrong, no secret in it, and nothing left: no row, no
    pool or key made for this storage."""
    err = r.json()["error"]
    assert err["code"] == "SYS.1002", r.text
    for w in words:
        assert w in r.text, (w, r.text)
    assert cluster.env["SSH_PASSWORD"] not in r.text and "wrong-password" not in r.text
    assert api.storages() == []
    assert f"bak-t-{resource_uuid}" not in cluster.pools()
    assert f"client.imgstore.{resource_uuid}" not in cluster.clients()
    return err


def test_wrong_ssh_password_is_a_clear_error_naming_the_mon(api: Api, c1: DevCluster, pool: str) -> None:
    rid = uuid.uuid4().hex
    t0 = time.monotonic()
    r = api.add_ceph("bad-pw", [c1.mon_url_with(password="wrong-password")], poolName=pool, resourceUuid=rid)
    assert time.monotonic() - t0 < 15
    assert r.status_code == 400
    assert_failed_cleanly(api, c1, r, rid, "127.0.0.1", "password")


def test_closed_ssh_port_is_a_clear_error(api: Api, c1: DevCluster, pool: str) -> None:
    rid = uuid.uuid4().hex
    t0 = time.monotonic()
    r = api.add_ceph("closed-ssh", [c1.mon_url_with(ssh_port=1)], poolName=pool, resourceUuid=rid)
    assert time.monotonic() - t0 < 15
    assert r.status_code == 503
    assert_failed_cleanly(api, c1, r, rid, "127.0.0.1")


def test_closed_mon_port_fails_in_bounded_time_and_leaves_nothing(api: Api, c1: DevCluster) -> None:
    """SSH works, the pool and key get made, then librados cannot reach the mon: all undone."""
    rid = uuid.uuid4().hex
    t0 = time.monotonic()
    r = api.add_ceph("closed-mon", [c1.mon_url_with(mon_port=16999)], resourceUuid=rid)
    assert time.monotonic() - t0 < 15
    assert r.status_code == 503, r.text
    assert_failed_cleanly(api, c1, r, rid, "127.0.0.1")


def test_missing_predefined_pool_names_the_pool(api: Api, c1: DevCluster) -> None:
    rid = uuid.uuid4().hex
    r = api.add_ceph("no-pool", [c1.mon_url], poolName="no-such-pool", resourceUuid=rid)
    assert r.status_code == 400, r.text
    assert_failed_cleanly(api, c1, r, rid, "no-such-pool")
    assert "no-such-pool" not in c1.pools()


def test_one_dead_mon_of_two_is_dropped(api: Api, c1: DevCluster, pool: str) -> None:
    r = api.add_ceph("half", [c1.mon_url, c1.mon_url_with(password="wrong-password").replace("@127.0.0.1", "@localhost")],
                     poolName=pool)
    assert r.status_code == 200, r.text
    assert [m["hostname"] for m in r.json()["inventory"]["mons"]] == ["127.0.0.1"]


@pytest.mark.parametrize("params, words", [
    ({"monUrls": ["no-user-info"]}, ["monUrl"]),
    ({"monUrls": ["u:p@h:0"]}, ["port"]),
    ({"monUrls": ["u:p@h/?foo=1"]}, ["foo"]),
    ({"monUrls": ["u:p@h", "v:q@h"]}, ["same host[h]"]),
    ({"monUrls": [""]}, ["empty"]),
    ({"monUrls": []}, ["monUrls"]),
    ({"monUrls": ["u:p@h"], "poolName": ""}, ["poolName"]),
    ({"monUrls": ["u:p@h"], "importImages": True}, ["poolName is required"]),
    ({"monUrls": ["u:p@h"], "type": "ImageStoreBackupStorage"}, ["type"]),
    ({"monUrls": ["u:p@h"], "resourceUuid": "not-a-uuid"}, ["resourceUuid", "not-a-uuid"]),
    ({"monUrls": ["u:p@h"], "name": "x" * 256}, ["name"]),
    ({"monUrls": ["u:p@h"], "description": "x" * 2049}, ["description"]),
    ({"monUrls": ["u:p@h"], "systemTags": ["backupStorage::data::network::cidr::10.0.0.1/8"]}, ["10.0.0.0/8"]),
])
def test_bad_input_is_refused_naming_the_field_and_changes_nothing(api: Api, params: dict, words: list[str]) -> None:
    r = api.post("/backup-storage/ceph", json={"params": {"name": "bad", **params}})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] in ("SYS.1007", "SYS.1002")
    for w in words:
        assert w in r.text, (w, r.text)
    assert api.storages() == []


def test_async_on_request(api: Api, c1: DevCluster, pool: str) -> None:
    r = api.post("/backup-storage/ceph", json={"params": {"name": "async", "monUrls": [c1.mon_url], "poolName": pool}},
                 headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    assert "/zstack/v1/api-jobs/" in r.json()["location"]
    done = api.wait_job(r)
    assert done.status_code == 200 and done.json()["inventory"]["status"] == "Connected"
    # the Java SDK's way: an X-Job-UUID header names the job
    job = uuid.uuid4().hex
    r = api.delete(f"/backup-storage/{done.json()['inventory']['uuid']}", headers={"X-Job-UUID": job})
    assert r.status_code == 202 and r.json()["location"].endswith(f"/zstack/v1/api-jobs/{job}")
    assert api.wait_job(r).status_code == 200
    # a reused job uuid is refused
    r = api.delete(f"/backup-storage/{uuid.uuid4().hex}", headers={"X-Job-UUID": job})
    assert r.status_code == 400


def test_async_failure_is_503_with_the_error(api: Api, c1: DevCluster) -> None:
    r = api.post("/backup-storage/ceph", json={"params": {"name": "x", "monUrls": [c1.mon_url], "poolName": "no-such-pool"}},
                 headers={"X-Job-UUID": uuid.uuid4().hex})
    done = api.wait_job(r)
    assert done.status_code == 503
    assert done.json()["error"]["code"] == "SYS.1002" and "no-such-pool" in done.text
