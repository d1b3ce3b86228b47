"""Pages of a kept list (api/kept_pages.py): the same bytes as the handler's, never stale,
only to a proven session.

The handler's answer to compare with is the same query with a condition every row
meets (``uuid!=<none>``): a query with a condition is never answered from a list.
"""
from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, delete, insert, select

from imgstore.api.kept_pages import BUILD_ROWS
from imgstore.db.models import BackupStorage, CephMon, Image, ImageBackupStorageRef
from tests.conftest import TEST_DB, Api, Server, create_pg_database, pg_unavailable
from tests.integration.test_metrics import scrape, value

STORAGES = 30
SESSION_SECONDS = 6
#: the suite's database, and PostgreSQL. On PostgreSQL the version lists are kept under
#: moves with any write to any database of the server: run alone, as test_reply_cache is
DATABASES = [pytest.param("suite", marks=[pytest.mark.serial] if TEST_DB == "postgresql" else []),
             pytest.param("postgresql", marks=pytest.mark.serial)]
MATCH_ALL = "uuid!=00000000000000000000000000000000"
#: paged shapes: sorted by default, by a column some rows share, by a nullable one, descending
SHAPES = ({}, {"sort": "-availableCapacity"}, {"sort": "+description"}, {"sort": "+name", "replyWithCount": "true"})


