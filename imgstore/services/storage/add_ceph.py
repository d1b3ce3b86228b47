"""Adding a Ceph backup storage (AddCephBackupStorage).

Onboarding is agentless (README, Design notes): SSH to every mon once to read the
cluster's fsid and mon map, make the pool if imgstore owns it, and get a cephx key
limited to that pool; from then on imgstore talks to the cluster with librados only.
Every step that leaves something in the cluster is recorded on the row first, so a
failed add, or a node that dies halfway, can take it all back (``undo.py``).

The request is checked once, here (:func:`validate`); from then on its values travel as
parameters: the pool name reaches librados without a trip through the database.
"""
from __future__ import annotations

import asyncio
import logging
import re
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from imgstore import ceph
from imgstore.ceph import check_pool_name
from imgstore.crypto import new_uuid
from imgstore.db.models import BackupStorage, CephBackupStorage, CephMon
from imgstore.errors import CREATE_RESOURCE_ERROR, OPERATION_ERROR, ApiError, invalid_argument
from imgstore.services.catalog import tags
from imgstore.services.node.ceph_errors import ceph_error
from imgstore.services.node.runtime import Runtime
from imgstore.services.storage import mon_hosts
from imgstore.services.storage.rows import apply_capacity, load, save
from imgstore.services.storage.undo import undo_add
from imgstore.wire.enums import State, StorageStatus

log = logging.getLogger(__name__)

CEPH = "Ceph"
NOT_USED_URL = "not used"
_UUID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class NewCephStorage:
    """What AddCephBackupStorage asks for, already typed by the API layer."""

    name: str
    mon_urls: list[str]
    pool_name: str | None = None
    description: str | None = None
    type: str | None = None
    url: str | None = None
    import_images: bool = False
    resource_uuid: str | None = None
    system_tags: list[str] = field(default_factory=list)
    user_tags: list[str] = field(default_factory=list)


def validate(req: NewCephStorage, password_optional: bool = False) -> list[ceph.MonUrl]:
    if req.pool_name is not None and not req.pool_name.strip():
        raise invalid_argument("poolName can be null but cannot be an empty string")
    if req.pool_name is not None:
        try:
            check_pool_name(req.pool_name)
        except ceph.InvalidName as e:
            raise invalid_argument(f"field[poolName]: {e}") from None
    if req.import_images and req.pool_name is None:
        raise invalid_argument("poolName is required when importImages is true")
    if req.type is not None and req.type != CEPH:
        raise invalid_argument(f"field[type] must be {CEPH} for a ceph backup storage, but {req.type} found")
    if req.resource_uuid is not None and not _UUID.fullmatch(req.resource_uuid):
        raise invalid_argument(
            f"field[resourceUuid] value[{req.resource_uuid}] is not a valid uuid: "
            "32 lowercase hex characters without dashes"
        )
    if not req.name.strip():
        raise invalid_argument("field[name] cannot be an empty string")
    tags.check_tags(req.system_tags, req.user_tags)
    return mon_hosts.parse_mon_urls(req.mon_urls, password_optional)


async def _check_free(rt: Runtime, uuid: str, mons: list[ceph.MonUrl]) -> None:
    async with rt.db() as db:
        if await db.get(BackupStorage, uuid):
            raise invalid_argument(f"field[resourceUuid]: a resource with uuid[{uuid}] already exists")
    hosts = await mon_hosts.used_hostnames(rt, mons)
    if hosts:
        raise invalid_argument(
            "cannot add ceph backup storage, there has been some ceph backup storage "
            f"using mon[hostnames:{hosts}]"
        )


