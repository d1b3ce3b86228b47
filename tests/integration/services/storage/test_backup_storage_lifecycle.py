"""The life of a backup storage after its add: UpdateBackupStorage,
ChangeBackupStorageState, GetBackupStorageCapacity, GetBackupStorageTypes, the shared
``PUT .../actions`` path, and DeleteBackupStorage's modes, on a real server and cluster."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Api, DevCluster, assert_error, wait_for

STATES = {"enable": "Enabled", "disable": "Disabled"}


@pytest.fixture
def storage(api: Api, c1: DevCluster, pool: str) -> dict:
    r = api.add_ceph("life", [c1.mon_url], poolName=pool, description="before")
    assert r.status_code == 200, r.text
    return r.json()["inventory"]


def action(api: Api, bs_uuid: str, name: str, params: object, **kw: object) -> httpx.Response:
    return api.put(f"/backup-storage/{bs_uuid}/actions", json={name: params}, **kw)


def stored(api: Api, bs_uuid: str) -> dict:
    [inv] = api.get(f"/backup-storage/{bs_uuid}").json()["inventories"]
    return inv


def without_volatile(inv: dict) -> dict:
    """What an operator changes; capacity and status are the tracker's to refresh."""
    return {k: v for k, v in inv.items()
            if k not in ("totalCapacity", "availableCapacity", "status", "lastOpDate", "mons")
            and not k.startswith("pool")}


# ---------------------------------------------------------------- GetBackupStorageTypes


def test_types_are_the_ones_imgstore_can_add(api: Api) -> None:
    r = api.get("/backup-storage/types")
    assert r.status_code == 200 and r.json() == {"types": ["Ceph"]}


def test_get_calls_are_synchronous_whatever_the_headers(api: Api) -> None:
    """The Java SDK sends X-Job-UUID on every call and fails if a sync API answers 202."""
    headers = {"X-Job-UUID": uuid.uuid4().hex, "Prefer": "respond-async", "X-JSON-Schema": "true"}
    assert api.get("/backup-storage/types", headers=headers).status_code == 200
    r = api.get("/backup-storage/capacities", params={"all": "true"}, headers=headers)
    assert r.status_code == 200 and r.json()["success"] is True


# ---------------------------------------------------------------- GetBackupStorageCapacity


@pytest.mark.parametrize("params", [{}, {"all": "false"}, {"zoneUuids": ""}, {"backupStorageUuids": ""}])
def test_capacity_needs_something_to_measure(api: Api, params: dict) -> None:
    r = api.get("/backup-storage/capacities", params=params)
    assert_error(r, 400, "SYS.1007",
                 "zoneUuids, backupStorageUuids must have at least one be none-empty list, or all is set to true")


def test_capacity_refuses_a_non_boolean_all(api: Api) -> None:
    assert_error(api.get("/backup-storage/capacities", params={"all": "yes"}), 400, "SYS.1007", "all", "yes")


def test_capacity_names_what_is_missing(api: Api) -> None:
    nobody = uuid.uuid4().hex
    assert_error(api.get("/backup-storage/capacities", params={"backupStorageUuids": nobody}),
                 404, "SYS.1003", "backupStorageUuids", nobody)
    assert_error(api.get("/backup-storage/capacities", params={"zoneUuids": nobody}),
                 404, "SYS.1003", "zoneUuids", nobody, "ZoneVO")


def test_capacity_of_nothing_is_zero(api: Api) -> None:
    zone = api.post("/zones", json={"params": {"name": "empty"}}).json()["inventory"]
    try:
        r = api.get("/backup-storage/capacities", params={"zoneUuids": zone["uuid"], "all": "false"})
        assert r.status_code == 200
        assert r.json() == {"totalCapacity": 0, "availableCapacity": 0, "success": True}
    finally:
        api.delete(f"/zones/{zone['uuid']}")


def capacity_matches(api: Api, params: object, storages: list[str]) -> bool:
    """The reply equals the sum of the stored figures (re-read: the tracker may refresh)."""
    r = api.get("/backup-storage/capacities", params=params)
    assert r.status_code == 200, r.text
    invs = [stored(api, u) for u in storages]
    want = {"totalCapacity": sum(i["totalCapacity"] for i in invs),
            "availableCapacity": sum(i["availableCapacity"] for i in invs), "success": True}
    return r.json() == want


