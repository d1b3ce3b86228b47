"""Faults survived on the real cluster c2: dead mon, dead OSD, revoked key, killed server.

The tracker pings every second here (IMGSTORE_PING_INTERVAL=1) with Ceph calls bounded
to 3 s, so every status change must show within a few seconds, with nobody calling
Reconnect.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid

import pytest

from tests.conftest import Api, DevCluster, Server, free_port, wait_for

pytestmark = pytest.mark.ceph

# one interval + the Ceph timeout + the OSD's own time to be noticed, with margin
NOTICE = 20


def status_of(api: Api, bs_uuid: str) -> dict:
    [inv] = api.get(f"/backup-storage/{bs_uuid}").json()["inventories"]
    return inv


def became(api: Api, bs_uuid: str, status: str) -> dict | None:
    inv = status_of(api, bs_uuid)
    return inv if inv["status"] == status else None


@pytest.mark.real_ceph
def test_mon_killed_then_restarted(tracked_server: Server, c2: DevCluster, pool2: str) -> None:
    api = tracked_server.login()
    inv = api.add_ceph("mon-fault", [c2.mon_url], poolName=pool2).json()["inventory"]
    c2.devcluster("daemon-stop", "mon")
    try:
        t0 = time.monotonic()
        down = wait_for(lambda: became(api, inv["uuid"], "Disconnected"), NOTICE)
        assert down["mons"][0]["status"] == "Disconnected"
        # an API call that needs the cluster fails fast with a clear error, never hangs
        t1 = time.monotonic()
        r = api.put(f"/backup-storage/{inv['uuid']}/actions", json={"reconnectBackupStorage": {}})
        refused_in = time.monotonic() - t1
        assert refused_in < 3 + 2, "reconnect must give up within one Ceph timeout"
        assert r.status_code == 503 and r.json()["error"]["details"]
        # and a call about nothing in the cluster is not slowed by it
        t2 = time.monotonic()
        assert api.get("/backup-storage").status_code == 200
        assert time.monotonic() - t2 < 1
        print(f"mon down noticed in {t1 - t0:.1f} s, reconnect refused in {refused_in:.1f} s")
    finally:
        c2.devcluster("daemon-start", "mon")
    up = wait_for(lambda: became(api, inv["uuid"], "Connected"), NOTICE + 10)
    assert up["mons"][0]["status"] == "Connected"


@pytest.mark.real_ceph
def test_osd_stopped_then_back(tracked_server: Server, c2: DevCluster, pool2: str) -> None:
    api = tracked_server.login()
    inv = api.add_ceph("osd-fault", [c2.mon_url], poolName=pool2).json()["inventory"]
    c2.devcluster("daemon-stop", "osd")
    try:
        wait_for(lambda: became(api, inv["uuid"], "Disconnected"), NOTICE)
    finally:
        c2.devcluster("daemon-start", "osd")
    wait_for(lambda: became(api, inv["uuid"], "Connected"), NOTICE + 30)


@pytest.mark.real_ceph
def test_revoked_key_is_reported_and_reconnect_repairs_it(tracked_server: Server, c2: DevCluster, pool2: str) -> None:
    api = tracked_server.login()
    inv = api.add_ceph("key-fault", [c2.mon_url], poolName=pool2).json()["inventory"]
    c2.ceph("auth", "del", f"client.imgstore.{inv['uuid']}")
    down = wait_for(lambda: became(api, inv["uuid"], "Disconnected"), NOTICE)
    assert "denied" in (down.get("statusReason") or "").lower() or "key" in (down.get("statusReason") or "").lower()
    r = api.put(f"/backup-storage/{inv['uuid']}/actions", json={"reconnectBackupStorage": {}})
    assert r.status_code == 200, r.text
    assert r.json()["inventory"]["status"] == "Connected"
    assert f"client.imgstore.{inv['uuid']}" in c2.clients()


@pytest.mark.real_ceph
def test_server_killed_during_an_add_leaves_nothing_half_made(fresh_server: Server, c2: DevCluster) -> None:
    fresh_server.start()
    api = fresh_server.login()
    rid = uuid.uuid4().hex
    r = api.post("/backup-storage/ceph", json={"params": {"name": "killed", "monUrls": [c2.mon_url], "resourceUuid": rid}},
                 headers={"Prefer": "respond-async"})
    assert r.status_code == 202
    # kill -9 the moment the add has made its pool in the cluster (a look at the pools is a
    # mon command of a few ms: the add has seconds of work left then, however busy the CPU)
    wait_for(lambda: f"bak-t-{rid}" in c2.pools(), 30, every=0.05)
    fresh_server.stop(signal.SIGKILL)
    fresh_server.start()
    api = fresh_server.login()
    assert api.storages(q=f"uuid={rid}") == []
    assert f"bak-t-{rid}" not in c2.pools()
    assert f"client.imgstore.{rid}" not in c2.clients()
    # the interrupted job says what happened
    job = api.wait_job(r)
    assert job.status_code == 503 and "restart" in job.json()["error"]["details"]


def test_two_concurrent_adds_of_one_cluster_exactly_one_wins(api: Api, c2: DevCluster, pool2: str) -> None:
    results: list[int] = []

    def add(host: str) -> None:
        r = api.add_ceph(f"race-{host}", [c2.mon_url.replace("@127.0.0.1", f"@{host}")], poolName=pool2)
        results.append(r.status_code)

    threads = [threading.Thread(target=add, args=(h,)) for h in ("127.0.0.1", "localhost")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 409], results
    assert len(api.storages()) == 1


def test_reconnect_on_a_healthy_storage(api: Api, c2: DevCluster, pool2: str) -> None:
    inv = api.add_ceph("reconnect", [c2.mon_url], poolName=pool2).json()["inventory"]
    r = api.put(f"/backup-storage/{inv['uuid']}/actions", json={"reconnectBackupStorage": {}},
                headers={"Prefer": "respond-async"})
    done = api.wait_job(r)
    assert done.status_code == 200 and done.json()["inventory"]["status"] == "Connected", done.text


@pytest.mark.real_ceph
def test_the_tracker_pings_a_storage_with_its_mons_as_they_are_now(
    tracked_server: Server, c2: DevCluster, pool2: str
) -> None:
    """The tracker keeps rows between rounds: a mon moved by the API must be pinged where
    it now is, with nobody calling Reconnect."""
    api = tracked_server.login()
    inv = api.add_ceph("mon-moved", [c2.mon_url], poolName=pool2).json()["inventory"]
    [mon] = inv["mons"]

    def move_mon(port: int) -> None:
        r = api.put(f"/backup-storage/ceph/mons/{mon['monUuid']}/actions",
                     json={"updateCephBackupStorageMon": {"monPort": port}})
        assert r.status_code == 200, r.text

    wait_for(lambda: became(api, inv["uuid"], "Connected"), NOTICE)
    move_mon(free_port())  # nothing listens there
    down = wait_for(lambda: became(api, inv["uuid"], "Disconnected"), NOTICE)
    assert down["mons"][0]["status"] == "Disconnected"
    move_mon(mon["monPort"])
    up = wait_for(lambda: became(api, inv["uuid"], "Connected"), NOTICE + 10)
    assert up["mons"][0]["status"] == "Connected"


def pinger_of(server: Server) -> int | None:
    """The pid of the server's pinger process (services/health/pinger.py), if it runs."""
    assert server.proc is not None
    out = subprocess.run(["pgrep", "-P", str(server.proc.pid), "-f", "imgstore.services.health.pinger"],
                         capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def test_a_killed_pinger_is_replaced_and_no_storage_turns_disconnected(
    tracked_server: Server, c2: DevCluster, pool2: str
) -> None:
    """The tracker's Ceph calls run in a child process: its death says nothing about the
    cluster, so the storage stays Connected, and the next ping starts another child."""
    api = tracked_server.login()
    inv = api.add_ceph("pinger-killed", [c2.mon_url], poolName=pool2).json()["inventory"]
    first = wait_for(lambda: pinger_of(tracked_server), NOTICE)
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: (pid := pinger_of(tracked_server)) not in (None, first) and pid, NOTICE)
    for _ in range(6):  # several rounds at one per second, each through the new child
        assert status_of(api, inv["uuid"])["status"] == "Connected"
        time.sleep(0.5)
    assert f"pinger process {first} exited with -9" in tracked_server.log()
    assert pinger_of(tracked_server) == second
