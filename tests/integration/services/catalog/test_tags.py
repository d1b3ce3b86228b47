"""System and user tags: stored on create, queryable (QuerySystemTag, QueryUserTag,
``q=__systemTag__`` / ``q=__userTag__``), and CreateSystemTag, CreateUserTag,
UpdateSystemTag, DeleteTag."""
from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import Api, DevCluster, assert_error

CIDR = "backupStorage::data::network::cidr::"
TAG_FIELDS = {"uuid", "resourceUuid", "resourceType", "tag", "type", "createDate", "lastOpDate"}


@pytest.fixture
def zone(zapi: Api) -> dict:
    r = zapi.post("/zones", json={"params": {"name": "tagged"}})
    assert r.status_code == 200, r.text
    return r.json()["inventory"]


@pytest.fixture
def storage(api: Api, c1: DevCluster, pool: str) -> dict:
    r = api.post("/backup-storage/ceph", json={
        "params": {"name": "tagged", "monUrls": [c1.mon_url], "poolName": pool,
                   "systemTags": [f"{CIDR}127.0.0.0/8"], "userTags": ["tier::gold", "team::ops"]},
        "userTags": ["site::paris"],
    })
    assert r.status_code == 200, r.text
    return r.json()["inventory"]


def found(api: Api, path: str, **query: object) -> list[dict]:
    r = api.get(path, params=query)
    assert r.status_code == 200, r.text
    return r.json()["inventories"]


def create_tag(api: Api, kind: str, resource_type: str, resource_uuid: str, tag: str, **kw: object) -> httpx.Response:
    return api.post(f"/{kind}-tags", json={"params": {
        "resourceType": resource_type, "resourceUuid": resource_uuid, "tag": tag}}, **kw)


# ---------------------------------------------------------------- tags given on create


@pytest.mark.ceph
def test_tags_given_on_add_are_stored_and_queryable(api: Api, storage: dict) -> None:
    bs = storage["uuid"]
    r = api.get("/system-tags", params={"q": f"resourceUuid={bs}", "sort": "tag"})
    system = r.json()["inventories"]
    assert [t["tag"] for t in system] == [f"{CIDR}127.0.0.0/8", "ceph::predefinedPool"]
    for t in system:
        assert set(t) == TAG_FIELDS | {"inherent"}
        assert t["type"] == "System" and t["resourceType"] == "BackupStorageVO" and t["resourceUuid"] == bs
    assert {t["tag"]: t["inherent"] for t in system} == {f"{CIDR}127.0.0.0/8": False, "ceph::predefinedPool": True}
    assert r.json()["schema"]["inventories[0]"] == "org.zstack.header.tag.SystemTagInventory"
    r = api.get("/user-tags", params={"q": f"resourceUuid={bs}"})
    user = r.json()["inventories"]
    assert sorted(t["tag"] for t in user) == ["site::paris", "team::ops", "tier::gold"]  # top level and params
    assert all(set(t) == TAG_FIELDS and t["type"] == "User" for t in user)
    assert r.json()["schema"]["inventories[0]"] == "org.zstack.header.tag.UserTagInventory"


@pytest.mark.ceph
@pytest.mark.parametrize("path", ["/backup-storage", "/backup-storage/ceph"])
def test_storages_are_found_by_their_tags(api: Api, storage: dict, path: str) -> None:
    bs = storage["uuid"]
    hits = {
        "__userTag__=tier::gold": [bs],
        "__userTag__~=tier::%": [bs],
        "__userTag__?=nope,site::paris": [bs],
        "__userTag__=tier::silver": [],
        "__userTag__!=tier::gold": [],        # no tag equals it: none of this storage's do
        "__userTag__!=tier::silver": [bs],
        "__userTag__ is null": [],
        "__userTag__ not null": [bs],
        f"__systemTag__={CIDR}127.0.0.0/8": [bs],
        "__systemTag__=ceph::predefinedPool": [bs],
        "__systemTag__=tier::gold": [],       # a user tag is not a system tag
        "__userTag__=ceph::predefinedPool": [],
    }
    for q, want in hits.items():
        assert [i["uuid"] for i in found(api, path, q=q)] == want, q


