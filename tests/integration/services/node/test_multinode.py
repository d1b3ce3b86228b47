"""Several nodes on one PostgreSQL: shared state, storage leases, take-over of a dead node.

Real ``imgstore serve`` processes share a fresh PostgreSQL database with one secret key,
pinging every second, so a lease lasts 1.5 s and is renewed every 0.5 s: a killed node's
storages must have a live owner again within 2 x the interval, and that owner must be
the one pinging them (a stopped OSD shows, and so does its return). Skipped, with the
reason, when PostgreSQL is not reachable.
"""
from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, DevCluster, Server, free_port, wait_for

INTERVAL = 1.0  # IMGSTORE_PING_INTERVAL of every node here
# take-overs within 2 intervals of 1 s: scripts/test.sh runs these alone, not beside the lanes
pytestmark = pytest.mark.serial
SLACK = 0.5  # the test's own polling and a heartbeat's few milliseconds of database work
NOTICE = 20  # a ping's failure shows within one interval + the Ceph timeout; the OSD's own time


# ---------------------------------------------------------------- helpers


def _ports(count: int) -> list[int]:
    """``count`` distinct free ports below 32768 (held open while choosing)."""
    held: list[socket.socket] = []
    port = free_port()
    try:
        while len(held) < count:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
                held.append(s)
            except OSError:
                s.close()
            port += 1
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def _start_nodes(tmp_path: Path, db_url: str, count: int) -> list[Server]:
    """``count`` nodes on one database and one secret key, all started at once (they race
    for the migrations and the admin account)."""
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    servers = []
    for i, port in enumerate(_ports(count), start=1):
        data_dir = tmp_path / f"node{i}"
        data_dir.mkdir()
        servers.append(Server(data_dir, port=port, env={
            "IMGSTORE_DB_URL": db_url,
            "IMGSTORE_SECRET_KEY": key,
            "IMGSTORE_NODE_ID": f"node-{i}",
            "IMGSTORE_PING_INTERVAL": str(INTERVAL),
            "IMGSTORE_CEPH_TIMEOUT": "3",
        }))
    errors: list[BaseException] = []

    def start(srv: Server) -> None:
        try:
            srv.start()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for s in servers:
            s.stop(signal.SIGKILL)
        raise errors[0]
    return servers


def _sql(db_url: str, query: str, *args: object) -> list[tuple]:
    import psycopg

    with psycopg.connect(db_url) as conn:
        return conn.execute(query, args).fetchall()


def _owners(db_url: str, storages: set[str]) -> dict[str, str] | None:
    """Each storage's owner, when every one of them has a lease that is live right now."""
    rows = _sql(db_url, "SELECT backup_storage_uuid, owner_node FROM backup_storage_lease "
                        "WHERE owner_node IS NOT NULL AND expire_date > timezone('UTC', clock_timestamp())")
    owners = {bs: node for bs, node in rows if bs in storages}
    return owners if set(owners) == storages else None


def _live_nodes(db_url: str) -> set[str]:
    return {node for (node,) in _sql(
        db_url, "SELECT id FROM node WHERE expire_date > timezone('UTC', clock_timestamp())")}


def _status(api: Api, bs: str, status: str) -> dict | None:
    [inv] = api.get(f"/backup-storage/{bs}").json()["inventories"]
    return inv if inv["status"] == status else None


