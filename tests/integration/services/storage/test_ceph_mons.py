"""AddMon / RemoveMon / UpdateMon on a real storage."""
from __future__ import annotations

import pytest

from tests.conftest import Api, DevCluster

pytestmark = pytest.mark.ceph


def test_add_remove_and_update_a_mon(api: Api, c1: DevCluster, pool: str) -> None:
    inv = api.add_ceph("mons", [c1.mon_url], poolName=pool).json()["inventory"]
    uuid = inv["uuid"]
    second = c1.mon_url.replace("@127.0.0.1", "@localhost")
    r = api.post(f"/backup-storage/ceph/{uuid}/mons", json={"params": {"monUrls": [second]}})
    assert r.status_code == 200, r.text
    mons = {m["hostname"]: m for m in r.json()["inventory"]["mons"]}
    assert set(mons) == {"127.0.0.1", "localhost"} and mons["localhost"]["status"] == "Connected"
    # the same host again is refused
    r = api.post(f"/backup-storage/ceph/{uuid}/mons", json={"params": {"monUrls": [second]}})
    assert r.status_code == 400 and "same Mon" in r.text
    # update: a port out of range is refused, a new ssh port is stored
    mon_uuid = mons["localhost"]["monUuid"]
    r = api.put(f"/backup-storage/ceph/mons/{mon_uuid}/actions", json={"updateCephBackupStorageMon": {"sshPort": 70000}})
    assert r.status_code == 400
    # a new ssh port without the password is refused (issue Trust, point 2)
    r = api.put(f"/backup-storage/ceph/mons/{mon_uuid}/actions", json={"updateCephBackupStorageMon": {"sshPort": 2222}})
    assert r.status_code == 400 and "sshPassword" in r.text
    r = api.put(f"/backup-storage/ceph/mons/{mon_uuid}/actions",
                json={"updateCephBackupStorageMon": {"sshPort": 2222, "sshPassword": c1.env["SSH_PASSWORD"]}})
    assert r.status_code == 200
    assert {m["hostname"]: m["sshPort"] for m in r.json()["inventory"]["mons"]}["localhost"] == 2222
    # remove it; removing the last mon is refused
    r = api.delete(f"/backup-storage/ceph/{uuid}/mons", params={"monHostnames": ["localhost"]})
    assert r.status_code == 200 and [m["hostname"] for m in r.json()["inventory"]["mons"]] == ["127.0.0.1"]
    r = api.delete(f"/backup-storage/ceph/{uuid}/mons", params={"monHostnames": ["127.0.0.1"]})
    assert r.status_code == 400 and "no mon" in r.text


def test_a_mon_of_another_cluster_is_refused(api: Api, c1: DevCluster, c2: DevCluster, pool: str) -> None:
    inv = api.add_ceph("fsid", [c1.mon_url], poolName=pool).json()["inventory"]
    r = api.post(f"/backup-storage/ceph/{inv['uuid']}/mons",
                 json={"params": {"monUrls": [c2.mon_url.replace("@127.0.0.1", "@localhost")]}})
    assert r.status_code == 409, r.text
    assert c2.fsid in r.text
    [now] = api.storages()
    assert [m["hostname"] for m in now["mons"]] == ["127.0.0.1"]


def test_mons_of_an_unknown_storage(api: Api, c1: DevCluster) -> None:
    r = api.post("/backup-storage/ceph/0123456789abcdef0123456789abcdef/mons", json={"params": {"monUrls": [c1.mon_url]}})
    assert r.status_code == 404
