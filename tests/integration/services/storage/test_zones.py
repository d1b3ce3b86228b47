"""Zones (CreateZone, QueryZone, UpdateZone, ChangeZoneState, DeleteZone) and
AttachBackupStorageToZone / DetachBackupStorageFromZone, on a real server."""
from __future__ import annotations

import uuid

import pytest

from tests.conftest import Api, DevCluster, assert_error

ZONE_FIELDS = {"uuid", "name", "description", "state", "type", "isDefault", "createDate", "lastOpDate"}
ZONE_CLASS = "org.zstack.header.zone.ZoneInventory"


@pytest.fixture
def storage(zapi: Api, c1: DevCluster, pool: str) -> dict:
    r = zapi.add_ceph("zoned", [c1.mon_url], poolName=pool)
    assert r.status_code == 200, r.text
    return r.json()["inventory"]


def create_zone(api: Api, name: str = "zone-1", **params: object) -> dict:
    r = api.post("/zones", json={"params": {"name": name, **params}})
    assert r.status_code == 200, r.text
    return r.json()["inventory"]


def zones(api: Api, **query: str) -> list[dict]:
    r = api.get("/zones", params=query)
    assert r.status_code == 200, r.text
    return r.json()["inventories"]


def zone_action(api: Api, zone_uuid: str, action: str, params: dict, **kw: object):  # type: ignore[no-untyped-def]
    return api.put(f"/zones/{zone_uuid}/actions", json={action: params}, **kw)


# ---------------------------------------------------------------- create


def test_create_zone_gives_an_enabled_zstack_zone(zapi: Api) -> None:
    r = zapi.post("/zones", json={"params": {"name": "  east  ", "description": "first"}},
                  headers={"X-JSON-Schema": "true"})
    assert r.status_code == 200, r.text
    inv = r.json()["inventory"]
    assert set(inv) == ZONE_FIELDS
    assert inv["name"] == "east" and inv["description"] == "first"  # trimmed, as ZStack does
    assert inv["state"] == "Enabled" and inv["type"] == "zstack"
    assert len(inv["uuid"]) == 32 and inv["createDate"].endswith((" AM", " PM"))
    assert r.json()["schema"] == {"inventory": ZONE_CLASS}
    [found] = zones(zapi, q=f"uuid={inv['uuid']}")
    assert found == inv


def test_create_zone_takes_resource_uuid_and_tags(zapi: Api) -> None:
    wanted = uuid.uuid4().hex
    inv = create_zone(zapi, "tagged", resourceUuid=wanted,
                      systemTags=["zone::purpose::images"], userTags=["owner::ops"])
    assert inv["uuid"] == wanted
    assert [z["uuid"] for z in zones(zapi, q="__userTag__=owner::ops")] == [wanted]
    assert [z["uuid"] for z in zones(zapi, q="__systemTag__~=zone::%")] == [wanted]
    [tag] = zapi.get("/user-tags", params={"q": f"resourceUuid={wanted}"}).json()["inventories"]
    assert tag["resourceType"] == "ZoneVO" and tag["tag"] == "owner::ops"


@pytest.mark.parametrize("params, words", [
    ({}, ["field[params.name] is mandatory"]),
    ({"name": ""}, ["name"]),
    ({"name": "   "}, ["name"]),
    ({"name": "x" * 256}, ["params.name"]),
    ({"name": "n", "description": "x" * 2049}, ["params.description"]),
    ({"name": "n", "resourceUuid": "not-a-uuid"}, ["resourceUuid", "not-a-uuid"]),
    ({"name": "n", "userTags": [""]}, ["empty"]),
])
def test_bad_create_is_refused_naming_the_field_and_makes_nothing(zapi: Api, params: dict, words: list[str]) -> None:
    before = zones(zapi)
    r = zapi.post("/zones", json={"params": params})
    assert_error(r, 400, "SYS.1007", *words)
    assert zones(zapi) == before


def test_a_taken_resource_uuid_is_refused(zapi: Api) -> None:
    inv = create_zone(zapi, "first")
    r = zapi.post("/zones", json={"params": {"name": "second", "resourceUuid": inv["uuid"]}})
    assert_error(r, 400, "SYS.1007", inv["uuid"], "already exists")
    assert [z["name"] for z in zones(zapi)] == ["first"]


def test_create_zone_async_on_request(zapi: Api) -> None:
    r = zapi.post("/zones", json={"params": {"name": "later"}}, headers={"Prefer": "respond-async"})
    assert r.status_code == 202 and "/zstack/v1/api-jobs/" in r.json()["location"]
    done = zapi.wait_job(r)
    assert done.status_code == 200 and done.json()["inventory"]["name"] == "later"
    assert [z["name"] for z in zones(zapi)] == ["later"]


# ---------------------------------------------------------------- query


