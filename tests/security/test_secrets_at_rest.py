"""Point 7 of the Trust issue: bearer secrets stay secret.

Against a real server and the dev cluster: a job poll without a session sees no upload or
export token (one with a session does); the access log does not show job ids; the data
dir is 0700 and its files 0600; the SQLite database holds no session uuid and no export
URL or token in clear; a source URL's user:password@ is neither stored nor written to
the pool's ``bs_ceph_info.json``, while the download itself still used it.
"""
from __future__ import annotations

import base64
import http.server
import sqlite3
import stat
import threading
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import TEST_DB, Api, DevCluster, Server
from tests.integration.services.images.test_image_export import export, exported  # noqa: F401 - fixture
from tests.integration.services.images.test_images import added, image_data, source_port, storage  # noqa: F401
from tests.integration.services.images.test_import_images import metadata

pytestmark = pytest.mark.ceph
sqlite_only = pytest.mark.skipif(TEST_DB != "sqlite", reason="reads the SQLite file of the server")


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def database_bytes(server: Server) -> bytes:
    """The SQLite database of ``server`` as stored: the file and its write-ahead log."""
    return b"".join(p.read_bytes() for p in server.data_dir.glob("imgstore.db*"))


def poll(location: str, session: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"OAuth {session}"} if session else {}
    r = httpx.get(location, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r


def session_of(api: Api) -> str:
    return api.headers["Authorization"].split()[1]


def test_an_upload_job_shows_its_token_only_to_a_session(api: Api, storage: str, server: Server) -> None:
    job = uuid.uuid4().hex
    body = {"params": {"name": "up", "url": "upload://", "backupStorageUuids": [storage], "format": "raw"}}
    r = api.post("/images", json=body, headers={"X-Job-UUID": job})
    assert r.status_code == 202, r.text
    location = r.json()["location"]
    inv = added(api, r)
    url = inv["backupStorageRefs"][0]["uploadUrl"]
    token = token_of(url)

    anonymous = poll(location)
    assert token not in anonymous.text, "a poll without a session gets no token"
    masked = anonymous.json()["inventory"]["backupStorageRefs"][0]["uploadUrl"]
    assert masked.split("?")[0] == url.split("?")[0], "the reply keeps its shape"
    assert httpx.put(masked, content=b"x" * 512, timeout=30).status_code == 403
    assert poll(location, "0123456789abcdef0123456789abcdef").text == anonymous.text, "a bogus session neither"
    assert token_of(poll(location, session_of(api)).json()["inventory"]["backupStorageRefs"][0]["uploadUrl"]) == token

    access = [line for line in server.log().splitlines() if '"imgstore.access"' in line]
    assert any("/api-jobs/" in line for line in access)
    assert not any(job in line for line in access), "job ids are masked in the access log"


def test_an_export_job_shows_its_url_only_to_a_session(api: Api, exported: tuple[str, str, bytes],
                                                       server: Server) -> None:
    bs, image_uuid, _ = exported
    r = api.put(f"/backup-storage/{bs}/actions", headers={"X-Job-UUID": uuid.uuid4().hex},
                json={"exportImageFromBackupStorage": {"imageUuid": image_uuid}})
    assert r.status_code == 202, r.text
    done = api.wait_job(r)
    url = done.json()["imageUrl"]
    token = token_of(url)
    anonymous = poll(r.json()["location"])
    assert token not in anonymous.text
    assert httpx.get(anonymous.json()["imageUrl"], timeout=30).status_code == 403

    [image] = api.get("/images", params={"q": f"uuid={image_uuid}"}).json()["inventories"]
    assert image["backupStorageRefs"][0]["exportUrl"] == url, "a session's query shows the URL"
    assert export(api, bs, image_uuid).json()["imageUrl"] == url, "a second export answers the same URL"
    if TEST_DB == "sqlite":
        stored = database_bytes(server)
        assert token.encode() not in stored and url.encode() not in stored, "the export URL is sealed"


@sqlite_only
def test_the_database_keeps_no_session_uuid(server: Server) -> None:
    api = server.login()
    session = session_of(api)
    assert api.get(f"/accounts/sessions/{session}/valid").json()["valid"] is True
    assert session.encode() not in database_bytes(server)
    with sqlite3.connect(server.data_dir / "imgstore.db") as db:
        assert session not in {row[0] for row in db.execute("SELECT uuid FROM session")}
    assert api.delete(f"/accounts/sessions/{session}").status_code == 200
    assert api.get(f"/accounts/sessions/{session}/valid").json()["valid"] is False


def test_the_data_dir_is_private(fresh_server: Server) -> None:
    fresh_server.data_dir.chmod(0o755)  # as an older version left it
    fresh_server.env["IMGSTORE_ADMIN_PASSWORD"] = ""  # generated: written to the data dir
    server = fresh_server.start()
    server.stop()
    assert stat.S_IMODE(server.data_dir.stat().st_mode) == 0o700
    created = [p for p in server.data_dir.iterdir() if p.is_file() and p.name != "server.log"]
    assert {"secret.key", "admin-password"} <= {p.name for p in created}
    if TEST_DB == "sqlite":
        assert "imgstore.db" in {p.name for p in created}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in created} == \
        {p.name: "0o600" for p in created}


SOURCE_AUTH = "Basic " + base64.b64encode(b"reader:s3cret-pw").decode()


@pytest.fixture
def guarded_source() -> Iterator[str]:
    """The URL of a 1 MiB image served only with ``reader:s3cret-pw`` (Basic), else 401."""
    data, port = image_data(1024 * 1024), source_port()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            ok = self.headers.get("Authorization") == SOURCE_AUTH
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(data) if ok else 0))
            self.end_headers()
            if ok and body:
                self.wfile.write(data)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}/disk.raw"
    httpd.shutdown()
    httpd.server_close()


def test_a_source_url_is_stored_without_its_credentials(api: Api, c1: DevCluster, pool: str,
                                                        storage: str, guarded_source: str,
                                                        server: Server) -> None:
    with_password = guarded_source.replace("http://", "http://reader:s3cret-pw@")
    job = api.post("/images", headers={"X-Job-UUID": uuid.uuid4().hex},
                   json={"params": {"name": "img", "url": with_password, "backupStorageUuids": [storage],
                                    "format": "raw"}})
    inv = added(api, job)
    assert inv["status"] == "Ready", "the download used the credentials (the source answers 401 without)"
    assert inv["url"] == guarded_source
    [queried] = api.get("/images", params={"q": f"uuid={inv['uuid']}"}).json()["inventories"]
    assert "s3cret-pw" not in str(queried)
    assert "s3cret-pw" not in str(metadata(c1, pool)), "bs_ceph_info.json holds no credentials"
    progress = api.get(f"/task-progresses/{job.json()['location'].rsplit('/', 1)[1]}")
    assert "s3cret-pw" not in progress.text
    if TEST_DB == "sqlite":
        assert b"s3cret-pw" not in database_bytes(server)