@pytest.mark.ceph
def test_capacity_by_storage_by_zone_and_all(api: Api, storage: dict) -> None:
    bs = storage["uuid"]
    assert storage["totalCapacity"] > 0
    zone = api.post("/zones", json={"params": {"name": "measured"}}).json()["inventory"]
    try:
        other = api.post("/zones", json={"params": {"name": "elsewhere"}}).json()["inventory"]
        assert api.post(f"/zones/{zone['uuid']}/backup-storage/{bs}").status_code == 200
        cases = [
            {"backupStorageUuids": bs, "all": "false"},           # what the Java SDK sends
            [("backupStorageUuids.0", bs)],                        # ZStack's indexed list form
            {"all": "true"},
            {"zoneUuids": zone["uuid"]},
            [("zoneUuids", zone["uuid"]), ("zoneUuids", other["uuid"])],  # counted once
            {"zoneUuids": other["uuid"], "backupStorageUuids": bs},  # storages win, as in ZStack
        ]
        for params in cases:
            wait_for(lambda params=params: capacity_matches(api, params, [bs]), 10)
        r = api.get("/backup-storage/capacities", params={"zoneUuids": other["uuid"]})
        assert r.json() == {"totalCapacity": 0, "availableCapacity": 0, "success": True}
    finally:
        for z in api.get("/zones").json()["inventories"]:
            api.delete(f"/zones/{z['uuid']}")


@pytest.mark.ceph
def test_capacity_sums_storages(api: Api, storage: dict, c2: DevCluster) -> None:
    p2 = c2.create_pool(f"t-{uuid.uuid4().hex[:10]}")
    try:
        r = api.add_ceph("second", [c2.mon_url.replace("@127.0.0.1", "@localhost")], poolName=p2)
        if r.status_code != 200:
            pytest.skip(f"cluster c2 cannot take a storage now: {r.text[:200]}")
        both = [storage["uuid"], r.json()["inventory"]["uuid"]]
        wait_for(lambda: capacity_matches(api, [("backupStorageUuids", u) for u in both], both), 10)
        wait_for(lambda: capacity_matches(api, {"all": "true"}, both), 10)
    finally:
        for inv in api.storages():
            api.delete(f"/backup-storage/{inv['uuid']}")
        c2.delete_pool(p2)


# ---------------------------------------------------------------- UpdateBackupStorage


@pytest.mark.ceph
def test_update_changes_name_and_description_only(api: Api, storage: dict) -> None:
    bs = storage["uuid"]
    r = action(api, bs, "updateBackupStorage", {"name": "  renamed  "}, headers={"X-JSON-Schema": "true"})
    assert r.status_code == 200, r.text
    inv = r.json()["inventory"]
    assert inv["name"] == "renamed" and inv["description"] == "before"
    assert inv["fsid"] == storage["fsid"] and inv["mons"]            # the most specific inventory
    assert r.json()["schema"]["inventory"].endswith("CephBackupStorageInventory")
    r = action(api, bs, "updateBackupStorage", {"description": "after", "url": "ignored", "requestIp": "1.2.3.4"})
    inv = r.json()["inventory"]
    assert inv["name"] == "renamed" and inv["description"] == "after" and inv["url"] == "not used"
    r = action(api, bs, "updateBackupStorage", {})
    assert r.status_code == 200 and r.json()["inventory"]["name"] == "renamed"
    assert [i["uuid"] for i in api.storages(q="name=renamed")] == [bs]


@pytest.mark.ceph
@pytest.mark.parametrize("params, words", [
    ({"name": ""}, ["name"]),
    ({"name": "  "}, ["name"]),
    ({"name": "x" * 256}, ["updateBackupStorage.name"]),
    ({"description": "x" * 2049}, ["updateBackupStorage.description"]),
    ({"name": ["a"]}, ["updateBackupStorage.name"]),
])
def test_bad_update_is_refused_and_changes_nothing(api: Api, storage: dict, params: dict, words: list[str]) -> None:
    before = without_volatile(stored(api, storage["uuid"]))
    assert_error(action(api, storage["uuid"], "updateBackupStorage", params), 400, "SYS.1007", *words)
    assert without_volatile(stored(api, storage["uuid"])) == before