def test_query_zone_speaks_the_query_grammar(zapi: Api) -> None:
    a = create_zone(zapi, "alpha", description="first")
    b = create_zone(zapi, "beta")
    assert [z["uuid"] for z in zones(zapi, q="name=alpha")] == [a["uuid"]]
    assert [z["uuid"] for z in zones(zapi, q="name~=%ET%")] == [b["uuid"]]
    assert [z["uuid"] for z in zones(zapi, q="description is null")] == [b["uuid"]]
    assert [z["name"] for z in zones(zapi, sort="-name")] == ["beta", "alpha"]
    assert [z["name"] for z in zones(zapi, sort="+createDate", limit="1", start="1")] == ["beta"]
    assert zapi.get("/zones", params={"count": "true"}).json() == {"total": 2}
    page = zapi.get("/zones", params={"replyWithCount": "true", "limit": "1"}).json()
    assert page["total"] == 2 and len(page["inventories"]) == 1
    assert page["schema"] == {"inventories[0]": ZONE_CLASS}
    only = zapi.get("/zones", params={"fields": "uuid,name", "q": "name=alpha"}).json()["inventories"]
    assert only == [{"uuid": a["uuid"], "name": "alpha"}]
    # by uuid: still a list, as ZStack answers
    r = zapi.get(f"/zones/{a['uuid']}")
    assert r.status_code == 200 and [z["uuid"] for z in r.json()["inventories"]] == [a["uuid"]]
    assert zapi.get(f"/zones/{uuid.uuid4().hex}").json()["inventories"] == []


@pytest.mark.parametrize("params", [{"q": "nosuch=1"}, {"q": "name"}, {"sort": "-nosuch"},
                                    {"q": "createDate>yesterday"}, {"limit": "many"}])
def test_bad_zone_query_is_invalid_argument(zapi: Api, params: dict) -> None:
    assert_error(zapi.get("/zones", params=params), 400, "SYS.1007")


# ---------------------------------------------------------------- update and state


def test_update_zone_changes_only_what_is_given(zapi: Api) -> None:
    z = create_zone(zapi, "old", description="keep me")
    r = zone_action(zapi, z["uuid"], "updateZone", {"name": "new"})
    assert r.status_code == 200, r.text
    inv = r.json()["inventory"]
    assert inv["name"] == "new" and inv["description"] == "keep me"
    r = zone_action(zapi, z["uuid"], "updateZone", {"description": ""})
    assert r.json()["inventory"]["description"] == "" and r.json()["inventory"]["name"] == "new"
    r = zone_action(zapi, z["uuid"], "updateZone", {})
    assert r.status_code == 200 and r.json()["inventory"]["name"] == "new"


@pytest.mark.parametrize("params, words", [
    ({"name": ""}, ["name"]),
    ({"name": "x" * 256}, ["updateZone.name"]),
    ({"description": "x" * 2049}, ["updateZone.description"]),
    ({"name": 5}, ["updateZone.name"]),
])
def test_bad_update_zone_changes_nothing(zapi: Api, params: dict, words: list[str]) -> None:
    z = create_zone(zapi, "same", description="same")
    assert_error(zone_action(zapi, z["uuid"], "updateZone", params), 400, "SYS.1007", *words)
    assert zones(zapi) == [z]


def test_update_of_unknown_zone_is_404_naming_it(zapi: Api) -> None:
    missing = uuid.uuid4().hex
    assert_error(zone_action(zapi, missing, "updateZone", {"name": "x"}), 404, "SYS.1003", missing, "ZoneVO")


def test_a_body_without_a_known_action_is_refused(zapi: Api) -> None:
    z = create_zone(zapi)
    url = f"/zstack/v1/zones/{z['uuid']}/actions"
    assert_error(zapi.put(f"/zones/{z['uuid']}/actions", json={"renameZone": {"name": "x"}}),
                 400, "SYS.1007", f"the body doesn't contain action mapping to the URL[{url}]")
    assert_error(zapi.put(f"/zones/{z['uuid']}/actions", json={}), 400, "SYS.1007", "doesn't contain action")
    assert_error(zapi.put(f"/zones/{z['uuid']}/actions",
                          json={"updateZone": {"name": "a"}, "changeZoneState": {"stateEvent": "disable"}}),
                 400, "SYS.1007", "more than one action")
    assert_error(zapi.put(f"/zones/{z['uuid']}/actions", json={"updateZone": "name"}), 400, "SYS.1007",
                 "updateZone")
    assert zones(zapi) == [z]