# ---------------------------------------------------------------- QuerySystemTag / QueryUserTag


def test_tag_queries_speak_the_query_grammar(zapi: Api, zone: dict) -> None:
    z = zone["uuid"]
    for tag in ("colour::blue", "colour::red", "size::big"):
        assert create_tag(zapi, "user", "ZoneVO", z, tag).status_code == 200
    assert create_tag(zapi, "system", "ZoneVO", z, "zone::note::x").status_code == 200
    mine = f"resourceUuid={z}"
    assert [t["tag"] for t in found(zapi, "/user-tags", q=[mine, "tag~=colour::%"], sort="-tag")] == \
        ["colour::red", "colour::blue"]
    assert [t["tag"] for t in found(zapi, "/user-tags", q=[mine, "type=User"], sort="tag", limit=1, start=2)] == \
        ["size::big"]
    assert found(zapi, "/user-tags", q=[mine, "type=System"]) == []
    r = zapi.get("/user-tags", params={"q": mine, "count": "true"})
    assert r.json() == {"total": 3}
    r = zapi.get("/user-tags", params={"q": [mine, "tag=size::big"], "fields": "tag,resourceType"})
    assert r.json()["inventories"] == [{"tag": "size::big", "resourceType": "ZoneVO"}]
    [sys_tag] = found(zapi, "/system-tags", q=[mine, "inherent=false"])
    assert sys_tag["tag"] == "zone::note::x"
    assert found(zapi, "/system-tags", q=[mine, "inherent=true"]) == []
    # by uuid: a list; and a user tag is not found among system tags
    [one] = found(zapi, f"/system-tags/{sys_tag['uuid']}")
    assert one["uuid"] == sys_tag["uuid"]
    user_uuid = found(zapi, "/user-tags", q=[mine, "tag=size::big"])[0]["uuid"]
    assert found(zapi, f"/system-tags/{user_uuid}") == []
    assert [t["uuid"] for t in found(zapi, f"/user-tags/{user_uuid}")] == [user_uuid]


@pytest.mark.parametrize("path, params", [
    ("/system-tags", {"q": "nosuch=1"}),
    ("/user-tags", {"q": "inherent=true"}),   # user tags have no inherent field, as in ZStack
    ("/system-tags", {"q": "inherent=maybe"}),
    ("/system-tags", {"q": "createDate<soon"}),
    ("/user-tags", {"sort": "+nosuch"}),
    ("/user-tags", {"q": "tag"}),
])
def test_bad_tag_query_is_invalid_argument(api: Api, path: str, params: dict) -> None:
    assert_error(api.get(path, params=params), 400, "SYS.1007")


# ---------------------------------------------------------------- CreateUserTag / CreateSystemTag


def test_create_user_tag(zapi: Api, zone: dict) -> None:
    r = create_tag(zapi, "user", "ZoneVO", zone["uuid"], "  owner::me  ", headers={"X-JSON-Schema": "true"})
    assert r.status_code == 200, r.text
    inv = r.json()["inventory"]
    assert set(inv) == TAG_FIELDS and inv["type"] == "User" and inv["tag"] == "owner::me"
    assert r.json()["schema"] == {"inventory": "org.zstack.header.tag.UserTagInventory"}
    assert [z["uuid"] for z in found(zapi, "/zones", q="__userTag__=owner::me")] == [zone["uuid"]]


def test_a_duplicate_user_tag_is_a_conflict(zapi: Api, zone: dict) -> None:
    z = zone["uuid"]
    assert create_tag(zapi, "user", "ZoneVO", z, "once").status_code == 200
    assert_error(create_tag(zapi, "user", "ZoneVO", z, "once"), 409, "SYS.1006",
                 f"Duplicated Tag[tag:once, type:User, resourceType:ZoneVO, resourceUuid:{z}]")
    assert len(found(zapi, "/user-tags", q=f"resourceUuid={z}")) == 1


