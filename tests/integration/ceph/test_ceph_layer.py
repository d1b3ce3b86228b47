"""The Ceph layer against the real dev cluster ``c1`` (scripts/devcluster.sh).

Each test reads like a use of the layer: onboard over ssh, mint a least-privilege key,
then talk to the cluster with librados using only that key. Pools are unique per test
and removed afterwards. Nothing here stops a daemon of c1 (other suites share it): the
"dead mon" cases point at a closed port instead.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from imgstore.ceph import (
    CephPermissionDenied,
    CephTimeout,
    CephToolsMissing,
    Cluster,
    ClusterUnreachable,
    InvalidName,
    MonShell,
    MonUrl,
    PoolNotFound,
    SshAuthFailed,
    SshUnreachable,
    rbd_client_caps,
)
from tests.conftest import ROOT, lane_cluster

pytestmark = [pytest.mark.ceph, pytest.mark.real_ceph, pytest.mark.anyio]

DEVCLUSTER = ROOT / "scripts" / "devcluster.sh"
TIMEOUT = 5.0


def _read_env(name: str) -> dict[str, str]:
    """Run `devcluster.sh env NAME` and parse its `export K=V` lines (shell-quoted)."""
    if not DEVCLUSTER.exists():
        pytest.skip(f"{DEVCLUSTER} is not there")
    status = subprocess.run([str(DEVCLUSTER), "status", name], capture_output=True, timeout=60)
    if status.returncode != 0:
        pytest.skip(f"dev cluster {name} is not running (run: scripts/devcluster.sh start {name})")
    out = subprocess.run(
        [str(DEVCLUSTER), "env", name], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    env: dict[str, str] = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, _, value = words[1].partition("=")
            env[key] = value
    return env


@pytest.fixture(scope="module")
def c1() -> dict[str, str]:
    return _read_env(lane_cluster(0))


@pytest.fixture
def mon(c1: dict[str, str]) -> MonUrl:
    return MonUrl.parse(c1["MON_URL"])


def admin(c1: dict[str, str], *args: str) -> Any:
    """The admin CLI on the cluster's own ceph.conf, JSON decoded."""
    out = subprocess.run(
        ["ceph", "--connect-timeout", "10", *args, "-f", "json"],
        env={**os.environ, "CEPH_CONF": c1["CEPH_CONF"]},
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    return json.loads(out) if out.strip() else None


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def shell(mon: MonUrl) -> AsyncIterator[MonShell]:
    async with MonShell(mon, timeout=TIMEOUT) as sh:
        yield sh


@asynccontextmanager
async def made_pool(shell: MonShell) -> AsyncIterator[str]:
    name = unique("it-ceph")
    await shell.create_pool(name)
    try:
        yield name
    finally:
        await shell.delete_pool(name)


@pytest.fixture
async def pool(shell: MonShell) -> AsyncIterator[str]:
    async with made_pool(shell) as name:
        yield name


@pytest.fixture
async def other_pool(shell: MonShell) -> AsyncIterator[str]:
    """A second pool, not the one the key is made for."""
    async with made_pool(shell) as name:
        yield name


@pytest.fixture
async def client(shell: MonShell) -> AsyncIterator[str]:
    name = unique("it-imgstore")
    try:
        yield name
    finally:
        await shell.delete_key(name)


# ---------------------------------------------------------------- ssh onboarding


async def test_facts_give_the_cluster_fsid_and_this_mon(shell: MonShell, c1: dict[str, str]) -> None:
    started = time.monotonic()
    facts = await shell.facts()
    assert time.monotonic() - started < 3
    assert facts.fsid == c1["CEPH_FSID"]
    assert facts.hostname == "127.0.0.1"
    assert facts.mon_addr == "127.0.0.1"
    v1, v2 = c1["CEPH_MON_PORT"], c1["CEPH_MON_V2_PORT"]
    assert facts.mon_host == f"[v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]"


async def test_wrong_password_is_ssh_auth_failed_quickly(mon: MonUrl) -> None:
    wrong = MonUrl(mon.username, "not-" + mon.password, mon.hostname, mon.ssh_port, mon.mon_port)
    started = time.monotonic()
    with pytest.raises(SshAuthFailed) as info:
        async with MonShell(wrong, timeout=10) as sh:
            await sh.facts()
    # sshd/PAM delay a failed password by 2-4 s; well under the 10 s login timeout
    # means the refusal was seen, not waited out.
    assert time.monotonic() - started < 6
    assert info.value.host == mon.hostname
    assert mon.password not in str(info.value) and "not-" not in repr(info.value)


async def test_closed_ssh_port_is_ssh_unreachable_quickly(mon: MonUrl) -> None:
    closed = MonUrl(mon.username, mon.password, mon.hostname, closed_port(), mon.mon_port)
    started = time.monotonic()
    with pytest.raises(SshUnreachable):
        async with MonShell(closed, timeout=TIMEOUT) as sh:
            await sh.facts()
    assert time.monotonic() - started < 1


async def test_missing_tool_on_the_host_is_ceph_tools_missing(shell: MonShell) -> None:
    from imgstore.ceph.ssh import _check_tools  # the same check facts() runs first

    with pytest.raises(CephToolsMissing, match="imgstore-no-such-tool"):
        await shell._run(_check_tools("ceph", "imgstore-no-such-tool"), "check tools")


async def test_ceph_command_against_a_dead_mon_times_out(mon: MonUrl) -> None:
    async with MonShell(mon, timeout=3) as sh:
        started = time.monotonic()
        with pytest.raises(CephTimeout):
            await sh._run(sh._ceph("-m", f"127.0.0.1:{closed_port()}", "fsid"), "ceph fsid")
        assert time.monotonic() - started < 3 + 2


async def test_create_pool_exists_delete_pool(shell: MonShell, c1: dict[str, str]) -> None:
    name = unique("it-ceph")
    assert not await shell.pool_exists(name)
    await shell.create_pool(name)
    try:
        assert await shell.pool_exists(name)
        await shell.create_pool(name)  # idempotent
        detail = admin(c1, "osd", "pool", "ls", "detail")
        entry = next(p for p in detail if p["pool_name"] == name)
        assert "rbd" in entry["application_metadata"]
        # no pg_num given: the mon's default applies (8 on the dev cluster, not ZStack's 128)
        default_pg = admin(c1, "config", "show", "mon.a", "osd_pool_default_pg_num")
        assert entry["pg_num"] == int(default_pg)
    finally:
        await shell.delete_pool(name)
    assert not await shell.pool_exists(name)
    await shell.delete_pool(name)  # a missing pool is fine


async def test_names_that_could_escape_are_refused_before_any_call(shell: MonShell) -> None:
    for bad in ["", "-x", "a b", 'a"b', "a,allow *", "a;b", "a/b", "a@b", "a\nb"]:
        with pytest.raises(InvalidName):
            await shell.create_pool(bad)
    with pytest.raises(InvalidName):
        await shell.get_or_create_key("x y", "pool")


# ---------------------------------------------------------------- least-privilege key


async def test_key_has_exactly_the_rbd_caps_of_its_pool(
    shell: MonShell, pool: str, client: str, c1: dict[str, str]
) -> None:
    key = await shell.get_or_create_key(client, pool)
    entry = admin(c1, "auth", "get", f"client.{client}")[0]
    assert entry["key"] == key
    caps = rbd_client_caps(pool)
    assert entry["caps"] == dict(zip(caps[::2], caps[1::2], strict=True))
    assert entry["caps"]["osd"] == f'profile rbd pool="{pool}"'
    assert await shell.get_or_create_key(client, pool) == key  # idempotent


async def test_key_made_for_another_pool_is_recapped_and_keeps_its_secret(
    shell: MonShell, pool: str, client: str, other_pool: str, c1: dict[str, str]
) -> None:
    key = await shell.get_or_create_key(client, other_pool)
    assert await shell.get_or_create_key(client, pool) == key
    caps = admin(c1, "auth", "get", f"client.{client}")[0]["caps"]
    assert caps["osd"] == f'profile rbd pool="{pool}"'


async def test_key_measures_and_probes_its_pool_but_cannot_write_another(
    shell: MonShell, pool: str, client: str, other_pool: str, c1: dict[str, str]
) -> None:
    facts = await shell.facts()
    key = await shell.get_or_create_key(client, pool)
    cluster = Cluster(facts.mon_host, client, key, timeout=TIMEOUT)
    await cluster.connect()
    try:
        assert await cluster.fsid() == facts.fsid
        assert await cluster.pool_exists(pool)
        assert (await cluster.capacity(pool)).total > 0
        health = await cluster.health(pool, f"zshb.bs.{client}")
        assert health.pool_error is None and health.capacity is not None and health.capacity.total > 0
        assert f"127.0.0.1:{c1['CEPH_MON_PORT']}" in health.quorum
        assert f"127.0.0.1:{c1['CEPH_MON_V2_PORT']}" in health.quorum
        elsewhere = await cluster.health(other_pool, f"zshb.bs.{client}")
        assert isinstance(elsewhere.pool_error, CephPermissionDenied) and elsewhere.capacity is None
        assert elsewhere.quorum == health.quorum
    finally:
        await cluster.close()


async def test_key_is_enough_for_rbd_images_in_its_pool(
    shell: MonShell, pool: str, client: str
) -> None:
    facts = await shell.facts()
    key = await shell.get_or_create_key(client, pool)
    with tempfile.TemporaryDirectory() as tmp:
        keyring = Path(tmp) / "keyring"
        keyring.write_text(f"[client.{client}]\n\tkey = {key}\n")
        keyring.chmod(0o600)
        base = ["rbd", "-c", "/dev/null", "-m", facts.mon_host, "--id", client,
                "--keyring", str(keyring), "--client-mount-timeout", "10"]

        def rbd(*args: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run([*base, *args], capture_output=True, timeout=60)

        name = uuid.uuid4().hex
        image = f"{pool}/{name}"
        assert rbd("create", "--size", "16M", image).returncode == 0
        assert rbd("bench", "--io-type", "write", "--io-size", "1M", "--io-total", "4M",
                   image).returncode == 0
        exported = rbd("export", image, "-")
        assert exported.returncode == 0 and len(exported.stdout) == 16 * 1024 * 1024
        assert name.encode() in rbd("ls", pool).stdout
        assert rbd("rm", "--no-progress", image).returncode == 0
        assert name.encode() not in rbd("ls", pool).stdout


async def test_capacity_equals_what_the_admin_cli_says(
    shell: MonShell, pool: str, client: str, c1: dict[str, str]
) -> None:
    facts = await shell.facts()
    cluster = Cluster(facts.mon_host, client, await shell.get_or_create_key(client, pool), TIMEOUT)
    await cluster.connect()
    try:
        for _ in range(10):  # the numbers move while the mgr catches up: want a still moment
            before = admin(c1, "osd", "df")
            cap = await cluster.capacity(pool)
            if admin(c1, "osd", "df") == before:
                break
            await anyio.sleep(0.5)
        size = admin(c1, "osd", "pool", "get", pool, "size")["size"]
        osds = before["nodes"]
        assert cap.total == int(sum(o["kb"] * 1024 for o in osds) / size)
        assert cap.available == int(sum(o["kb_avail"] * 1024 for o in osds) / size)
        assert cap.pool_used == int(sum(o["kb_used"] * 1024 for o in osds) / size)
        assert (cap.pool_total, cap.pool_available) == (cap.total, cap.available)
        assert cap.total == admin(c1, "df")["stats"]["total_bytes"] // size  # one OSD
        assert cap.pool_replicated_size == size
        assert cap.pool_security_policy == "Copy"
        assert cap.pool_disk_utilization == round(1 / size, 3)
        with pytest.raises(PoolNotFound):
            await cluster.capacity(unique("it-missing"))
        assert isinstance((await cluster.health(unique("it-missing"), "x")).pool_error, PoolNotFound)
    finally:
        await cluster.close()


async def test_deleted_key_is_refused(shell: MonShell, pool: str, client: str) -> None:
    facts = await shell.facts()
    key = await shell.get_or_create_key(client, pool)
    await shell.delete_key(client)
    await shell.delete_key(client)  # idempotent
    cluster = Cluster(facts.mon_host, client, key, timeout=TIMEOUT)
    started = time.monotonic()
    with pytest.raises(CephPermissionDenied):
        await cluster.connect()
    assert time.monotonic() - started < 2
    await cluster.close()


# ---------------------------------------------------------------- bounded librados


async def test_connect_to_a_closed_mon_port_fails_within_the_timeout(c1: dict[str, str]) -> None:
    cluster = Cluster(f"127.0.0.1:{closed_port()}", "admin", c1["CEPH_ADMIN_KEY"], timeout=3)
    started = time.monotonic()
    with pytest.raises((ClusterUnreachable, CephTimeout)):
        await cluster.connect()
    assert time.monotonic() - started < 3 + 2
    await cluster.close()


async def test_malformed_key_is_refused_without_reaching_librados(c1: dict[str, str]) -> None:
    cluster = Cluster(c1["CEPH_MON_HOST"], "admin", "not-a-key", timeout=3)
    with pytest.raises(CephPermissionDenied) as info:
        await cluster.connect()
    assert "not-a-key" not in str(info.value)
    await cluster.close()


async def test_executor_is_small_and_bounded(c1: dict[str, str]) -> None:
    cluster = Cluster(c1["CEPH_MON_HOST"], "admin", c1["CEPH_ADMIN_KEY"], timeout=3)
    assert 1 <= cluster.executor._max_workers <= 8
    assert c1["CEPH_ADMIN_KEY"] not in repr(cluster)
    await cluster.close()