def test_change_zone_state(zapi: Api) -> None:
    z = create_zone(zapi)
    r = zone_action(zapi, z["uuid"], "changeZoneState", {"stateEvent": "disable"})
    assert r.status_code == 200 and r.json()["inventory"]["state"] == "Disabled"
    r = zone_action(zapi, z["uuid"], "changeZoneState", {"stateEvent": "disable"})  # no-op
    assert r.status_code == 200 and r.json()["inventory"]["state"] == "Disabled"
    r = zone_action(zapi, z["uuid"], "changeZoneState", {"stateEvent": "enable"})
    assert r.status_code == 200 and r.json()["inventory"]["state"] == "Enabled"
    assert [x["uuid"] for x in zones(zapi, q="state=Enabled")] == [z["uuid"]]


@pytest.mark.parametrize("params, words", [
    ({"stateEvent": "Disable"}, ["stateEvent", "Disable", "[enable, disable]"]),
    ({"stateEvent": "maintain"}, ["maintain"]),
    ({}, ["changeZoneState.stateEvent"]),
])
def test_bad_state_event_changes_nothing(zapi: Api, params: dict, words: list[str]) -> None:
    z = create_zone(zapi)
    assert_error(zone_action(zapi, z["uuid"], "changeZoneState", params), 400, "SYS.1007", *words)
    assert zones(zapi)[0]["state"] == "Enabled"


def test_zone_actions_async_on_request(zapi: Api) -> None:
    z = create_zone(zapi)
    job = uuid.uuid4().hex
    r = zone_action(zapi, z["uuid"], "updateZone", {"name": "via-job"}, headers={"X-Job-UUID": job})
    assert r.status_code == 202 and r.json()["location"].endswith(f"/zstack/v1/api-jobs/{job}")
    done = zapi.wait_job(r)
    assert done.status_code == 200 and done.json()["inventory"]["name"] == "via-job"
    # an async failure is the job's answer: 503 with the ErrorCode
    r = zone_action(zapi, uuid.uuid4().hex, "changeZoneState", {"stateEvent": "disable"},
                    headers={"Prefer": "respond-async"})
    failed = zapi.wait_job(r)
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "SYS.1003"


# ---------------------------------------------------------------- delete


def test_delete_zone_and_its_tags(zapi: Api) -> None:
    z = create_zone(zapi, userTags=["gone::soon"])
    assert zapi.delete(f"/zones/{z['uuid']}").status_code == 200
    assert zones(zapi) == []
    assert zapi.get("/user-tags", params={"q": f"resourceUuid={z['uuid']}"}).json()["inventories"] == []


def test_delete_of_unknown_zone_succeeds(zapi: Api) -> None:
    assert zapi.delete(f"/zones/{uuid.uuid4().hex}").status_code == 200


def test_delete_zone_with_a_bad_delete_mode_is_refused(zapi: Api) -> None:
    z = create_zone(zapi)
    assert_error(zapi.delete(f"/zones/{z['uuid']}", params={"deleteMode": "Brutal"}), 400, "SYS.1007", "deleteMode")
    assert zones(zapi) == [z]
    r = zapi.delete(f"/zones/{z['uuid']}", params={"deleteMode": "Enforcing"}, headers={"Prefer": "respond-async"})
    assert zapi.wait_job(r).status_code == 200
    assert zones(zapi) == []


# ---------------------------------------------------------------- attach and detach (real storage)


@pytest.mark.ceph
def test_attach_and_detach_a_storage(zapi: Api, storage: dict) -> None:
    z = create_zone(zapi, "east")
    bs = storage["uuid"]
    r = zapi.post(f"/zones/{z['uuid']}/backup-storage/{bs}", json={"params": {}},
                  headers={"X-JSON-Schema": "true"})
    assert r.status_code == 200, r.text
    inv = r.json()["inventory"]
    assert inv["uuid"] == bs and inv["attachedZoneUuids"] == [z["uuid"]]
    assert r.json()["schema"]["inventory"].endswith("CephBackupStorageInventory")  # the most specific
    # the attachment is queryable from both sides
    for q in (f"attachedZoneUuids={z['uuid']}", f"zone.uuid={z['uuid']}", "zone.name=east", "zone.state=Enabled"):
        assert [i["uuid"] for i in zapi.storages(q=q)] == [bs], q
    assert zapi.storages(q="zone.name=west") == []
    assert zapi.storages(q="attachedZoneUuids is null") == []
    assert [x["uuid"] for x in zones(zapi, q=f"backupStorage.uuid={bs}")] == [z["uuid"]]
    assert [x["uuid"] for x in zones(zapi, q="backupStorage.type=Ceph")] == [z["uuid"]]
    # detach
    r = zapi.delete(f"/zones/{z['uuid']}/backup-storage/{bs}")
    assert r.status_code == 200, r.text
    assert r.json()["inventory"]["attachedZoneUuids"] == []
    assert zapi.storages(q=f"zone.uuid={z['uuid']}") == []
    assert [i["uuid"] for i in zapi.storages(q="attachedZoneUuids is null")] == [bs]