def test_update_of_an_unknown_storage_is_404_naming_it(api: Api) -> None:
    nobody = uuid.uuid4().hex
    assert_error(action(api, nobody, "updateBackupStorage", {"name": "x"}), 404, "SYS.1003", nobody, "BackupStorageVO")


@pytest.mark.ceph
def test_update_async_on_request(api: Api, storage: dict) -> None:
    job = uuid.uuid4().hex
    r = action(api, storage["uuid"], "updateBackupStorage", {"name": "by-job"}, headers={"X-Job-UUID": job})
    assert r.status_code == 202 and r.json()["location"].endswith(f"/zstack/v1/api-jobs/{job}")
    done = api.wait_job(r)
    assert done.status_code == 200 and done.json()["inventory"]["name"] == "by-job"
    r = action(api, uuid.uuid4().hex, "updateBackupStorage", {"name": "x"}, headers={"Prefer": "respond-async"})
    failed = api.wait_job(r)
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "SYS.1003"


# ---------------------------------------------------------------- the actions path


def test_a_body_without_a_known_action_is_refused_in_zstacks_words(api: Api) -> None:
    some = uuid.uuid4().hex
    url = f"/zstack/v1/backup-storage/{some}/actions"
    for body in ({"renameBackupStorage": {"name": "x"}}, {}, {"systemTags": ["a"]}):
        r = api.put(f"/backup-storage/{some}/actions", json=body)
        assert_error(r, 400, "SYS.1007", f"the body doesn't contain action mapping to the URL[{url}]")
    for body in ([], "updateBackupStorage", None):
        assert_error(api.put(f"/backup-storage/{some}/actions", json=body), 400, "SYS.1007")
    r = api.put(f"/backup-storage/{some}/actions",
                json={"updateBackupStorage": {}, "changeBackupStorageState": {"stateEvent": "enable"}})
    assert_error(r, 400, "SYS.1007", "more than one action")
    assert_error(action(api, some, "changeBackupStorageState", "enable"), 400, "SYS.1007",
                 "changeBackupStorageState")


