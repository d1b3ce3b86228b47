"""Point 10 of the Trust issue, the HTTP parts: what a client's headers may not do.

* The Host header does not choose the host of a URL the server hands out (job
  locations here; upload and export URLs are made from the same base, api/deps.py).
* Two Authorization headers are refused, and a kept reply (api/reply_cache.py) is
  never served to a session that did not prove itself.
* Numbers in headers and parameters are at most 19 ASCII digits: anything else is
  400 SYS.1007, never a 500.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, DevCluster, Server
from tests.integration.services.images.test_image_export import adopt_pool, rbd_import
from tests.integration.services.images.test_images import MiB, forget_images, image_data
from tests.security.rawhttp import connect, read_reply, status_of


def _raw(server: Server, request: str) -> tuple[int, bytes]:
    with connect(server.port) as sock:
        sock.sendall(request.encode("latin-1"))  # "\u00b2" goes as the one byte 0xb2
        reply = read_reply(sock)
    return status_of(reply), reply


def test_the_host_header_does_not_choose_the_job_location(server: Server) -> None:
    api = Api.login(server.url)
    r = api.delete(f"/images/{uuid.uuid4().hex}",
                   headers={"Prefer": "respond-async", "Host": "evil.example:6666"})
    assert r.status_code == 202, r.text
    location = r.json()["location"]
    assert "evil.example" not in location
    assert location.startswith(f"{server.url}/zstack/v1/api-jobs/"), location


def test_two_authorization_headers_are_refused_and_never_kept(server: Server) -> None:
    api = Api.login(server.url)
    good = api.headers["Authorization"]
    bogus = f"OAuth {uuid.uuid4().hex}"
    path = f"/zstack/v1/zones?limit=3&probe={uuid.uuid4().hex}"
    both = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: {good}\r\n"
            f"Authorization: {bogus}\r\nConnection: close\r\n\r\n")
    status, reply = _raw(server, both)
    assert status in (400, 401), reply[:300]
    r = httpx.get(f"{server.url}{path}", headers={"Authorization": bogus})
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "ID.1001"


def test_a_kept_reply_needs_the_session_that_made_it(server: Server) -> None:
    api = Api.login(server.url)
    path = f"/zones?limit=2&probe={uuid.uuid4().hex}"
    assert api.get(path).status_code == 200
    assert api.get(path).status_code == 200  # kept
    r = httpx.get(f"{server.url}/zstack/v1{path}", headers={"Authorization": f"OAuth {uuid.uuid4().hex}"})
    assert r.status_code == 401, r.text


def _upload_put(server: Server, headers: str) -> tuple[int, bytes]:
    return _raw(server, f"PUT /zstack/v1/images/uploads/{uuid.uuid4().hex}?token=x HTTP/1.1\r\n"
                        f"Host: 127.0.0.1:{server.port}\r\nContent-Length: 4\r\n{headers}"
                        "Connection: close\r\n\r\nabcd")


def test_a_superscript_offset_is_400(server: Server) -> None:
    status, reply = _upload_put(server, "X-Upload-Offset: \u00b2\r\n")
    assert status == 400, reply[:400]
    assert b"SYS.1007" in reply


def test_a_5000_digit_content_range_is_400(server: Server) -> None:
    digits = "9" * 5000
    status, reply = _upload_put(server, f"Content-Range: bytes 0-{digits}/{digits}\r\n")
    assert status == 400, reply[:400]
    assert b"SYS.1007" in reply


def test_a_5000_digit_limit_or_list_index_is_400_or_ignored(server: Server) -> None:
    api = Api.login(server.url)
    r = api.get("/zones", params={"limit": "9" * 5000})
    assert r.status_code == 400, r.text
    r = api.get("/zones", params={"limit": "\u00b2"})
    assert r.status_code == 400, r.text
    r = api.delete(f"/images/{uuid.uuid4().hex}", params={"backupStorageUuids." + "9" * 5000: "x"})
    assert r.status_code < 500, r.text


def test_a_5000_digit_condition_value_is_400(server: Server) -> None:
    api = Api.login(server.url)
    for value in ("9" * 5000, "9" * 19):
        r = api.get("/backup-storage", params={"q": f"totalCapacity={value}"})
        assert r.status_code == 400, r.text


def test_the_statements_kept_per_fields_list_or_condition_shape_are_bounded() -> None:
    """Each ``fields=`` list (any order, any repetition) was a statement kept for ever
    (services/catalog/queries.py): a client could grow the server by sending new lists.
    Each shape of conditions (``q=`` fields and ops, an IN list's length) is one too."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from imgstore.db import reads as db_reads
    from imgstore.services.catalog import queries
    from imgstore.services.storage.queryables import MON_QUERY
    from imgstore.wire.query import QuerySpec, parse_condition

    reads = db_reads.Reads(create_async_engine("sqlite+aiosqlite://"))
    names = ["monUuid", "hostname", "monAddr", "monPort", "sshPort", "status"]
    for i in range(queries.MAX_PLAIN_STATEMENTS + 300):
        fields = tuple(names[(i >> k) % len(names)] for k in range(1 + i % 7)) + ("hostname",) * (i // 200)
        queries._statements(MON_QUERY, QuerySpec(fields=fields), reads)
    assert len(queries._plain) <= queries.MAX_PLAIN_STATEMENTS
    for i in range(db_reads.MAX_COMPILED + 300):
        members = ",".join(str(n) for n in range(1 + i))
        queries._statements(MON_QUERY, QuerySpec(conditions=(parse_condition(f"monPort?={members}"),)), reads)
    assert len(reads._compiled) <= db_reads.MAX_COMPILED


@pytest.mark.ceph
def test_the_host_header_does_not_choose_export_or_upload_urls(server: Server, api: Api, c1: DevCluster,
                                                               pool: str, tmp_path: Path) -> None:
    """The URLs handed to third parties later (QueryImage shows them to every session)."""
    spoofed = {"Host": "evil.example:6666"}
    path = tmp_path / "disk.raw"
    path.write_bytes(image_data(MiB))
    image_uuid = uuid.uuid4().hex
    rbd_import(c1, path, pool, image_uuid)
    bs = adopt_pool(api, c1, pool, image_uuid)
    try:
        r = api.put(f"/backup-storage/{bs}/actions", headers=spoofed,
                    json={"exportImageFromBackupStorage": {"imageUuid": image_uuid}})
        assert r.status_code == 200, r.text
        assert r.json()["imageUrl"].startswith(f"{server.url}/zstack/v1/exports/"), r.json()["imageUrl"]
        body = {"params": {"name": "up", "url": "upload://", "backupStorageUuids": [bs], "format": "raw"}}
        r = api.post("/images", json=body, headers={**spoofed, "Prefer": "respond-async"})
        assert r.status_code == 202, r.text
        assert r.json()["location"].startswith(server.url)
        inv = api.wait_job(r).json()["inventory"]
        [ref] = inv["backupStorageRefs"]
        assert ref["uploadUrl"].startswith(f"{server.url}/zstack/v1/images/uploads/"), ref["uploadUrl"]
    finally:
        forget_images(api)
