"""Kept query replies (api/reply_cache.py): served again while nothing changed, never stale.

A change made behind the node's back, straight in the database as another node sharing
it would make it, shows in the very next query; an expired session gets no kept reply.
"""
from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from imgstore.db import changes
from imgstore.db.changes import PostgresWatch
from tests.conftest import Api, Server
from tests.integration.test_metrics import requests, scrape, value

# on PostgreSQL the version kept replies are checked against is pg_current_snapshot(), which
# any write to ANY database of the server moves: scripts/test.sh runs these alone, not beside
# the parallel lanes
pytestmark = pytest.mark.serial


def _hits(server: Server) -> float:
    return value(scrape(server), "imgstore_reply_cache_requests_total", result="hit") or 0.0


def _write_behind_its_back(server: Server, sql: str, *args: object) -> None:
    """Run ``sql`` on the server's database through a connection of our own."""
    url = server.env.get("IMGSTORE_DB_URL")
    if url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s"), args)
        return
    with sqlite3.connect(server.data_dir / "imgstore.db") as conn:
        conn.execute(sql, args)


def _asked_again(server: Server, api: Api, path: str) -> httpx.Response:
    """Ask twice; the second answer must come from the reply kept by the first. Tried
    three times: a heartbeat's commit between the two asks rightly empties the cache."""
    for _ in range(3):
        first = api.get(path)
        hits = _hits(server)
        again = api.get(path)
        if _hits(server) == hits + 1:
            assert again.status_code == 200 and again.content == first.content
            return again
    raise AssertionError(f"GET {path} asked twice, three times over, was never answered by a kept reply")


@pytest.fixture
def zone(api: Api) -> Iterator[dict]:
    r = api.post("/zones", json={"params": {"name": "kept-zone"}})
    assert r.status_code == 200, r.text
    inv = r.json()["inventory"]
    yield inv
    api.delete(f"/zones/{inv['uuid']}")


def test_a_query_shows_a_change_made_by_another_node_at_once(server: Server, api: Api, zone: dict) -> None:
    path = f"/zones/{zone['uuid']}"
    _asked_again(server, api, path)
    _write_behind_its_back(server, "UPDATE zone SET name = ? WHERE uuid = ?", "renamed-elsewhere", zone["uuid"])
    assert api.get(path).json()["inventories"][0]["name"] == "renamed-elsewhere"
    assert [z["uuid"] for z in api.get("/zones", params={"q": "name=renamed-elsewhere"}).json()["inventories"]] \
        == [zone["uuid"]]


def test_a_kept_reply_is_counted_under_its_route(server: Server, api: Api, zone: dict) -> None:
    def served() -> float:
        return requests(scrape(server), "GET", "/zstack/v1/zones/{uuid}", 200)

    before, hits = served(), _hits(server)
    for _ in range(3):
        r = api.get(f"/zones/{zone['uuid']}")
        assert r.status_code == 200 and r.headers["x-request-id"]
    assert served() == before + 3
    assert _hits(server) >= hits + 2


def test_no_kept_reply_outlives_its_session(tmp_path: Path) -> None:
    srv = Server(tmp_path, env={"IMGSTORE_SESSION_TIMEOUT": "2"}).start()
    try:
        api = srv.login()
        _asked_again(srv, api, "/zones")
        time.sleep(2.5)
        r = api.get("/zones")
        assert r.status_code == 401 and r.json()["error"]["code"] == "ID.1001"
    finally:
        srv.stop()
        srv.drop_database()


@pytest.mark.anyio
async def test_the_postgresql_version_moves_with_writes_only(postgres_url: str) -> None:
    watch = PostgresWatch(postgres_url)
    try:
        with psycopg.connect(postgres_url, autocommit=True) as other:
            other.execute("CREATE TABLE t (x int)")
            before = await watch.version()
            assert before is not None
            other.execute("SELECT * FROM t").fetchall()
            assert await watch.version() == before
            other.execute("INSERT INTO t VALUES (1)")
            after = await watch.version()
            assert after != before
            assert await watch.version() == after
    finally:
        await watch.close()


@pytest.mark.anyio
async def test_no_postgresql_version_without_the_database(postgres_url: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = []
    connect = psycopg.AsyncConnection.connect

    async def counted(*args: object, **kwargs: object) -> psycopg.AsyncConnection:
        attempts.append(time.monotonic())
        return await connect(*args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", counted)
    watch = PostgresWatch(postgres_url.rsplit("/", 1)[0] + "/imgstore_no_such_database")
    try:
        assert await watch.version() is None  # the handlers answer, and say what is wrong
        assert await watch.version() is None
        assert len(attempts) == 1, "within a second of a failure, the database is not asked again"
        await asyncio.sleep(changes.RETRY_SECONDS)
        assert await watch.version() is None
        assert len(attempts) == 2
    finally:
        await watch.close()
