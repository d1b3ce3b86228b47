"""Every failure is ZStack's ErrorCode body with a meaningful status, never a stack trace."""
from __future__ import annotations

import httpx

from tests.conftest import Api

KEYS = {"code", "description", "details", "elaboration", "opaque", "cause"}


def test_unknown_route_is_a_zstack_error(api: Api) -> None:
    r = api.get("/no-such-thing")
    assert r.status_code == 404 and set(r.json()["error"]) >= KEYS


def test_malformed_json_is_invalid_argument(api: Api) -> None:
    r = api.post("/backup-storage/ceph", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "SYS.1007"


def test_missing_required_field_names_it(api: Api) -> None:
    r = api.post("/backup-storage/ceph", json={"params": {"monUrls": ["a:b@h"]}})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "SYS.1007" and "field[params.name] is mandatory" in err["details"]


def test_wrong_type_names_field_and_value(api: Api) -> None:
    r = api.post("/backup-storage/ceph", json={"params": {"name": "n", "monUrls": ["a:b@h"], "importImages": "maybe"}})
    assert r.status_code == 400
    assert "importImages" in r.json()["error"]["details"] and "maybe" in r.json()["error"]["details"]


def test_bad_query_is_invalid_argument(api: Api) -> None:
    for params in ({"q": "name"}, {"limit": "x"}, {"q": "nosuchfield=1"}, {"sort": "-nosuch"},
                   {"q": "totalCapacity>abc"}, {"count": "perhaps"}):
        r = api.get("/backup-storage", params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["code"] == "SYS.1007"


def test_bad_job_uuid_header_is_refused(api: Api) -> None:
    r = api.delete("/backup-storage/0123456789abcdef0123456789abcdef", headers={"X-Job-UUID": "short"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "SYS.1007"


def test_unknown_job_is_404(server) -> None:
    r = httpx.get(f"{server.url}/zstack/v1/api-jobs/0123456789abcdef0123456789abcdef")
    assert r.status_code == 404 and set(r.json()["error"]) >= KEYS


def test_delete_of_unknown_storage_succeeds(api: Api) -> None:
    assert api.delete("/backup-storage/0123456789abcdef0123456789abcdef").status_code == 200
