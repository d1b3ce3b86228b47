"""The mons of a Ceph backup storage: AddMon, RemoveMon, UpdateMon, and accepting a
mon's new ssh host key (issue Trust, points 1 and 2).

A mon's ssh host key is pinned on its row (``ssh_host_key_fingerprint``). Moving a mon
(a new hostname, sshPort or sshUsername) needs its credentials again: the stored password
is never sent to an address it was not given for. A new hostname is a new host, so its
pin is cleared and its next contact learns the new key (as an add does); a new sshPort
or sshUsername is the same host, so the pin stays, and a different key there is refused
until an operator accepts it.
"""
from __future__ import annotations

import logging
import re
from contextlib import AsyncExitStack

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from imgstore import ceph
from imgstore.ceph import check_fingerprint
from imgstore.db.models import CephBackupStorage, CephMon
from imgstore.errors import OPERATION_ERROR, ApiError, invalid_argument, not_found
from imgstore.services.node.ceph_errors import ceph_error
from imgstore.services.node.locking import local_lock
from imgstore.services.node.runtime import Runtime
from imgstore.services.storage import mon_hosts
from imgstore.services.storage.rows import load
from imgstore.wire.enums import StorageStatus

log = logging.getLogger(__name__)

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$)({_LABEL})(\.{_LABEL})*$")


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
    urls = mon_hosts.parse_mon_urls(mon_urls, rt.settings.ssh_private_key is not None)
    if used := await mon_hosts.used_hostnames(rt, urls):
        raise invalid_argument(f"Adding the same Mon node is not allowed: mon[hostnames:{used}] already in use")
    async with local_lock(rt, "backup_storage", uuid):
        rows = mon_hosts.new_mon_rows(rt, urls)
        async with rt.db() as db:
            for r in rows:
                r.backup_storage_uuid = uuid
            db.add_all(rows)
            try:
                await db.commit()
            except IntegrityError:
                raise invalid_argument(
                    "Adding the same Mon node is not allowed: a hostname is already in use") from None
        probes = [mon_hosts.MonProbe(url=u, row=r) for u, r in zip(urls, rows, strict=True)]
        try:
            async with AsyncExitStack() as stack:
                await mon_hosts.probe_mons(rt, stack, probes)
            _check_probes(storage, probes)
        except ApiError:
            await _delete_mons(rt, [r.uuid for r in rows])
            raise
        async with rt.db() as db:
            for probe in probes:
                mon = await db.get(CephMon, probe.row.uuid)
                assert mon is not None and probe.facts is not None
                mon.status = StorageStatus.CONNECTED
                mon.mon_addr, mon.mon_host = probe.facts.mon_addr, probe.facts.mon_host
                mon.ssh_host_key_fingerprint = probe.host_key
            await db.commit()
    return await load(rt, uuid)


def _check_probes(storage: CephBackupStorage, probes: list[mon_hosts.MonProbe]) -> None:
    if any(p.error for p in probes):
        raise mon_hosts.mons_failed(probes, "unable to connect mons")
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
    async with local_lock(rt, "backup_storage", uuid):
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
    uses the new values. A move (see the module docstring) without sshPassword is
    refused, unless a login key is configured: then the stored password is dropped."""
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
    async with local_lock(rt, "backup_storage", storage_uuid):
        async with rt.db() as db:
            mon = await db.get(CephMon, mon_uuid)
            if mon is None:
                raise not_found("CephBackupStorageMonVO", mon_uuid, field="monUuid")
            moved = _moved(mon, hostname, ssh_port, ssh_username)
            if moved and not ssh_password:
                if rt.settings.ssh_private_key is None:
                    raise invalid_argument(
                        f"changing the {', '.join(moved)} of mon[uuid:{mon_uuid}] needs its sshPassword "
                        "again: the stored password is not sent to a new address"
                    )
                mon.ssh_password = rt.secrets.seal("")  # the configured key logs in
            if hostname is not None and hostname != mon.hostname:
                mon.ssh_host_key_fingerprint = None  # a new host: its key is learnt anew
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



def _moved(mon: CephMon, hostname: str | None, ssh_port: int | None, ssh_username: str | None) -> list[str]:
    """The fields of an update that point the mon's ssh login somewhere new."""
    changes = (("hostname", hostname, mon.hostname), ("sshPort", ssh_port, mon.ssh_port),
               ("sshUsername", ssh_username, mon.ssh_username))
    return [name for name, new, old in changes if new is not None and new != old]


async def accept_host_key(rt: Runtime, mon_uuid: str, fingerprint: str | None = None) -> CephBackupStorage:
    """AcceptCephBackupStorageMonHostKey: pin a new ssh host key for a mon.

    With ``fingerprint`` (checked by the operator on the host, ``ssh-keygen -lf``) that
    key is pinned, and a host offering another is still refused. Without, the key the
    host offers now is read (a key exchange, no login) and pinned."""
    if fingerprint is not None and check_fingerprint(fingerprint) is None:
        raise invalid_argument(
            f"field[sshHostKeyFingerprint] value[{fingerprint}] is not an SSH host key fingerprint "
            "as OpenSSH prints it (SHA256:<43 base64 characters>)"
        )
    async with rt.db() as db:
        mon = await db.get(CephMon, mon_uuid)
        if mon is None:
            raise not_found("CephBackupStorageMonVO", mon_uuid, field="monUuid")
        storage_uuid, host, port = mon.backup_storage_uuid, mon.hostname, mon.ssh_port
    if fingerprint is None:
        try:
            fingerprint = await ceph.offered_host_key(host, port, rt.settings.ssh_timeout)
        except ceph.CephError as e:
            raise ceph_error(e, f"{host}:{port}") from None
    async with local_lock(rt, "backup_storage", storage_uuid):
        async with rt.db() as db:
            mon = await db.get(CephMon, mon_uuid)
            if mon is None:
                raise not_found("CephBackupStorageMonVO", mon_uuid, field="monUuid")
            old, mon.ssh_host_key_fingerprint = mon.ssh_host_key_fingerprint, check_fingerprint(fingerprint)
            await db.commit()
    log.warning("mon %s: ssh host key %s accepted by an operator (was %s)", host, fingerprint, old)
    return await load(rt, storage_uuid)
