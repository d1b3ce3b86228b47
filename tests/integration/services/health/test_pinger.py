"""The pinger process (services/health/pinger.py) against the real dev cluster c1.

The tracker's pings go through a child process of their own; what it answers must be
what the node's own handle would have found, its failures must not read as a dead
cluster, and the cephx key must not leak into what ``ps`` shows.
"""
from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from cryptography.fernet import Fernet

from imgstore import ceph
from imgstore.ceph import rbd_client_caps
from imgstore.crypto import SecretBox
from imgstore.db.models import CephBackupStorage, CephMon
from imgstore.errors import ApiError
from imgstore.services.health.pinger import NICE, Pinger, PingerLost
from tests.conftest import DevCluster, free_port

pytestmark = [pytest.mark.ceph, pytest.mark.real_ceph, pytest.mark.anyio]

TIMEOUT = 3.0
BOX = SecretBox(Fernet.generate_key())


def storage(mon_port: int | str, pool: str, client: str, key: str) -> CephBackupStorage:
    """A storage row as the tracker holds it (not in any database)."""
    mon = CephMon(uuid=uuid.uuid4().hex, hostname="127.0.0.1", mon_addr="127.0.0.1", mon_port=int(mon_port),
                  status="Connected", mon_host=f"v1:127.0.0.1:{mon_port}")
    return CephBackupStorage(uuid=uuid.uuid4().hex, pool_name=pool, ceph_client=client,
                             ceph_key=BOX.seal(key), mons=[mon])


@pytest.fixture
async def pinger() -> AsyncIterator[Pinger]:
    p = Pinger(BOX, TIMEOUT)
    yield p
    await p.close()


@pytest.fixture
def client(c1: DevCluster, pool: str) -> Iterator[tuple[str, str]]:
    """A least-privilege client of ``pool``, as an add makes: (name, key)."""
    name = f"imgstore.t-{uuid.uuid4().hex[:8]}"
    yield name, c1.ceph("auth", "get-or-create-key", f"client.{name}", *rbd_client_caps(pool)).strip()
    c1.ceph("auth", "del", f"client.{name}")  # a no-op when the test deleted it


def nice_of(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[16])


async def test_a_ping_sees_the_cluster_from_a_niced_process_that_shows_no_key(
    pinger: Pinger, c1: DevCluster, pool: str, client: tuple[str, str]
) -> None:
    row = storage(c1.env["CEPH_MON_PORT"], pool, *client)
    health = await pinger.health(row)
    assert f"127.0.0.1:{c1.env['CEPH_MON_PORT']}" in health.quorum
    assert health.pool_error is None
    assert health.capacity is not None and health.capacity.total > 0
    pid = pinger.pid
    assert pid is not None and pid != os.getpid()
    assert nice_of(pid) == nice_of(os.getpid()) + NICE
    for shown in ("cmdline", "environ"):
        assert client[1].encode() not in open(f"/proc/{pid}/{shown}", "rb").read()


async def test_a_pool_error_crosses_the_pipe_as_its_own_kind(
    pinger: Pinger, c1: DevCluster, client: tuple[str, str]
) -> None:
    row = storage(c1.env["CEPH_MON_PORT"], f"t-missing-{uuid.uuid4().hex[:6]}", "admin", c1.env["CEPH_ADMIN_KEY"])
    health = await pinger.health(row)
    assert isinstance(health.pool_error, ceph.PoolNotFound)
    assert health.capacity is None and health.quorum


@pytest.mark.serial  # a bound of timeout + 2 s on the wall clock
async def test_unreachable_mons_are_an_api_error_within_the_timeout(pinger: Pinger, c1: DevCluster) -> None:
    # the bound is the Ceph timeout's, not the child's start (imports take seconds on a
    # busy machine): a first call on the live cluster starts the child
    await pinger.health(storage(c1.env["CEPH_MON_PORT"], f"t-missing-{uuid.uuid4().hex[:6]}", "admin",
                                c1.env["CEPH_ADMIN_KEY"]))
    row = storage(free_port(), "rbd", "admin", c1.env["CEPH_ADMIN_KEY"])
    started = time.monotonic()
    with pytest.raises(ApiError) as info:
        await pinger.health(row)
    assert time.monotonic() - started < TIMEOUT + 2
    assert info.value.status == 503 and info.value.opaque == {"cephError": "ClusterUnreachable"}
    assert c1.env["CEPH_ADMIN_KEY"] not in info.value.details


async def test_a_deleted_key_is_refused_by_a_fresh_login(
    pinger: Pinger, c1: DevCluster, pool: str, client: tuple[str, str]
) -> None:
    row = storage(c1.env["CEPH_MON_PORT"], pool, *client)
    assert (await pinger.health(row)).pool_error is None  # the handle is connected
    assert await pinger.refused_key(row) is None
    c1.ceph("auth", "del", f"client.{client[0]}")
    refused = await pinger.refused_key(row)
    assert refused is not None and "cephx key" in refused and client[1] not in refused


async def test_a_killed_pinger_loses_its_calls_and_the_next_call_starts_another(
    pinger: Pinger, c1: DevCluster, pool: str, client: tuple[str, str]
) -> None:
    live = storage(c1.env["CEPH_MON_PORT"], pool, *client)
    await pinger.health(live)
    first = pinger.pid
    assert first is not None
    dead = storage(free_port(), "rbd", "admin", c1.env["CEPH_ADMIN_KEY"])  # a call that waits
    async with anyio.create_task_group() as tg:
        lost: list[BaseException] = []

        async def ping_dead() -> None:
            try:
                await pinger.health(dead)
            except (PingerLost, ApiError) as e:
                lost.append(e)

        tg.start_soon(ping_dead)
        await anyio.sleep(0.5)
        started = time.monotonic()
        os.kill(first, signal.SIGKILL)
    # the dead call had 2.5 s of its timeout left; ended by the kill, it is over well before
    # (1 s was too tight on a loaded CI machine: 1.15 s there)
    assert time.monotonic() - started < TIMEOUT - 1, "a lost call must not wait out its timeout"
    assert [type(e) for e in lost] == [PingerLost]
    assert (await pinger.health(live)).pool_error is None
    assert pinger.pid not in (None, first)