async def add(rt: Runtime, req: NewCephStorage) -> CephBackupStorage:
    """AddCephBackupStorage: validate, record as Connecting, onboard, answer Connected.

    A failure at any step removes the row and whatever the add made in the cluster,
    and answers SYS.1002 with the reason as its cause.
    """
    mons = validate(req, rt.settings.ssh_private_key is not None)
    uuid = req.resource_uuid or new_uuid()
    pool = req.pool_name or f"bak-t-{uuid}"  # ZStack's name for a pool it makes
    await _check_free(rt, uuid, mons)
    mon_rows = await _record(rt, uuid, req, pool, mons)
    try:
        probes = [mon_hosts.MonProbe(url=m, row=r) for m, r in zip(mons, mon_rows, strict=True)]
        await _onboard(rt, uuid, probes, pool, predefined=req.pool_name is not None)
    except ApiError as e:
        await undo_add(rt, uuid)
        raise ApiError(
            CREATE_RESOURCE_ERROR, f"failed to add ceph backup storage[name:{req.name}]: {e.details}", cause=e
        ) from None
    except BaseException:
        await asyncio.shield(undo_add(rt, uuid))
        raise
    # importImages runs in the background once the add answered, as in ZStack: its
    # failure is not the add's (the images package listens: services/node/events.py)
    await rt.events.tell_added(uuid, req.import_images)
    return await load(rt, uuid)


async def _record(
    rt: Runtime, uuid: str, req: NewCephStorage, pool: str, mons: list[ceph.MonUrl]
) -> list[CephMon]:
    """The Connecting row; the unique mon hostnames make a concurrent add of the same
    mons fail here rather than in the cluster."""
    mon_rows = mon_hosts.new_mon_rows(rt, mons)
    row = CephBackupStorage(
        uuid=uuid,
        name=req.name,
        description=req.description,
        url=NOT_USED_URL,
        state=State.ENABLED,
        status=StorageStatus.CONNECTING,
        pool_name=pool,
        pool_created=False,
        adding_node=rt.node_id,
        mons=mon_rows,
    )
    system_tags = list(req.system_tags)
    if req.pool_name is not None:
        system_tags.append(tags.PREDEFINED_POOL)
    async with rt.db() as db:
        db.add(row)
        db.add_all(tags.new_tags(uuid, "BackupStorageVO", system_tags, req.user_tags))
        try:
            await db.commit()
        except IntegrityError:
            raise invalid_argument(
                "cannot add ceph backup storage: its uuid or one of its mon hostnames "
                f"[{', '.join(m.hostname for m in mons)}] is already in use"
            ) from None
    return mon_rows


async def _onboard(rt: Runtime, uuid: str, mons: list[mon_hosts.MonProbe], pool: str, predefined: bool) -> None:
    """SSH to the mons (the first also makes the key meanwhile: two ceph CLI calls in
    parallel cost little more than one), then librados for everything else."""
    client = f"imgstore.{uuid}"

    async def key_requested() -> None:  # recorded before the key exists: undo needs it
        await save(rt, uuid, ceph_client=client)

    async with AsyncExitStack() as stack:
        await mon_hosts.probe_mons(rt, stack, mons, key_for=(client, pool, key_requested))
        good = [m for m in mons if m.facts]
        if not good:
            raise _all_mons_failed(uuid, mons)
        fsid = await _claim_fsid(rt, uuid, good)
        key = next((m.key for m in good if m.key), None)
        if key is None:
            await key_requested()
            key = await _make_key(good[0], client, pool)
        sealed = rt.secrets.seal(key)
        await save(rt, uuid, ceph_key=sealed)
        mon_host = ",".join(m.facts.mon_host for m in good if m.facts)
        cluster = ceph.Cluster(mon_host, client, key, rt.settings.ceph_timeout)
        try:
            await cluster.connect()
            await _ensure_pool(rt, uuid, pool, cluster, good[0], fsid, predefined)
            capacity = await cluster.capacity(pool)
        except BaseException as e:
            await cluster.close()
            if isinstance(e, ceph.CephError):
                raise ceph_error(e) from None
            raise
        await _connected(rt, uuid, good, [m for m in mons if not m.facts], capacity)
        await rt.clusters.adopt(uuid, (mon_host, sealed), cluster)