def test_the_v1_path_without_context_works_too(api: Api, server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{server.url}/v1/backup-storage/types", headers={"Authorization": api.headers["Authorization"]})
    assert r.status_code == 200 and r.json() == {"types": ["Ceph"]}


# ---------------------------------------------------------------- ChangeBackupStorageState


@pytest.mark.ceph
def test_disable_and_enable(api: Api, storage: dict) -> None:
    bs = storage["uuid"]
    assert storage["state"] == "Enabled"
    r = action(api, bs, "changeBackupStorageState", {"stateEvent": "disable"})
    assert r.status_code == 200, r.text
    inv = r.json()["inventory"]
    assert inv["state"] == "Disabled" and inv["status"] == "Connected"  # state is not status
    assert [i["uuid"] for i in api.storages(q="state=Disabled")] == [bs]
    r = action(api, bs, "changeBackupStorageState", {"stateEvent": "disable"})  # already there: a no-op
    assert r.status_code == 200 and r.json()["inventory"]["state"] == "Disabled"
    r = action(api, bs, "changeBackupStorageState", {"stateEvent": "enable"})
    assert r.status_code == 200 and r.json()["inventory"]["state"] == "Enabled"
    r = action(api, bs, "changeBackupStorageState", {"stateEvent": "enable"})
    assert r.status_code == 200 and r.json()["inventory"]["state"] == "Enabled"


@pytest.mark.ceph
@pytest.mark.parametrize("params, words", [
    ({"stateEvent": "Disable"}, ["field[stateEvent]", "[enable, disable]", "but Disable found"]),
    ({"stateEvent": "Disabled"}, ["Disabled"]),
    ({"stateEvent": "maintain"}, ["maintain"]),
    ({}, ["changeBackupStorageState.stateEvent", "mandatory"]),
    ({"stateEvent": 1}, ["changeBackupStorageState.stateEvent"]),
])
def test_bad_state_event_changes_nothing(api: Api, storage: dict, params: dict, words: list[str]) -> None:
    before = without_volatile(stored(api, storage["uuid"]))
    assert_error(action(api, storage["uuid"], "changeBackupStorageState", params), 400, "SYS.1007", *words)
    assert without_volatile(stored(api, storage["uuid"])) == before


def test_state_change_of_an_unknown_storage_is_404(api: Api) -> None:
    nobody = uuid.uuid4().hex
    r = action(api, nobody, "changeBackupStorageState", {"stateEvent": "disable"})
    assert_error(r, 404, "SYS.1003", nobody)


@pytest.mark.ceph
def test_state_change_async_on_request(api: Api, storage: dict) -> None:
    r = action(api, storage["uuid"], "changeBackupStorageState", {"stateEvent": "disable"},
               headers={"Prefer": "respond-async"})
    assert r.status_code == 202
    done = api.wait_job(r)
    assert done.status_code == 200 and done.json()["inventory"]["state"] == "Disabled"
    assert stored(api, storage["uuid"])["state"] == "Disabled"


@pytest.mark.ceph
def test_concurrent_state_changes_each_answer_their_own_transition(api: Api, storage: dict) -> None:
    bs = storage["uuid"]
    events = ["disable", "enable"] * 10
    answers: list[tuple[str, int, str | None]] = []

    def change(event: str) -> None:
        r = action(api, bs, "changeBackupStorageState", {"stateEvent": event})
        answers.append((event, r.status_code, r.json().get("inventory", {}).get("state")))

    threads = [threading.Thread(target=change, args=(e,)) for e in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == len(events)
    for event, status, state in answers:
        assert status == 200 and state == STATES[event], answers
    assert stored(api, bs)["state"] in ("Enabled", "Disabled")


@pytest.mark.real_ceph
def test_state_change_while_the_add_runs_is_refused(api: Api) -> None:
    """SYS.1005 while the storage may still vanish: its add has not finished. A mon that
    accepts TCP but never speaks SSH keeps the add running for the SSH timeout."""
    with socket.socket() as mute:
        mute.bind(("127.0.0.5", 0))
        mute.listen(8)
        port = mute.getsockname()[1]
        r = api.post("/backup-storage/ceph",
                     json={"params": {"name": "still-adding", "monUrls": [f"u:p@127.0.0.5:{port}"]}},
                     headers={"Prefer": "respond-async"})
        assert r.status_code == 202, r.text
        [inv] = wait_for(lambda: api.storages(q="name=still-adding"), 5, every=0.05)
        assert inv["status"] == "Connecting"
        refused = action(api, inv["uuid"], "changeBackupStorageState", {"stateEvent": "disable"})
        assert_error(refused, 409, "SYS.1005", inv["uuid"], "being added")
        assert stored(api, inv["uuid"])["state"] == "Enabled"
        failed = api.wait_job(r, timeout=30)
        assert failed.status_code == 503
    assert api.storages(q="name=still-adding") == []


# ---------------------------------------------------------------- serialisation, node by node


def _serialisation_run(db_url: str | None, tmp_path, nodes: int, monkeypatch) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """Run 30 concurrent changes of one storage over ``nodes`` runtimes sharing one
    database; answer (state read, state decided) in the order decisions were made."""
    from imgstore.config import Settings
    from imgstore.db.models import BackupStorage
    from imgstore.services.catalog import state_machine as state
    from imgstore.services.node.runtime import Runtime
    from imgstore.services.storage import manage as backup_storage

    seen: list[tuple[str, str]] = []
    decide = state.next_state

    def recording(current: str, event: state.StateEvent) -> state.State:
        after = decide(current, event)
        seen.append((current, after.value))
        return after

    monkeypatch.setattr(state, "next_state", recording)

    async def run() -> None:
        runtimes = []
        for i in range(nodes):
            settings = Settings(data_dir=tmp_path / f"node{i}", db_url=db_url, secret_key=None)
            runtimes.append(await Runtime.open(settings))
        try:
            bs = uuid.uuid4().hex
            async with runtimes[0].db() as db:
                db.add(BackupStorage(uuid=bs, name="s", url="u", state="Enabled", status="Connected"))
                await db.commit()
            events = ["disable", "enable", "disable"] * 10
            await asyncio.gather(*(
                backup_storage.change_state(runtimes[i % nodes], bs, e) for i, e in enumerate(events)
            ))
        finally:
            for rt in runtimes:
                await rt.close()

    asyncio.run(run())
    return seen


def _assert_serial(seen: list[tuple[str, str]]) -> None:
    assert len(seen) == 30
    previous = "Enabled"
    for current, after in seen:
        assert current == previous, f"a change read {current} after another had decided {previous}: {seen}"
        previous = after


def test_changes_on_one_node_are_serialised(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """SQLite, one node: the per-storage asyncio lock makes each change read the last one's
    result."""
    _assert_serial(_serialisation_run(None, tmp_path, 1, monkeypatch))


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def pg_database() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    name = f"imgstore_t_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=2)
    except psycopg.OperationalError as e:
        pytest.skip(f"PostgreSQL not reachable: {e}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_changes_across_nodes_on_postgresql_are_serialised(pg_database: str, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Three nodes on one PostgreSQL, with the in-process lock switched off so only
    SELECT ... FOR UPDATE stands between them."""
    from imgstore.services.node import locking

    monkeypatch.setattr(locking, "local_lock", lambda rt, table, key: asyncio.Lock())
    _assert_serial(_serialisation_run(pg_database, tmp_path, 3, monkeypatch))


# ---------------------------------------------------------------- DeleteBackupStorage modes


@pytest.mark.ceph
def test_delete_in_either_mode_removes_storage_and_key(api: Api, c1: DevCluster, pool: str) -> None:
    for mode in ("Permissive", "Enforcing"):
        inv = api.add_ceph(f"del-{mode}", [c1.mon_url], poolName=pool).json()["inventory"]
        r = api.delete(f"/backup-storage/{inv['uuid']}", params={"deleteMode": mode})
        assert r.status_code == 200 and r.json() == {}
        assert api.storages(q=f"uuid={inv['uuid']}") == []
        assert f"client.imgstore.{inv['uuid']}" not in c1.clients()


@pytest.mark.ceph
def test_delete_with_a_bad_mode_is_refused_and_deletes_nothing(api: Api, storage: dict) -> None:
    r = api.delete(f"/backup-storage/{storage['uuid']}", params={"deleteMode": "Force"})
    assert_error(r, 400, "SYS.1007", "deleteMode")
    assert api.storages(q=f"uuid={storage['uuid']}") != []


@pytest.mark.ceph
def test_delete_removes_tags_and_zone_attachments(api: Api, storage: dict) -> None:
    bs = storage["uuid"]
    zone = api.post("/zones", json={"params": {"name": "z"}}).json()["inventory"]
    try:
        api.post(f"/zones/{zone['uuid']}/backup-storage/{bs}")
        r = api.post("/user-tags", json={"params": {"resourceType": "BackupStorageVO", "resourceUuid": bs, "tag": "x"}})
        assert r.status_code == 200, r.text
        assert api.delete(f"/backup-storage/{bs}").status_code == 200
        assert api.get("/user-tags", params={"q": f"resourceUuid={bs}"}).json()["inventories"] == []
        assert api.get("/system-tags", params={"q": f"resourceUuid={bs}"}).json()["inventories"] == []
        assert api.get("/zones", params={"q": f"backupStorage.uuid={bs}"}).json()["inventories"] == []
    finally:
        api.delete(f"/zones/{zone['uuid']}")


@pytest.mark.ceph
@pytest.mark.real_ceph
def test_permissive_keeps_a_storage_whose_key_cannot_be_removed_and_enforcing_deletes_it(
        api: Api, c1: DevCluster, storage: dict) -> None:
    bs = storage["uuid"]
    [mon] = storage["mons"]
    # the mon's SSH becomes unreachable: imgstore can no longer remove the key it made
    r = api.put(f"/backup-storage/ceph/mons/{mon['monUuid']}/actions",
                json={"updateCephBackupStorageMon": {"sshPort": 1, "sshPassword": c1.env["SSH_PASSWORD"]}})
    assert r.status_code == 200, r.text
    client = f"client.imgstore.{bs}"
    try:
        t0 = time.monotonic()
        r = api.delete(f"/backup-storage/{bs}")  # Permissive, the SDK's default
        assert time.monotonic() - t0 < 15
        assert_error(r, 503, "SYS.1004", bs, "Enforcing")
        assert api.storages(q=f"uuid={bs}") != []
        r = api.delete(f"/backup-storage/{bs}", params={"deleteMode": "Enforcing"})
        assert r.status_code == 200, r.text
        assert api.storages(q=f"uuid={bs}") == []
    finally:
        if client in c1.clients():
            c1.ceph("auth", "del", client)
