"""A Reconnect's result is not overwritten by what a ping found while it ran.

A ping that starts while a Reconnect renews a revoked key still holds the old key: its
"permission denied" is news from before the Reconnect's result, and must be dropped
(CI saw a Reconnect answer Disconnected because such a ping was written after it).
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from imgstore import ceph
from imgstore.config import Settings
from imgstore.db.models import CephBackupStorage, CephMon
from imgstore.services.health import connection
from imgstore.services.node.runtime import Runtime
from imgstore.services.storage.rows import load

UUID = "b" * 32


class _Cluster:
    async def fsid(self) -> str:
        return "f" * 32


async def _runtime(tmp_path: Path) -> Runtime:
    rt = await Runtime.open(Settings(data_dir=tmp_path, secret_key=None))
    async with rt.db() as db:
        db.add(CephBackupStorage(uuid=UUID, name="s", url="u", state="Enabled", status="Disconnected",
                                 type="Ceph", fsid="f" * 32, pool_name="p"))
        db.add(CephMon(uuid="m" * 32, backup_storage_uuid=UUID, hostname="10.0.0.1", mon_addr="10.0.0.1",
                       mon_port=6789, ssh_port=22, ssh_username="root", ssh_password="x"))
        await db.commit()
    return rt


def test_a_ping_begun_during_a_reconnect_is_not_written_over_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> str:
        rt = await _runtime(tmp_path)
        renewing, renewed = asyncio.Event(), asyncio.Event()

        async def rekey(rt: Runtime, row: CephBackupStorage) -> _Cluster:
            renewing.set()
            await renewed.wait()
            return _Cluster()

        async def healthy(rt: Runtime, row: CephBackupStorage) -> ceph.Health:
            return ceph.Health(frozenset({"10.0.0.1:6789"}), None, None)

        monkeypatch.setattr(connection, "_cluster_or_rekey", rekey)
        monkeypatch.setattr(connection, "_health", healthy)
        try:
            reconnect = asyncio.create_task(connection.reconnect(rt, UUID))
            await renewing.wait()
            ping_generation = connection.generation(rt, UUID)  # a ping starts, with the old key
            renewed.set()
            assert (await reconnect).status == "Connected"
            denied = connection.Outcome(UUID, connection.DISCONNECTED, "permission denied",
                                        generation=ping_generation)
            await connection.record(rt, [denied])  # ...and is written after the Reconnect
            return (await load(rt, UUID)).status
        finally:
            await rt.close()

    assert asyncio.run(run()) == "Connected"