async def _make_key(mon: mon_hosts.MonProbe, client: str, pool: str) -> str:
    assert mon.shell is not None
    try:
        return await mon.shell.get_or_create_key(client, pool)
    except ceph.CephError as e:
        raise ceph_error(e, mon.url.hostname) from None


def _all_mons_failed(uuid: str, mons: list[mon_hosts.MonProbe]) -> ApiError:
    return mon_hosts.mons_failed(
        mons,
        f"unable to connect to the ceph backup storage[uuid:{uuid}], failed to connect all ceph monitors",
    )


async def _claim_fsid(rt: Runtime, uuid: str, good: list[mon_hosts.MonProbe]) -> str:
    """All mons must agree, and no other storage may have this cluster: the unique
    fsid column makes the second of two concurrent adds lose here."""
    fsids = {m.facts.fsid for m in good if m.facts}
    if len(fsids) > 1:
        lines = ", ".join(f"{m.facts.mon_addr} --> {m.facts.fsid}" for m in good if m.facts)
        raise ApiError(
            OPERATION_ERROR,
            "the fsid returned by mons are mismatching, it seems the mons belong to different "
            f"ceph clusters: {lines}",
        )
    fsid = fsids.pop()
    async with rt.db() as db:
        other = await db.scalar(
            select(CephBackupStorage).where(CephBackupStorage.fsid == fsid, CephBackupStorage.uuid != uuid)
        )
        if other is None:
            row = await db.get(CephBackupStorage, uuid)
            assert row is not None
            row.fsid = fsid
            try:
                await db.commit()
                return fsid
            except IntegrityError:
                await db.rollback()
                other = await db.scalar(select(CephBackupStorage).where(CephBackupStorage.fsid == fsid))
    name, other_uuid = (other.name, other.uuid) if other else ("?", "?")
    raise ApiError(
        OPERATION_ERROR,
        f"there is another CEPH backup storage[name:{name}, uuid:{other_uuid}] with the same "
        f"FSID[{fsid}], you cannot add the same CEPH setup as two different backup storage",
    )


async def _ensure_pool(
    rt: Runtime, uuid: str, pool: str, cluster: ceph.Cluster, mon: mon_hosts.MonProbe, fsid: str, predefined: bool
) -> None:
    """A pool the user named must exist (``ceph::predefinedPool``); otherwise imgstore
    makes ``bak-t-<uuid>`` over SSH and remembers that it did, so a failed add removes it."""
    if await cluster.pool_exists(pool):
        return
    if predefined:
        raise ApiError(
            OPERATION_ERROR,
            f"cannot find pool[{pool}] in the ceph cluster[fsid:{fsid}]; a pool given as "
            "poolName must exist: create it, or leave poolName out to let imgstore create one",
            status=400,
        )
    await save(rt, uuid, pool_created=True)
    assert mon.shell is not None
    await mon.shell.create_pool(pool)


async def _connected(
    rt: Runtime, uuid: str, good: list[mon_hosts.MonProbe], failed: list[mon_hosts.MonProbe], capacity: ceph.Capacity
) -> None:
    async with rt.db() as db:
        row = await db.get(CephBackupStorage, uuid)
        assert row is not None
        by_uuid = {m.row.uuid: m for m in good}
        for mon in list(row.mons):
            probe = by_uuid.get(mon.uuid)
            if probe is None or probe.facts is None:
                row.mons.remove(mon)  # ZStack drops the mons that failed on a new add
                continue
            mon.status = StorageStatus.CONNECTED
            mon.mon_addr = probe.facts.mon_addr
            mon.mon_host = probe.facts.mon_host
            mon.ssh_host_key_fingerprint = probe.host_key
        apply_capacity(row, capacity)
        row.status = StorageStatus.CONNECTED
        row.adding_node = None
        await db.commit()
    for m in failed:
        log.warning("backup storage %s added without mon %s: %s", uuid, m.url.hostname, m.error)
