"""Accounts and sessions over real HTTP: login, logout, validation, refusal of bad sessions."""
from __future__ import annotations

import hashlib
import time

import httpx

from tests.conftest import ADMIN_PASSWORD, Server


def sha512(text: str) -> str:
    return hashlib.sha512(text.encode()).hexdigest()


def login(server: Server, password: str) -> httpx.Response:
    return httpx.put(f"{server.url}/zstack/v1/accounts/login",
                     json={"logInByAccount": {"accountName": "admin", "password": sha512(password)}})


def test_login_returns_the_session_inventory(server: Server) -> None:
    r = login(server, ADMIN_PASSWORD)
    assert r.status_code == 200
    inv = r.json()["inventory"]
    assert len(inv["uuid"]) == 32
    assert set(inv) >= {"uuid", "accountUuid", "userUuid", "userType", "expiredDate", "createDate"}
    assert inv["expiredDate"][-2:] in ("AM", "PM") and inv["expiredDate"][-3] == " "


def test_login_with_a_wrong_password_is_refused(server: Server) -> None:
    r = login(server, "wrong")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "ID.1000"


def test_login_also_served_without_the_context_path(server: Server) -> None:
    r = httpx.put(f"{server.url}/v1/accounts/login",
                  json={"logInByAccount": {"accountName": "admin", "password": sha512(ADMIN_PASSWORD)}})
    assert r.status_code == 200


def test_logout_invalidates_the_session(server: Server) -> None:
    uuid = login(server, ADMIN_PASSWORD).json()["inventory"]["uuid"]
    base = f"{server.url}/zstack/v1"
    assert httpx.get(f"{base}/accounts/sessions/{uuid}/valid").json() == {"valid": True}
    assert httpx.get(f"{base}/backup-storage", headers={"Authorization": f"OAuth {uuid}"}).status_code == 200
    assert httpx.delete(f"{base}/accounts/sessions/{uuid}").status_code == 200
    assert httpx.get(f"{base}/accounts/sessions/{uuid}/valid").json() == {"valid": False}
    r = httpx.get(f"{base}/backup-storage", headers={"Authorization": f"OAuth {uuid}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "ID.1001"


def test_calls_without_a_valid_session_are_refused_and_change_nothing(server: Server) -> None:
    base = f"{server.url}/zstack/v1"
    body = {"params": {"name": "x", "monUrls": ["u:p@10.255.255.1/?monPort=6789"]}}
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "OAuth"},
                    {"Authorization": "OAuth 0123456789abcdef0123456789abcdef"}):
        r = httpx.post(f"{base}/backup-storage/ceph", json=body, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        err = r.json()["error"]
        assert err["code"] == "ID.1001"
        assert set(err) >= {"code", "description", "details", "elaboration", "opaque", "cause"}
    api = server.login()
    assert api.storages(q="name=x") == []


def test_sessions_expire(tmp_path) -> None:
    srv = Server(tmp_path, env={"IMGSTORE_SESSION_TIMEOUT": "1"}).start()
    try:
        api = srv.login()
        assert api.get("/backup-storage").status_code == 200
        time.sleep(1.5)
        r = api.get("/backup-storage")
        assert r.status_code == 401 and r.json()["error"]["code"] == "ID.1001"
    finally:
        srv.stop()


def test_generated_admin_password_is_written_0600(tmp_path) -> None:
    srv = Server(tmp_path, env={"IMGSTORE_ADMIN_PASSWORD": ""})
    srv.env["IMGSTORE_ADMIN_PASSWORD"] = ""
    srv.start()
    try:
        path = tmp_path / "admin-password"
        assert path.stat().st_mode & 0o777 == 0o600
        password = path.read_text().strip()
        assert login(srv, password).status_code == 200
        assert password not in srv.log().replace(str(path), "")
    finally:
        srv.stop()