def test_create_system_tag_and_its_duplicate(zapi: Api, zone: dict) -> None:
    z = zone["uuid"]
    r = create_tag(zapi, "system", "ZoneVO", z, "zone::purpose::images")
    assert r.status_code == 200, r.text
    inv = r.json()["inventory"]
    assert inv["type"] == "System" and inv["inherent"] is False
    again = create_tag(zapi, "system", "ZoneVO", z, "zone::purpose::images")
    assert again.status_code == 200 and again.json()["inventory"]["uuid"] == inv["uuid"]
    assert len(found(zapi, "/system-tags", q=f"resourceUuid={z}")) == 1


@pytest.mark.parametrize("kind, params, status, code, words", [
    ("user", {"resourceType": "HostVO", "tag": "t"}, 400, "SYS.1007", ["no resource type[HostVO] found in tag system"]),
    ("user", {"tag": "t", "resourceUuid": "0" * 32}, 404, "SYS.1003", ["field[resourceUuid]", "0" * 32, "ZoneVO"]),
    ("user", {"tag": ""}, 400, "SYS.1007", ["empty"]),
    ("user", {"tag": "   "}, 400, "SYS.1007", ["empty"]),
    ("user", {"tag": "x" * 2049}, 400, "SYS.1007", ["params.tag"]),
    ("user", {"tag": None}, 400, "SYS.1007", ["params.tag"]),
    ("system", {"tag": "ceph::predefinedPool"}, 400, "SYS.1007", ["ceph::predefinedPool"]),
    ("system", {"tag": f"{CIDR}10.0.0.1/8"}, 400, "SYS.1007", ["10.0.0.0/8"]),
    ("system", {"tag": f"{CIDR}nonsense"}, 400, "SYS.1007", ["nonsense"]),
])
def test_bad_create_tag_is_refused_and_creates_nothing(
        zapi: Api, zone: dict, kind: str, params: dict, status: int, code: str, words: list[str]) -> None:
    body = {"resourceType": "ZoneVO", "resourceUuid": zone["uuid"], **params}
    body = {k: v for k, v in body.items() if v is not None}
    assert_error(zapi.post(f"/{kind}-tags", json={"params": body}), status, code, *words)
    for path in ("/user-tags", "/system-tags"):
        assert found(zapi, path, q=f"resourceUuid={zone['uuid']}") == []


def test_missing_create_tag_fields_are_named(zapi: Api) -> None:
    r = zapi.post("/user-tags", json={"params": {"resourceType": "ZoneVO"}})
    assert_error(r, 400, "SYS.1007", "params.resourceUuid", "mandatory")


def test_only_one_data_network_cidr_per_resource(zapi: Api, zone: dict) -> None:
    z = zone["uuid"]
    assert create_tag(zapi, "system", "ZoneVO", z, f"{CIDR}10.0.0.0/8").status_code == 200
    assert_error(create_tag(zapi, "system", "ZoneVO", z, f"{CIDR}192.168.0.0/16"), 400, "SYS.1007",
                 "only one", f"{CIDR}10.0.0.0/8")
    assert [t["tag"] for t in found(zapi, "/system-tags", q=f"resourceUuid={z}")] == [f"{CIDR}10.0.0.0/8"]


def test_create_tag_async_on_request(zapi: Api, zone: dict) -> None:
    r = create_tag(zapi, "user", "ZoneVO", zone["uuid"], "later", headers={"Prefer": "respond-async"})
    assert r.status_code == 202
    done = zapi.wait_job(r)
    assert done.status_code == 200 and done.json()["inventory"]["tag"] == "later"
    r = create_tag(zapi, "user", "ZoneVO", uuid.uuid4().hex, "x", headers={"X-Job-UUID": uuid.uuid4().hex})
    failed = zapi.wait_job(r)
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "SYS.1003"