def _poll(location: str, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(location, timeout=10)
        if r.status_code != 202:
            return r
        time.sleep(0.1)
    raise AssertionError(f"job {location} still running after {timeout} s")


def _on(server: Server, location: str) -> str:
    """The same job location, asked of another node."""
    path = location.split("/zstack/v1/", 1)[1]
    return f"{server.url}/zstack/v1/{path}"


@pytest.fixture
def nodes3(tmp_path: Path, postgres_url: str) -> Iterator[list[Server]]:
    servers = _start_nodes(tmp_path, postgres_url, 3)
    yield servers
    _tear_down(servers)


@pytest.fixture
def nodes2(tmp_path: Path, postgres_url: str) -> Iterator[list[Server]]:
    servers = _start_nodes(tmp_path, postgres_url, 2)
    yield servers
    _tear_down(servers)


def _tear_down(servers: list[Server]) -> None:
    live = [s for s in servers if s.proc and s.proc.poll() is None]
    if live:
        try:
            api = live[0].login()
            for inv in api.storages():
                api.delete(f"/backup-storage/{inv['uuid']}")
        except Exception:
            pass
    for s in servers:
        s.stop()


# ---------------------------------------------------------------- the schema on PostgreSQL


def test_migrations_match_the_models_on_postgresql(postgres_url: str) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from imgstore.db.models import Base
    from imgstore.db.schema import alembic_config

    url = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    engine = create_engine(url)
    def on_postgresql(obj, name, type_, reflected, compare_to) -> bool:  # type: ignore[no-untyped-def]
        # an index made for another database only (Index.ddl_if) is not expected here
        ddl_if = getattr(obj, "_ddl_if", None)
        return ddl_if is None or ddl_if.dialect in (None, "postgresql")

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": on_postgresql})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()
    command.downgrade(cfg, "base")


# ---------------------------------------------------------------- leases under contention


def test_racing_nodes_never_hold_one_lease_twice(postgres_url: str) -> None:
    """Five nodes settle at the same moments over 60 storages: every storage ends with one
    owner, nobody above its fair share, and the leases each node believes it took add up
    to the storages (a claim two nodes both won would count twice). Then one node stops
    beating: once its leases expire the other four share all 60."""
    from datetime import timedelta

    from sqlalchemy import func, select

    from imgstore.config import Settings
    from imgstore.db.engine import create_engine, db_now, migrate, sessionmaker
    from imgstore.db.models import BackupStorageLease as Lease
    from imgstore.db.models import CephBackupStorage
    from imgstore.services.node import leases

    lease = timedelta(seconds=1)

    async def run() -> None:
        engine = create_engine(Settings(db_url=postgres_url).database_url())
        await migrate(engine)
        db = sessionmaker(engine)
        async with db() as s:
            s.add_all(CephBackupStorage(uuid=uuid.uuid4().hex, name=f"s{i}", url="u") for i in range(60))
            await s.commit()

        async def settle(node: str, live: int) -> leases.Balance:
            async with db() as s:
                now = await db_now(s)
                return await leases.settle(s, node, now, now + lease, live)

        async def beat_all(nodes: list[str]) -> list[leases.Balance]:
            return await asyncio.gather(*(settle(n, len(nodes)) for n in nodes))

        async def owners() -> dict[str | None, int]:
            async with db() as s:
                rows = await s.execute(select(Lease.owner_node, func.count()).group_by(Lease.owner_node))
                return {node: n for node, n in rows}

        try:
            everyone = [f"n{i}" for i in range(5)]
            for _ in range(3):
                balances = await beat_all(everyone)
            assert sum(b.held for b in balances) == 60
            held = await owners()
            assert None not in held and sum(held.values()) == 60
            assert max(held.values()) <= leases.fair_share(60, 5)

            survivors = everyone[1:]  # n0 dies: it renews nothing from now on
            await asyncio.sleep(lease.total_seconds() + 0.1)
            for _ in range(3):
                balances = await beat_all(survivors)
            held = await owners()
            assert "n0" not in held and None not in held
            assert sum(b.held for b in balances) == sum(held.values()) == 60
            assert max(held.values()) <= leases.fair_share(60, 4)
        finally:
            await engine.dispose()

    asyncio.run(run())


# ---------------------------------------------------------------- three real nodes


@pytest.mark.ceph
def test_three_nodes_share_state_and_take_over_a_killed_node(
    pool: str, pool2: str, nodes3: list[Server], postgres_url: str, c1: DevCluster, c2: DevCluster
) -> None:
    n1, n2, n3 = nodes3
    by_id = {f"node-{i}": s for i, s in enumerate(nodes3, start=1)}
    # every node beats; on a loaded machine one beat may come after its row expired
    wait_for(lambda: _live_nodes(postgres_url) == set(by_id), 15)
    api1, api2 = n1.login(), n2.login()

    # a job started on node 1 is answered by node 2
    r = api1.post("/backup-storage/ceph", json={"params": {"name": "mn-c1", "monUrls": [c1.mon_url], "poolName": pool}},
                  headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    done = _poll(_on(n2, r.json()["location"]))
    assert done.status_code == 200, done.text
    bs1 = done.json()["inventory"]["uuid"]
    # c2 through node 2; its mon hostname must differ from c1's (mon hostnames are unique)
    r = api2.add_ceph("mn-c2", [c2.mon_url.replace("@127.0.0.1", "@localhost")], poolName=pool2)
    assert r.status_code == 200, r.text
    bs2 = r.json()["inventory"]["uuid"]

    # a session made on node 1 is valid on node 3, which sees what the others added
    with Api(base_url=f"{n3.url}/zstack/v1", headers={"Authorization": api1.headers["Authorization"]}) as api3:
        assert {s["uuid"] for s in api3.storages()} == {bs1, bs2}
    session = api1.headers["Authorization"].split()[1]
    valid = httpx.get(f"{n3.url}/zstack/v1/accounts/sessions/{session}/valid").json()
    assert valid.get("valid") is True, valid

    # each storage is held by exactly one live node, and two storages go to two nodes
    owners = wait_for(lambda: _owners(postgres_url, {bs1, bs2}), 5 * INTERVAL, every=0.1)
    assert owners[bs1] != owners[bs2], owners
    victim_id = owners[bs2]
    victim = by_id[victim_id]
    watcher = next(s for i, s in by_id.items() if i not in (victim_id,)).login()
    wait_for(lambda: _status(watcher, bs2, "Connected"), NOTICE)

    # kill -9 the owner of c2's storage: a live node holds it within 2 intervals
    victim.stop(signal.SIGKILL)
    killed = time.monotonic()
    taken = wait_for(lambda: (o := _owners(postgres_url, {bs2})) and o[bs2] != victim_id and o, 10, every=0.05)
    took = time.monotonic() - killed
    print(f"storage {bs2} taken over by {taken[bs2]} {took:.2f} s after {victim_id} was killed")
    assert taken[bs2] in set(by_id) - {victim_id}
    assert took <= 2 * INTERVAL + SLACK, f"take-over took {took:.2f} s"
    assert _owners(postgres_url, {bs1}) == {bs1: owners[bs1]}, "the other storage stays where it was"
    assert victim_id not in {node for (node,) in _sql(postgres_url, "SELECT id FROM node")}, "declared dead"

    # the new owner pings it: a stopped OSD shows, and so does its return
    c2.devcluster("daemon-stop", "osd")
    try:
        wait_for(lambda: _status(watcher, bs2, "Disconnected"), NOTICE)
    finally:
        c2.devcluster("daemon-start", "osd")
    wait_for(lambda: _status(watcher, bs2, "Connected"), NOTICE + 30)
    assert _status(watcher, bs1, "Connected")


@pytest.mark.ceph
def test_a_dead_nodes_half_made_add_and_its_job_are_taken_over(
    nodes2: list[Server], postgres_url: str, c2: DevCluster
) -> None:
    """A node killed in the middle of an add never comes back: the survivor fails its job
    and removes what the add made (row, pool, cephx key)."""
    survivor, victim = nodes2
    api = victim.login()
    rid = uuid.uuid4().hex
    r = api.post("/backup-storage/ceph", json={"params": {"name": "orphan", "monUrls": [c2.mon_url], "resourceUuid": rid}},
                 headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    wait_for(lambda: f"bak-t-{rid}" in c2.pools(), 30, every=0.05)
    victim.stop(signal.SIGKILL)

    job = _poll(_on(survivor, r.json()["location"]), timeout=10 * INTERVAL)
    assert job.status_code >= 400 and "stopped" in job.json()["error"]["details"], job.text
    api = survivor.login()
    wait_for(lambda: api.storages(q=f"uuid={rid}") == [], 30)
    wait_for(lambda: f"bak-t-{rid}" not in c2.pools(), 30)
    assert f"client.imgstore.{rid}" not in c2.clients()
