"""The image and session APIs ZStack's SDK has beyond the basics (issue 16 points 5, 6):
SyncImageSize's actual size, SetImageBootMode, SetImageSecurityLevel, SetImageQga /
GetImageQga, RenewSession, GetZone, and a zone's isDefault."""
from __future__ import annotations

import time
import uuid

from tests.conftest import Api, DevCluster, Server
from tests.integration.services.images.test_images import (  # noqa: F401 - fixtures
    Files,
    MiB,
    action,
    add_image,
    added,
    files,
    image_data,
    storage,
)

GONE = "0123456789abcdef0123456789abcdef"


def system_tags(api: Api, resource_uuid: str) -> list[str]:
    r = api.get("/system-tags", params={"q": f"resourceUuid={resource_uuid}"})
    assert r.status_code == 200, r.text
    return sorted(t["tag"] for t in r.json()["inventories"])


def test_sync_image_size_reads_size_and_actual_size_from_rbd(
        api: Api, c1: DevCluster, pool: str, storage: str, files: Files) -> None:
    # 1 MiB of data then 3 MiB of zeros: the RBD image holds only what is not a hole
    inv = added(api, add_image(api, files.add("a.raw", image_data(MiB, zero_tail=3 * MiB)), [storage]))
    c1.resize_image(pool, inv["uuid"], 16 * MiB)
    r = action(api, inv["uuid"], "syncImageSize")
    assert r.status_code == 200, r.text
    got = r.json()["inventory"]
    assert got["size"] == 16 * MiB
    assert MiB <= got["actualSize"] < 4 * MiB, got["actualSize"]


def test_boot_mode_is_a_system_tag_set_again_each_time(api: Api, storage: str, files: Files) -> None:
    inv = added(api, add_image(api, files.add("b.raw", image_data(MiB)), [storage]))
    r = action(api, inv["uuid"], "setImageBootMode", bootMode="UEFI")
    assert r.status_code == 200 and r.json() == {}, r.text
    assert system_tags(api, inv["uuid"]) == ["bootMode::UEFI"]
    action(api, inv["uuid"], "setImageBootMode", bootMode="Legacy")
    assert system_tags(api, inv["uuid"]) == ["bootMode::Legacy"]
    r = action(api, inv["uuid"], "setImageBootMode", bootMode="BIOS")
    assert r.status_code == 400 and "bootMode" in r.json()["error"]["details"]
    r = action(api, GONE, "setImageBootMode", bootMode="UEFI")
    assert r.status_code == 404 and r.json()["error"]["code"] == "SYS.1003"


def test_legacy_boot_is_refused_on_aarch64(api: Api, storage: str, files: Files) -> None:
    inv = added(api, add_image(api, files.add("c.raw", image_data(MiB)), [storage], architecture="aarch64"))
    r = action(api, inv["uuid"], "setImageBootMode", bootMode="Legacy")
    assert r.status_code == 400 and "aarch64 architecture does not support legacy" in r.json()["error"]["details"]
    assert system_tags(api, inv["uuid"]) == []


def test_qga_and_security_level(api: Api, storage: str, files: Files) -> None:
    inv = added(api, add_image(api, files.add("d.raw", image_data(MiB)), [storage]))
    assert api.get(f"/images/{inv['uuid']}/qga").json() == {"enable": False}
    r = action(api, inv["uuid"], "setImageQga", enable=True)
    assert r.status_code == 200 and r.json() == {}, r.text
    assert api.get(f"/images/{inv['uuid']}/qga").json() == {"enable": True}
    assert "qemuga" in system_tags(api, inv["uuid"])
    action(api, inv["uuid"], "setImageQga", enable=False)
    assert api.get(f"/images/{inv['uuid']}/qga").json() == {"enable": False}
    r = action(api, inv["uuid"], "setImageQga", enable="perhaps")
    assert r.status_code == 400
    assert api.get(f"/images/{GONE}/qga").status_code == 404
    r = action(api, inv["uuid"], "setImageSecurityLevel", securityLevel="high")
    assert r.status_code == 200 and r.json() == {}, r.text
    action(api, inv["uuid"], "setImageSecurityLevel", securityLevel="low")
    assert system_tags(api, inv["uuid"]) == ["securityLevel::low"]
    action(api, inv["uuid"], "setImageSecurityLevel")  # no level: none
    assert system_tags(api, inv["uuid"]) == []


