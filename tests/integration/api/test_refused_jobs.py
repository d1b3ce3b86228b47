"""An async API refused before its job starts (issue 16 point 1).

ZStack's RestServer answers a job API with 202 once the request names a usable job uuid;
the session and the body are checked by the job, so a refusal is a 503 on the poll with
the ErrorCode. That is the only path on which the Java SDK hands
its caller a parsed ErrorCode (``ID.1001`` makes re-login code fire) and on which
``call(Completion)`` calls back at all. A malformed or reused X-Job-UUID stays an
immediate 400, as in ZStack.
"""
from __future__ import annotations

import time
import uuid

import httpx

from tests.conftest import Api, Server

GONE = "0123456789abcdef0123456789abcdef"


def _poll(server: Server, r: httpx.Response) -> httpx.Response:
    """The SDK's first poll: at once, to the location, with no usable session."""
    assert r.status_code == 202, r.text
    location = r.json()["location"]
    assert "/zstack/v1/api-jobs/" in location
    return httpx.get(location, headers={"Authorization": "OAuth null"}, timeout=10)


def _logged_out(server: Server) -> dict[str, str]:
    api = server.login()
    session = api.headers["Authorization"].split()[1]
    assert api.delete(f"/accounts/sessions/{session}").status_code == 200
    api.close()
    return {"Authorization": f"OAuth {session}"}


def test_a_logged_out_session_fails_the_job_with_id_1001(server: Server, api: Api) -> None:
    job = uuid.uuid4().hex
    r = httpx.post(f"{server.url}/zstack/v1/zones", json={"params": {"name": "never"}},
                   headers={**_logged_out(server), "X-Job-UUID": job})
    assert r.json()["location"].endswith(f"/api-jobs/{job}")
    done = _poll(server, r)
    assert done.status_code == 503, done.text
    assert done.json()["error"]["code"] == "ID.1001"
    assert [z for z in api.get("/zones").json()["inventories"] if z["name"] == "never"] == []


def test_no_session_with_prefer_async_fails_the_job_with_id_1001(server: Server) -> None:
    r = httpx.post(f"{server.url}/v1/backup-storage/ceph",
                   json={"params": {"name": "x", "monUrls": ["root:pw@127.0.0.1"]}},
                   headers={"Prefer": "respond-async"})
    done = _poll(server, r)
    assert done.status_code == 503 and done.json()["error"]["code"] == "ID.1001"


def test_a_refused_body_fails_the_job_with_sys_1007(api: Api, server: Server) -> None:
    # a NUL byte, refused before the route runs
    r = api.put(f"/backup-storage/{GONE}/actions", content=b'{"updateBackupStorage":{"name":"a\\u0000b"}}',
                headers={"X-Job-UUID": uuid.uuid4().hex, "Content-Type": "application/json"})
    done = _poll(server, r)
    assert done.status_code == 503 and done.json()["error"]["code"] == "SYS.1007"
    assert "U+0000" in done.json()["error"]["details"]
    # a missing mandatory field, refused by the body's validation
    r = api.post("/zones", json={"params": {}}, headers={"X-Job-UUID": uuid.uuid4().hex})
    done = _poll(server, r)
    assert done.status_code == 503 and "field[params.name] is mandatory" in done.json()["error"]["details"]
    # an action body naming no action
    r = api.put(f"/zones/{GONE}/actions", json={"noSuchAction": {}}, headers={"Prefer": "respond-async"})
    done = _poll(server, r)
    assert done.status_code == 503 and "doesn't contain action mapping" in done.json()["error"]["details"]


def test_without_a_job_the_refusal_stays_immediate(server: Server) -> None:
    r = httpx.post(f"{server.url}/zstack/v1/zones", json={"params": {"name": "x"}})
    assert r.status_code == 401 and r.json()["error"]["code"] == "ID.1001"
    # a sync API keeps its immediate answer whatever the headers (the SDK does not poll it)
    r = httpx.get(f"{server.url}/zstack/v1/zones", headers={"X-Job-UUID": uuid.uuid4().hex})
    assert r.status_code == 401 and r.json()["error"]["code"] == "ID.1001"


def test_a_malformed_or_reused_job_uuid_is_still_an_immediate_400(server: Server, api: Api) -> None:
    dead = _logged_out(server)
    r = httpx.post(f"{server.url}/zstack/v1/zones", json={"params": {"name": "x"}},
                   headers={**dead, "X-Job-UUID": "not-a-uuid"})
    assert r.status_code == 400 and "X-Job-UUID" in r.json()["error"]["details"]
    job = uuid.uuid4().hex
    first = httpx.post(f"{server.url}/zstack/v1/zones", json={"params": {"name": "x"}},
                       headers={**dead, "X-Job-UUID": job})
    assert first.status_code == 202
    again = httpx.post(f"{server.url}/zstack/v1/zones", json={"params": {"name": "x"}},
                       headers={**dead, "X-Job-UUID": job})
    assert again.status_code == 400 and "duplicate" in again.json()["error"]["details"].lower()
    # a live session reusing the refused job's uuid is refused the same way
    r = api.post("/zones", json={"params": {"name": "x"}}, headers={"X-Job-UUID": job})
    assert r.status_code == 400 and "duplicate" in r.json()["error"]["details"].lower()


def test_one_source_cannot_flood_the_job_table(fresh_server: Server) -> None:
    fresh_server.env.update({"IMGSTORE_REFUSED_JOBS_PER_ADDRESS": "5 per minute",
                             "IMGSTORE_REFUSED_JOB_RETENTION": "3"})
    fresh_server.start()
    send = lambda: httpx.post(f"{fresh_server.url}/zstack/v1/zones",  # noqa: E731
                              json={"params": {"name": "x"}}, headers={"Prefer": "respond-async"})
    accepted = [send() for _ in range(5)]
    assert [r.status_code for r in accepted] == [202] * 5
    # beyond the bound: the refusal itself, at once, and no job
    beyond = send()
    assert beyond.status_code == 401 and beyond.json()["error"]["code"] == "ID.1001"
    # refused jobs expire fast: polled after their retention they are gone
    assert _poll(fresh_server, accepted[-1]).status_code == 503
    time.sleep(3.5)
    assert _poll(fresh_server, accepted[0]).status_code == 404