@pytest.mark.ceph
def test_attach_twice_is_a_conflict(zapi: Api, storage: dict) -> None:
    z = create_zone(zapi)
    bs = storage["uuid"]
    assert zapi.post(f"/zones/{z['uuid']}/backup-storage/{bs}", json={"params": {}}).status_code == 200
    r = zapi.post(f"/zones/{z['uuid']}/backup-storage/{bs}", json={"params": {}})
    assert_error(r, 409, "SYS.1006", f"backup storage[uuid:{bs}] has been attached to zone[uuid:{z['uuid']}]")
    assert zapi.storages()[0]["attachedZoneUuids"] == [z["uuid"]]


@pytest.mark.ceph
def test_attach_to_several_zones_and_without_a_body(zapi: Api, storage: dict) -> None:
    a, b = create_zone(zapi, "a"), create_zone(zapi, "b")
    bs = storage["uuid"]
    assert zapi.post(f"/zones/{a['uuid']}/backup-storage/{bs}").status_code == 200
    r = zapi.post(f"/zones/{b['uuid']}/backup-storage/{bs}", json={"params": {}, "systemTags": []})
    assert sorted(r.json()["inventory"]["attachedZoneUuids"]) == sorted([a["uuid"], b["uuid"]])


@pytest.mark.ceph
def test_detach_of_a_storage_not_attached_is_a_conflict(zapi: Api, storage: dict) -> None:
    z = create_zone(zapi)
    bs = storage["uuid"]
    r = zapi.delete(f"/zones/{z['uuid']}/backup-storage/{bs}")
    assert_error(r, 409, "SYS.1006", f"backup storage[uuid:{bs}] has not been attached to zone[uuid:{z['uuid']}]")


@pytest.mark.ceph
def test_attach_and_detach_name_what_is_missing(zapi: Api, storage: dict) -> None:
    z = create_zone(zapi)
    bs, nobody = storage["uuid"], uuid.uuid4().hex
    for method in ("post", "delete"):
        call = getattr(zapi, method)
        assert_error(call(f"/zones/{nobody}/backup-storage/{bs}"), 404, "SYS.1003",
                     "field[zoneUuid]", nobody, "ZoneVO")
        assert_error(call(f"/zones/{z['uuid']}/backup-storage/{nobody}"), 404, "SYS.1003",
                     "field[backupStorageUuid]", nobody, "BackupStorageVO")
        # both missing: the zone is named first, as ZStack validates zoneUuid first
        assert_error(call(f"/zones/{nobody}/backup-storage/{nobody}"), 404, "SYS.1003", "field[zoneUuid]")
    assert zapi.storages()[0]["attachedZoneUuids"] == []


@pytest.mark.ceph
def test_attach_and_detach_async_on_request(zapi: Api, storage: dict) -> None:
    z = create_zone(zapi)
    bs = storage["uuid"]
    r = zapi.post(f"/zones/{z['uuid']}/backup-storage/{bs}", json={"params": {}},
                  headers={"X-Job-UUID": uuid.uuid4().hex})
    done = zapi.wait_job(r)
    assert done.status_code == 200 and done.json()["inventory"]["attachedZoneUuids"] == [z["uuid"]]
    r = zapi.post(f"/zones/{z['uuid']}/backup-storage/{bs}", json={"params": {}},
                  headers={"Prefer": "respond-async"})
    failed = zapi.wait_job(r)
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "SYS.1006"
    r = zapi.delete(f"/zones/{z['uuid']}/backup-storage/{bs}", headers={"Prefer": "respond-async"})
    assert zapi.wait_job(r).json()["inventory"]["attachedZoneUuids"] == []


@pytest.mark.ceph
def test_deleting_a_zone_detaches_its_storages(zapi: Api, storage: dict) -> None:
    z, other = create_zone(zapi, "doomed"), create_zone(zapi, "stays")
    bs = storage["uuid"]
    for zone in (z, other):
        assert zapi.post(f"/zones/{zone['uuid']}/backup-storage/{bs}").status_code == 200
    assert zapi.delete(f"/zones/{z['uuid']}").status_code == 200
    [inv] = zapi.storages()
    assert inv["uuid"] == bs and inv["attachedZoneUuids"] == [other["uuid"]]


@pytest.mark.ceph
def test_deleting_a_storage_detaches_it(zapi: Api, storage: dict) -> None:
    z = create_zone(zapi)
    bs = storage["uuid"]
    assert zapi.post(f"/zones/{z['uuid']}/backup-storage/{bs}").status_code == 200
    assert zapi.delete(f"/backup-storage/{bs}").status_code == 200
    assert zones(zapi, q=f"backupStorage.uuid={bs}") == []
    assert [x["uuid"] for x in zones(zapi)] == [z["uuid"]]