def test_renew_session_moves_its_expiry(server: Server) -> None:
    api = server.login()
    session = api.headers["Authorization"].split()[1]
    r = api.put(f"/accounts/sessions/{session}/renew", json={"renewSession": {"duration": 600}})
    assert r.status_code == 200, r.text
    inv = r.json()["inventory"]
    assert inv["uuid"] == session and inv["expiredDate"]
    r = api.put(f"/accounts/sessions/{session}/renew", json={"renewSession": {"duration": 59}})
    assert r.status_code == 400 and "duration" in r.json()["error"]["details"]
    r = api.put(f"/accounts/sessions/{GONE}/renew", json={"renewSession": {}})
    assert r.status_code == 404 or r.json()["error"]["code"] in ("SYS.1003", "ID.1001"), r.text
    # as a job, as the Java SDK calls it
    r = api.put(f"/accounts/sessions/{session}/renew", json={"renewSession": {"duration": 60}},
                headers={"X-Job-UUID": uuid.uuid4().hex})
    done = api.wait_job(r)
    assert done.status_code == 200 and done.json()["inventory"]["uuid"] == session
    api.close()


def test_a_renewed_session_outlives_its_timeout(fresh_server: Server) -> None:
    fresh_server.env["IMGSTORE_SESSION_TIMEOUT"] = "2"
    fresh_server.start()
    api = fresh_server.login()
    session = api.headers["Authorization"].split()[1]
    assert api.put(f"/accounts/sessions/{session}/renew",
                   json={"renewSession": {"duration": 3600}}).status_code == 200
    time.sleep(3)
    assert api.get("/zones").status_code == 200
    api.close()


def test_zones_keep_is_default_and_get_zone(api: Api) -> None:
    try:
        first = api.post("/zones", json={"params": {"name": "z1", "isDefault": True}}).json()["inventory"]
        assert first["isDefault"] is True
        second = api.post("/zones", json={"params": {"name": "z2"}}).json()["inventory"]
        assert second["isDefault"] is False
        # one default at a time, as in ZStack
        third = api.post("/zones", json={"params": {"name": "z3", "isDefault": True}}).json()["inventory"]
        assert third["isDefault"] is True
        by_uuid = {z["uuid"]: z for z in api.get("/zones").json()["inventories"]}
        assert by_uuid[first["uuid"]]["isDefault"] is False
        assert [z["uuid"] for z in api.get("/zones", params={"q": "isDefault=true"}).json()["inventories"]] \
            == [third["uuid"]]
        r = api.put(f"/zones/{second['uuid']}/actions", json={"updateZone": {"isDefault": True}})
        assert r.status_code == 200 and r.json()["inventory"]["isDefault"] is True
        r = api.get(f"/zones/{second['uuid']}/info")
        assert r.status_code == 200, r.text
        [got] = r.json()["inventories"]
        assert got["uuid"] == second["uuid"] and got["isDefault"] is True
        assert api.get(f"/zones/{third['uuid']}/info").json()["inventories"][0]["isDefault"] is False
        assert api.get(f"/zones/{GONE}/info").status_code == 404
    finally:
        for z in api.get("/zones").json()["inventories"]:
            api.delete(f"/zones/{z['uuid']}")


def test_boolean_fields_take_true_and_false_as_strings_too(api: Api) -> None:
    """JSON true/false, or "true"/"false" in any case as ZStack's Gson reads them (a
    script may send them); a number or another string is refused with nothing made."""
    try:
        made = api.post("/zones", json={"params": {"name": "zs", "isDefault": "TRUE"}})
        assert made.status_code == 200 and made.json()["inventory"]["isDefault"] is True, made.text
        made = api.post("/zones", json={"params": {"name": "zf", "isDefault": "false"}})
        assert made.status_code == 200 and made.json()["inventory"]["isDefault"] is False, made.text
        for bad in (0, "yes"):
            refused = api.post("/zones", json={"params": {"name": "zn", "isDefault": bad}})
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "SYS.1007", refused.text
        assert [z["name"] for z in api.get("/zones").json()["inventories"] if z["name"] == "zn"] == []
    finally:
        for z in api.get("/zones").json()["inventories"]:
            api.delete(f"/zones/{z['uuid']}")
