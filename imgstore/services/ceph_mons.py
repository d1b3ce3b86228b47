"""The mons of a Ceph backup storage: AddMon, RemoveMon, UpdateMon."""
from __future__ import annotations

import re
from contextlib import AsyncExitStack

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from imgstore.db.models import CephBackupStorage, CephMon
from imgstore.errors import OPERATION_ERROR, ApiError, invalid_argument, not_found
from imgstore.services.ceph_backup_storage import (
    MonProbe,
    load,
    mons_failed,
    new_mon_rows,
    parse_mon_urls,
    probe_mons,
    used_hostnames,
)
from imgstore.services.locking import local_lock
from imgstore.services.runtime import Runtime

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


async def _ceph_storage(rt: Runtime, uuid: str) -> CephBackupStorage:
    async with rt.db() as db:
        row = await db.get(CephBackupStorage, uuid)
    if row is None or row.type != "Ceph":
        raise not_found("CephBackupStorageVO", uuid)
    return row


async def add_mons(rt: Runtime, uuid: str, mon_urls: list[str]) -> CephBackupStorage:
    """AddMonToCephBackupStorage: every new mon must answer over SSH and report the
    storage's own fsid, or none is added."""
    storage = await _ceph_storage(rt, uuid)
    urls = parse_mon_urls(mon_urls)
    if used := await used_hostnames(rt, urls):
        raise invalid_argument(f"Adding the same Mon node is not allowed: mon[hostnames:{used}] already in use")
    async with local_lock("backup_storage", uuid):
        rows = new_mon_rows(rt, urls)
        async with rt.db() as db:
            for r in rows:
                r.backup_storage_uuid = uuid
            db.add_all(rows)
            try:
                await db.commit()
            except IntegrityError:
                raise invalid_argument("Adding the same Mon node is not allowed: a hostname is already in use") from None
        probes = [MonProbe(url=u, row=r) for u, r in zip(urls, rows)]
        try:
            async with AsyncExitStack() as stack:
                await probe_mons(rt, stack, probes)
            _check_probes(storage, probes)
        except ApiError:
            await _delete_mons(rt, [r.uuid for r in rows])
            raise
        async with rt.db() as db:
            for probe in probes:
                mon = await db.get(CephMon, probe.row.uuid)
                assert mon is not None and probe.facts is not None
                mon.status, mon.mon_addr, mon.mon_host = "Connected", probe.facts.mon_addr, probe.facts.mon_host
            await db.commit()
    return await load(rt, uuid)


def _check_probes(storage: CephBackupStorage, probes: list[MonProbe]) -> None:
    if any(p.error for p in probes):
        raise mons_failed(probes, "unable to connect mons")
    for p in probes:
        assert p.facts is not None
        if storage.fsid and p.facts.fsid != storage.fsid:
            raise ApiError(
                OPERATION_ERROR,
                f"the mon[ip:{p.facts.mon_addr}] returns a fsid[{p.facts.fsid}] different from the current "
                f"fsid[{storage.fsid}] of the ceph cluster, are you adding a mon not belonging to current cluster?",
            )


async def _delete_mons(rt: Runtime, mon_uuids: list[str]) -> None:
    async with rt.db() as db:
        for mon_uuid in mon_uuids:
            if mon := await db.get(CephMon, mon_uuid):
                await db.delete(mon)
        await db.commit()


async def remove_mons(rt: Runtime, uuid: str, hostnames: list[str]) -> CephBackupStorage:
    """RemoveMonFromCephBackupStorage. Unlike ZStack, the last mon stays: a storage with
    no mon could never be reached again."""
    if not hostnames:
        raise invalid_argument("field[monHostnames] must be a non-empty list")
    storage = await _ceph_storage(rt, uuid)
    async with local_lock("backup_storage", uuid):
        remaining = [m for m in storage.mons if m.hostname not in hostnames]
        if not remaining:
            raise invalid_argument(
                f"cannot remove mon[hostnames:{sorted(hostnames)}]: backup storage[uuid:{uuid}] "
                "would be left with no mon"
            )
        await _delete_mons(rt, [m.uuid for m in storage.mons if m.hostname in hostnames])
    return await load(rt, uuid)


async def update_mon(
    rt: Runtime,
    mon_uuid: str,
    hostname: str | None = None,
    ssh_username: str | None = None,
    ssh_password: str | None = None,
    ssh_port: int | None = None,
    mon_port: int | None = None,
) -> CephBackupStorage:
    """UpdateCephBackupStorageMon: a database update, as in ZStack; the next reconnect
    uses the new values."""
    if hostname is not None and not _HOSTNAME.match(hostname):
        raise invalid_argument(f"field[hostname] value[{hostname}] is not an IPv4 address or a valid hostname")
    for name, port in (("sshPort", ssh_port), ("monPort", mon_port)):
        if port is not None and not 1 <= port <= 65535:
            raise invalid_argument(f"field[{name}] value[{port}] must be in range of [1, 65535]")
    async with rt.db() as db:
        mon = await db.get(CephMon, mon_uuid)
        if mon is None:
            raise not_found("CephBackupStorageMonVO", mon_uuid, field="monUuid")
        storage_uuid = mon.backup_storage_uuid
    async with local_lock("backup_storage", storage_uuid):
        async with rt.db() as db:
            mon = await db.get(CephMon, mon_uuid)
            if mon is None:
                raise not_found("CephBackupStorageMonVO", mon_uuid, field="monUuid")
            if hostname is not None and hostname != mon.hostname:
                taken = await db.scalar(select(CephMon.uuid).where(CephMon.hostname == hostname))
                if taken:
                    raise invalid_argument(f"Adding the same Mon node is not allowed: mon[hostname:{hostname}] exists")
                mon.hostname, mon.mon_addr, mon.mon_host = hostname, hostname, None
            if mon_port is not None and mon_port != mon.mon_port:
                mon.mon_port, mon.mon_host = mon_port, None
            if ssh_username is not None:
                mon.ssh_username = ssh_username
            if ssh_password is not None:
                mon.ssh_password = rt.secrets.seal(ssh_password)
            if ssh_port is not None:
                mon.ssh_port = ssh_port
            await db.commit()
    return await load(rt, storage_uuid)