@pytest.fixture(params=DATABASES)
def listed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A server (its tracker off: no pings, no commits of theirs) holding STORAGES storages
    with one to three mons each, written straight into its database."""
    yield from _listed(request, tmp_path, {})


@pytest.fixture(params=DATABASES)
def listed_briefly(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """The same, its sessions lasting SESSION_SECONDS."""
    yield from _listed(request, tmp_path, {"IMGSTORE_SESSION_TIMEOUT": str(SESSION_SECONDS)})


@pytest.fixture(params=DATABASES)
def listed_long(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """The same, keeping whole only lists of at most 10 rows: longer ones keep their keys."""
    yield from _listed(request, tmp_path, {"IMGSTORE_KEPT_LIST_ROWS": "10"})


def _listed(request: pytest.FixtureRequest, tmp_path: Path, env: dict[str, str]) -> Iterator[Server]:
    env = {"IMGSTORE_PING_INTERVAL": "0", **env}
    if request.param == "postgresql":
        reason = "the suite's database" if TEST_DB == "postgresql" else pg_unavailable()
        if reason:
            pytest.skip(reason)
        env["IMGSTORE_DB_URL"] = create_pg_database()
    srv = Server(data_dir=tmp_path, env=env).start()
    _fill(srv)
    yield srv
    srv.stop()
    srv.drop_database()


def _engine_url(srv: Server) -> str:
    if srv.sqlite_path is not None:
        return f"sqlite:///{srv.sqlite_path}"
    return srv.env["IMGSTORE_DB_URL"].replace("postgresql://", "postgresql+psycopg://")


def _fill(srv: Server) -> None:
    start = datetime(2026, 1, 2, 3, 4, 5)
    engine = create_engine(_engine_url(srv))
    with engine.begin() as conn:
        for n in range(STORAGES):
            u = uuidlib.uuid4().hex
            date = start + timedelta(minutes=n // 3)  # three rows to a date: the key breaks the tie
            conn.execute(insert(BackupStorage.__table__).values(
                uuid=u, name=f"bs-{n:03d}", description=None if n % 4 else f"d{n % 7}", url="not used",
                type="Ceph", state="Enabled", status="Disconnected", total_capacity=10 << 40,
                available_capacity=(n % 5) << 30, status_reason=None, fsid=f"fsid-{u}", pool_name=f"pool-{n}",
                pool_created=False, ceph_client=None, ceph_key=None, adding_node=None, create_date=date,
                last_op_date=date))
            conn.execute(insert(CephMon.__table__), [dict(
                uuid=uuidlib.uuid4().hex, backup_storage_uuid=u, hostname=f"mon-{n}-{m}.invalid",
                mon_addr="127.0.0.1", mon_port=6789, ssh_port=22, ssh_username="root", ssh_password="unused",
                status="Connected", create_date=date, last_op_date=date) for m in range(1 + n % 3)])
            conn.execute(insert(Image.__table__).values(
                uuid=u, name=f"img-{n:03d}", state="Enabled", status="Ready", size=1 << 30, actual_size=n << 20,
                url="upload://", media_type="RootVolumeTemplate", type="zstack", format="raw", system=False,
                virtio=True, create_date=date, last_op_date=date))
            if n % 2:  # every other image on its storage
                conn.execute(insert(ImageBackupStorageRef.__table__).values(
                    image_uuid=u, backup_storage_uuid=u, install_path=f"ceph://pool-{n}/{u}", status="Ready",
                    create_date=date, last_op_date=date))
    engine.dispose()


def _list_hits(srv: Server) -> float:
    return value(scrape(srv), "imgstore_reply_cache_requests_total", result="hit") or 0.0


def _pages_agree(srv: Server, api: Api, shape: dict[str, str], starts: Iterable[int], limit: int = 7,
                 path: str = "/backup-storage") -> float:
    """Every page of ``starts`` (none asked before) is the handler's bytes; how many of
    them a kept list answered."""
    before = _list_hits(srv)
    for start in starts:
        params = {**shape, "start": str(start), "limit": str(limit)}
        expected = api.get(path, params={**params, "q": MATCH_ALL})
        got = api.get(path, params=params)
        assert got.status_code == expected.status_code == 200, got.text
        assert got.content == expected.content, (params, got.text[:300], expected.text[:300])
        assert got.headers["content-type"] == expected.headers["content-type"]
        assert got.headers["content-length"] == str(len(got.content))
    return _list_hits(srv) - before


def _some_page_kept(srv: Server, api: Api, shape: dict[str, str], starts: Iterable[int],
                    path: str = "/backup-storage") -> bool:
    """Pages of ``shape`` until one comes from a kept list, every one the handler's bytes.
    A list is built (again) once its handlers' pages have cost what its last build took,
    in wall time: on a loaded CPU more than one pass of ``starts``, so passes of other
    page sizes follow, none asked before."""
    return any(_pages_agree(srv, api, shape, starts, limit=n, path=path) for n in (7, 6, 5, 4, 3))


def test_any_page_of_a_kept_list_is_what_the_handler_writes(listed: Server) -> None:
    api = listed.login()
    for shape in SHAPES:
        assert _some_page_kept(listed, api, shape, range(0, STORAGES + 2)), shape
    # images: each ref's URLs are amended into its inventory
    assert _some_page_kept(listed, api, {"sort": "-actualSize"}, range(STORAGES + 2), path="/images")
    inventories = api.get("/backup-storage", params={"limit": "3"}).json()["inventories"]
    assert sorted(len(inv["mons"]) for inv in inventories) == [1, 2, 3]  # nested, each in the schema map


def test_a_list_built_in_several_batches_is_what_the_handler_writes(listed: Server) -> None:
    """A list of more rows than a build reads at once (its keys kept while they are
    written): pages across the batches' and blocks' edges."""
    count = 2 * BUILD_ROWS + 100
    start = datetime(2026, 2, 3, 4, 5, 6)
    engine = create_engine(_engine_url(listed))
    with engine.begin() as conn:
        rows = [(uuidlib.uuid4().hex, n) for n in range(count)]
        conn.execute(insert(Image.__table__), [dict(
            uuid=u, name=f"many-{n:05d}", state="Enabled", status="Ready", size=1 << 30, actual_size=n,
            url="upload://", media_type="RootVolumeTemplate", type="zstack", format="raw", system=False,
            virtio=True, create_date=start + timedelta(seconds=n // 2), last_op_date=start) for u, n in rows])
    engine.dispose()
    total = count + STORAGES
    edges = [*range(0, 12), *range(BUILD_ROWS - 8, BUILD_ROWS + 3), *range(2 * BUILD_ROWS - 4, 2 * BUILD_ROWS + 3),
             *range(total - 9, total + 2)]
    api = listed.login()
    for shape in ({"replyWithCount": "true"}, {"sort": "-actualSize"}):
        # its handlers' pages must cost what the path's last build took first
        assert any(_pages_agree(listed, api, shape, [start], path="/images") for start in range(20, 1000)), shape
        assert _pages_agree(listed, api, shape, edges, path="/images") > 0, shape


def test_a_list_too_long_to_keep_whole_pages_by_its_kept_keys(listed_long: Server) -> None:
    api = listed_long.login()
    for shape in SHAPES[1:]:
        assert _some_page_kept(listed_long, api, shape, range(STORAGES + 2)), shape
    assert _some_page_kept(listed_long, api, {"replyWithCount": "true"}, range(STORAGES + 2), path="/images")
    # a row gone behind its back: the next page is the handler's, without it
    engine = create_engine(_engine_url(listed_long))
    with engine.begin() as conn:
        gone = conn.execute(select(BackupStorage.uuid).where(BackupStorage.name == "bs-000")).scalar_one()
        conn.execute(delete(CephMon).where(CephMon.backup_storage_uuid == gone))
        conn.execute(delete(BackupStorage).where(BackupStorage.uuid == gone))
    engine.dispose()
    names = [bs["name"] for bs in api.get("/backup-storage", params={"sort": "+name", "limit": "2"}).json()["inventories"]]
    assert names == ["bs-001", "bs-002"]
    assert _some_page_kept(listed_long, api, {"sort": "+name"}, range(STORAGES))


def test_a_kept_list_shows_a_change_made_behind_its_back_at_once(listed: Server) -> None:
    api = listed.login()
    shape = {"sort": "-name"}
    assert _some_page_kept(listed, api, shape, range(STORAGES))
    engine = create_engine(_engine_url(listed))
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE backup_storage SET name = 'zz-first' WHERE name = 'bs-010'")
    engine.dispose()
    first = api.get("/backup-storage", params={**shape, "limit": "1"}).json()["inventories"]
    assert [bs["name"] for bs in first] == ["zz-first"]
    assert _some_page_kept(listed, api, shape, range(STORAGES)), shape  # the list built again


def test_a_kept_list_answers_no_session_it_did_not_see_proven(listed_briefly: Server) -> None:
    api = listed_briefly.login()
    logged_in = time.monotonic()
    hits = _list_hits(listed_briefly)
    for start in range(STORAGES):  # until a page comes from the list
        assert api.get("/backup-storage", params={"start": str(start), "limit": "2"}).status_code == 200
        hits, before = _list_hits(listed_briefly), hits
        if hits > before:
            break
    else:
        raise AssertionError("no page came from a kept list")
    nul = api.get("/backup-storage", params={"start": "1", "limit": "2", "other": "a\x00"})
    assert nul.status_code == 400 and "U+0000" in nul.text, nul.text  # refused as its handler refuses it
    stranger = httpx.get(f"{listed_briefly.url}/zstack/v1/backup-storage?start=1&limit=2",
                         headers={"Authorization": f"OAuth {uuidlib.uuid4().hex}"})
    assert stranger.status_code == 401 and stranger.json()["error"]["code"] == "ID.1001", stranger.text
    assert time.monotonic() - logged_in < SESSION_SECONDS - 1, "too slow to see the session outlive the list"
    time.sleep(SESSION_SECONDS + 0.5 - (time.monotonic() - logged_in))  # the list is still kept, the session not
    expired = api.get("/backup-storage", params={"start": "2", "limit": "2"})
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "ID.1001", expired.text