@pytest.mark.ceph
def test_tags_on_a_storage_by_either_resource_type(api: Api, storage: dict) -> None:
    bs = storage["uuid"]
    assert create_tag(api, "user", "CephBackupStorageVO", bs, "by-ceph-type").status_code == 200
    assert create_tag(api, "user", "BackupStorageVO", bs, "by-base-type").status_code == 200
    assert [i["uuid"] for i in api.storages(q="__userTag__=by-ceph-type")] == [bs]
    # the storage already has a data-network cidr from its add
    assert_error(create_tag(api, "system", "BackupStorageVO", bs, f"{CIDR}10.0.0.0/8"), 400, "SYS.1007", "only one")


# ---------------------------------------------------------------- UpdateSystemTag


def test_update_system_tag(zapi: Api, zone: dict) -> None:
    z = zone["uuid"]
    t = create_tag(zapi, "system", "ZoneVO", z, "zone::a").json()["inventory"]
    other = create_tag(zapi, "system", "ZoneVO", z, "zone::b").json()["inventory"]
    r = zapi.put(f"/system-tags/{t['uuid']}/actions", json={"updateSystemTag": {"tag": "zone::c"}})
    assert r.status_code == 200, r.text
    assert r.json()["inventory"]["tag"] == "zone::c" and r.json()["inventory"]["uuid"] == t["uuid"]
    assert_error(zapi.put(f"/system-tags/{t['uuid']}/actions", json={"updateSystemTag": {"tag": other["tag"]}}),
                 409, "SYS.1006", "Duplicated Tag")
    assert_error(zapi.put(f"/system-tags/{t['uuid']}/actions", json={"updateSystemTag": {"tag": ""}}),
                 400, "SYS.1007")
    assert_error(zapi.put(f"/system-tags/{t['uuid']}/actions", json={"renameTag": {"tag": "x"}}),
                 400, "SYS.1007", "doesn't contain action mapping")
    nobody = uuid.uuid4().hex
    assert_error(zapi.put(f"/system-tags/{nobody}/actions", json={"updateSystemTag": {"tag": "x"}}),
                 404, "SYS.1003", nobody)
    assert sorted(x["tag"] for x in found(zapi, "/system-tags", q=f"resourceUuid={z}")) == ["zone::b", "zone::c"]


# ---------------------------------------------------------------- DeleteTag


def test_delete_tag_of_either_kind(zapi: Api, zone: dict) -> None:
    z = zone["uuid"]
    user = create_tag(zapi, "user", "ZoneVO", z, "u").json()["inventory"]
    system = create_tag(zapi, "system", "ZoneVO", z, "zone::s").json()["inventory"]
    assert zapi.delete(f"/tags/{user['uuid']}").status_code == 200
    r = zapi.delete(f"/tags/{system['uuid']}", headers={"Prefer": "respond-async"})
    assert zapi.wait_job(r).status_code == 200
    for path in ("/user-tags", "/system-tags"):
        assert found(zapi, path, q=f"resourceUuid={z}") == []


def test_delete_of_unknown_tag_succeeds(api: Api) -> None:
    r = api.delete(f"/tags/{uuid.uuid4().hex}")
    assert r.status_code == 200 and r.json() == {}


@pytest.mark.ceph
def test_an_inherent_tag_cannot_be_removed_or_changed(api: Api, storage: dict) -> None:
    [inherent] = found(api, "/system-tags", q=[f"resourceUuid={storage['uuid']}", "inherent=true"])
    assert inherent["tag"] == "ceph::predefinedPool"
    assert_error(api.delete(f"/tags/{inherent['uuid']}"), 409, "SYS.1006",
                 f"tag[uuid:{inherent['uuid']}] is an inherent system tag, can not be removed")
    r = api.put(f"/system-tags/{inherent['uuid']}/actions", json={"updateSystemTag": {"tag": "x::y"}})
    assert_error(r, 409, "SYS.1006", "inherent")
    assert found(api, f"/system-tags/{inherent['uuid']}") == [inherent]
